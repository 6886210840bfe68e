"""A small asyncio VICI client on top of the wire codec of PyPI ``vici`` (``vici.protocol``).

VICI frames every packet with a 4-byte big-endian length; inside is a packet type byte, for named packets
a name, and a message (``vici.protocol.Message``). Commands are answered in order on one connection;
events arrive on any connection that registered for them. We keep commands and events on separate
connections (:class:`ViciConnection` for each), as strongSwan recommends.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from vici.protocol import Message, Packet

from dmvpn.ipsec.types import CharonUnavailable, IpsecError

#: A VICI message as the codec returns it: nested sections (dict), lists of bytes, values as bytes.
ViciMessage = dict[str, Any]

_HEADER = struct.Struct("!I")
_MAX_PACKET = 512 * 1024  # charon's own segment limit
_COMMAND_TIMEOUT_S = 30.0


def encode_frame(payload: bytes) -> bytes:
    """Length-prefix one packet for the stream."""
    return _HEADER.pack(len(payload)) + payload


def serialize(message: Mapping[str, Any] | None) -> bytes | None:
    """Our dicts -> VICI message bytes (values must already be str/bytes/int, lists, or dicts)."""
    return None if message is None else bytes(Message.serialize(message))


def deserialize(payload: Any) -> ViciMessage:
    """VICI message bytes (a codec stream) -> nested dicts with bytes values."""
    return dict(Message.deserialize(payload))


def check_response(command: str, response: ViciMessage) -> None:
    """Raise IpsecError if charon answered ``command`` with ``success = no``."""
    if response.get("success", b"yes") != b"yes":
        errmsg = response.get("errmsg", b"no reason given").decode(errors="replace")
        raise IpsecError(f"{command} failed: {errmsg}")


class ViciConnection:
    """One stream connection to charon's VICI socket.

    :meth:`request` sends a command and returns its response (one at a time: a lock orders them);
    :meth:`listen` registers events and yields ``(name, message)`` pairs until the connection closes.
    Use a connection for one of the two only.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()
        self._streaming: set[str] = set()  # stream events registered for (see streamed)

    @classmethod
    async def open(cls, path: Path, timeout_s: float = 5.0) -> ViciConnection:
        """Connect to ``path``; raises CharonUnavailable if nothing listens there."""
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), timeout_s)
        except (OSError, TimeoutError) as error:
            raise CharonUnavailable(f"cannot connect to charon at {path}: {error}") from error
        return cls(reader, writer)

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ConnectionError):
            await self._writer.wait_closed()

    @property
    def closed(self) -> bool:
        return self._writer.is_closing() or self._reader.at_eof()

    async def _send(self, packet: bytes) -> None:
        try:
            self._writer.write(encode_frame(packet))
            await self._writer.drain()
        except (OSError, ConnectionError) as error:
            raise CharonUnavailable(f"charon closed the VICI connection: {error}") from error

    async def _receive(self) -> Any:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (length,) = _HEADER.unpack(header)
            if length > _MAX_PACKET:
                raise IpsecError(f"VICI packet of {length} bytes exceeds {_MAX_PACKET}")
            body = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, OSError, ConnectionError) as error:
            raise CharonUnavailable(f"charon closed the VICI connection: {error}") from error
        return Packet.parse(body)

    async def request(
        self,
        command: str,
        message: Mapping[str, Any] | None = None,
        *,
        timeout_s: float = _COMMAND_TIMEOUT_S,
        check: bool = True,
    ) -> ViciMessage:
        """Send ``command`` and return its response; raises IpsecError if charon reports ``success = no``
        (when ``check``), or does not know the command."""
        (response,) = await self.pipeline([(command, message)], timeout_s=timeout_s)
        if check:
            check_response(command, response)
        return response

    async def pipeline(
        self, commands: Sequence[tuple[str, Mapping[str, Any] | None]], *, timeout_s: float = _COMMAND_TIMEOUT_S
    ) -> list[ViciMessage]:
        """Send every command at once, then read their responses, in order, unchecked (see
        :func:`check_response`). charon handles one connection's commands strictly in order (vici_socket.c,
        ``process_queue``), so a command may depend on the one before it: an ``initiate`` right behind the
        ``load-conn`` of its connection waits one round trip to charon, not two. Raises IpsecError if charon
        does not know a command (after reading every answer, so the stream stays in step)."""
        async with self._lock:
            for command, message in commands:
                await self._send(Packet.request(command, serialize(message)))
            try:
                answers = [await asyncio.wait_for(self._receive(), timeout_s) for _ in commands]
            except TimeoutError as error:
                self._writer.close()
                names = ", ".join(command for command, _ in commands)
                raise CharonUnavailable(f"charon did not answer {names} within {timeout_s} s") from error
            except BaseException:
                # Cancelled or failed mid-answer: the stream is out of step, so it must not be reused.
                self._writer.close()
                raise
        responses = []
        for (command, _), parsed in zip(commands, answers, strict=True):
            if parsed.response_type == Packet.CMD_UNKNOWN:
                raise IpsecError(f"charon does not know the VICI command {command}")
            if parsed.response_type != Packet.CMD_RESPONSE:
                raise IpsecError(f"unexpected VICI packet type {parsed.response_type} in answer to {command}")
            responses.append(deserialize(parsed.payload))
        return responses

    async def streamed(
        self, command: str, event: str, message: Mapping[str, Any] | None = None
    ) -> tuple[list[ViciMessage], ViciMessage]:
        """A command that answers with a stream of ``event`` messages before its response (``list-sas``,
        ``list-conns``): returns (events, response).

        The stream's event stays registered after the first call: charon raises it only to the connection
        that sent the command, and registering around each call would cost two more round trips on the
        command connection, ahead of the ``initiate`` that waits behind a ``list-sas``."""
        async with self._lock:
            if event not in self._streaming:
                await self._register(event, True)
                self._streaming.add(event)
            try:
                await self._send(Packet.request(command, serialize(message)))
                items: list[ViciMessage] = []
                while True:
                    parsed = await asyncio.wait_for(self._receive(), _COMMAND_TIMEOUT_S)
                    if parsed.response_type != Packet.EVENT:
                        break
                    items.append(deserialize(parsed.payload))
            except BaseException:
                self._writer.close()
                raise
        if parsed.response_type != Packet.CMD_RESPONSE:
            raise IpsecError(f"unexpected VICI packet type {parsed.response_type} in answer to {command}")
        response = deserialize(parsed.payload)
        check_response(command, response)
        return items, response

    async def _register(self, event: str, register: bool) -> None:
        packet = Packet.register_event(event) if register else Packet.unregister_event(event)
        await self._send(packet)
        while True:
            parsed = await asyncio.wait_for(self._receive(), _COMMAND_TIMEOUT_S)
            if parsed.response_type == Packet.EVENT:
                continue  # an event that raced our (un)registration: not part of the answer
            break
        if parsed.response_type == Packet.EVENT_UNKNOWN:
            raise IpsecError(f"charon does not know the VICI event {event}")
        if parsed.response_type != Packet.EVENT_CONFIRM:
            raise IpsecError(f"unexpected VICI packet type {parsed.response_type} registering {event}")

    async def subscribe(self, events: Sequence[str]) -> None:
        """Register for ``events`` on this connection (then read them with :meth:`next_event`)."""
        async with self._lock:
            for event in events:
                await self._register(event, True)

    async def next_event(self) -> tuple[str, ViciMessage]:
        """The next event on a subscribed connection; raises CharonUnavailable when charon goes away."""
        while True:
            parsed = await self._receive()
            if parsed.response_type == Packet.EVENT:
                return parsed.event_type.decode(), deserialize(parsed.payload)
