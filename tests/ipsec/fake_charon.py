"""A fake charon: the VICI wire protocol over a Unix socket, with just enough state (connections, shared
secrets, IKE/CHILD_SAs, event subscriptions) to test the client and the manager without strongSwan.

Initiating a connection establishes an SA at once and sends ``ike-updown`` then ``child-updown`` to
subscribers, like charon does; :meth:`FakeCharon.peer_initiates` plays a peer that initiates to us.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections import Counter
from pathlib import Path
from typing import Any

from vici.protocol import FiniteStream, Message, Packet


def _frame(payload: bytes) -> bytes:
    return struct.pack("!I", len(payload)) + payload


def _event(name: str, message: dict[str, Any]) -> bytes:
    raw = name.encode()
    return _frame(struct.pack("!BB", Packet.EVENT, len(raw)) + raw + Message.serialize(message))


def _response(message: dict[str, Any]) -> bytes:
    return _frame(struct.pack("!B", Packet.CMD_RESPONSE) + Message.serialize(message))


class FakeCharon:
    def __init__(self, path: Path, local: str) -> None:
        self.path = path
        self.local = local
        self.conns: dict[str, dict[str, Any]] = {}
        self.shared: dict[str, dict[str, Any]] = {}
        self.certs: list[dict[str, Any]] = []
        self.keys: list[dict[str, Any]] = []
        self.sas: dict[int, dict[str, Any]] = {}  # unique id -> {conn, remote, initiator, child}
        self.commands: Counter[str] = Counter()
        self.registrations: Counter[str] = Counter()  # event registrations received, by event
        self.initiate_delay_s = 0.0
        self.load_conn_delay_s = 0.0  # how long a load-conn takes to answer (a busy charon)
        self.list_sas_delay_s = 0.0  # how long a list-sas takes to answer
        self.refuse_load_conn = False
        # ("recv" | "start" | "end", command), in the order they happened
        self.timeline: list[tuple[str, str]] = []
        self._next_id = 1
        self._subscribers: dict[asyncio.StreamWriter, set[str]] = {}
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._serve, str(self.path))

    async def stop(self) -> None:
        """charon dies: the socket goes away, every client sees EOF, all state is lost."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._subscribers):
            writer.close()
        self._subscribers.clear()
        self.path.unlink(missing_ok=True)
        self.conns.clear()
        self.shared.clear()
        self.sas.clear()

    # --- SA simulation -----------------------------------------------------------------------------

    def _ike_section(self, uid: int, with_child: bool = True, state: str = "ESTABLISHED") -> dict[str, Any]:
        sa = self.sas[uid]
        ike: dict[str, Any] = {
            "uniqueid": str(uid),
            "version": "2",
            "state": state,
            "local-host": sa["local"],
            "remote-host": sa["remote"],
            "remote-id": sa["remote"],
            "initiator-spi": f"{uid:016x}",
            "responder-spi": f"{uid + 100:016x}",
            "established": "1",
        }
        if sa["initiator"]:
            ike["initiator"] = "yes"
        if with_child:
            child = sa["child"]
            ike["child-sas"] = {
                f"gre-{child}": {
                    "name": "gre",
                    "uniqueid": str(child),
                    "state": "INSTALLED" if state == "ESTABLISHED" else "DELETING",
                    "mode": "TRANSPORT",
                    "protocol": "ESP",
                    "spi-in": f"c{child:07x}",
                    "spi-out": f"d{child:07x}",
                    "bytes-in": "840",
                    "packets-in": "10",
                    "bytes-out": "420",
                    "packets-out": "5",
                }
            }
        return ike

    def _broadcast(self, name: str, message: dict[str, Any]) -> None:
        for writer, events in list(self._subscribers.items()):
            if name in events and not writer.is_closing():
                writer.write(_event(name, message))

    def establish(self, conn: str, remote: str, initiator: bool) -> int:
        uid = self._next_id
        self._next_id += 1
        self.sas[uid] = {"conn": conn, "remote": remote, "initiator": initiator, "child": uid, "local": self.local}
        self._broadcast("ike-updown", {"up": "yes", conn: self._ike_section(uid, with_child=False)})
        self._broadcast("child-updown", {"up": "yes", conn: self._ike_section(uid)})
        return uid

    def peer_initiates(self, remote: str) -> int:
        conn = f"dmvpn-peer-{remote}" if f"dmvpn-peer-{remote}" in self.conns else "dmvpn"
        return self.establish(conn, remote, initiator=False)

    def drop(self, uid: int) -> None:
        sa = self.sas[uid]
        self._broadcast("child-updown", {sa["conn"]: self._ike_section(uid, state="DELETING")})
        self._broadcast("ike-updown", {sa["conn"]: self._ike_section(uid, with_child=False, state="DELETING")})
        del self.sas[uid]

    def sas_to(self, remote: str) -> list[int]:
        return [uid for uid, sa in self.sas.items() if sa["remote"] == remote]

    # --- protocol ----------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """As charon's vici_socket.c does: frames are read as they arrive (timeline "recv") and queued, and
        one connection's commands are handled strictly in order."""
        self._subscribers[writer] = set()
        queue: asyncio.Queue[tuple[int, str, dict[str, Any]] | None] = asyncio.Queue()
        receiving = asyncio.create_task(self._receive(reader, queue))
        try:
            while (item := await queue.get()) is not None:
                await self._handle(writer, *item)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            receiving.cancel()
            self._subscribers.pop(writer, None)
            writer.close()

    async def _receive(self, reader: asyncio.StreamReader, queue: asyncio.Queue[Any]) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                body = await reader.readexactly(length)
                kind, size = body[0], body[1]
                name = body[2 : 2 + size].decode()
                self.timeline.append(("recv", name))
                await queue.put((kind, name, dict(Message.deserialize(FiniteStream(body[2 + size :])))))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            await queue.put(None)

    async def _handle(self, writer: asyncio.StreamWriter, kind: int, name: str, message: dict[str, Any]) -> None:
        if kind == Packet.EVENT_REGISTER:
            self.registrations[name] += 1
            self._subscribers[writer].add(name)
            writer.write(_frame(bytes([Packet.EVENT_CONFIRM])))
            return
        if kind == Packet.EVENT_UNREGISTER:
            self._subscribers[writer].discard(name)
            writer.write(_frame(bytes([Packet.EVENT_CONFIRM])))
            return
        self.commands[name] += 1
        handler = getattr(self, "cmd_" + name.replace("-", "_"), None)
        if handler is None:
            writer.write(_frame(bytes([Packet.CMD_UNKNOWN])))
            return
        self.timeline.append(("start", name))
        response = await handler(writer, message)
        self.timeline.append(("end", name))
        writer.write(_response(response))

    async def cmd_get_conns(self, _w: asyncio.StreamWriter, _m: dict[str, Any]) -> dict[str, Any]:
        return {"conns": list(self.conns)}

    async def cmd_load_conn(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        if self.load_conn_delay_s:
            await asyncio.sleep(self.load_conn_delay_s)
        if self.refuse_load_conn:
            return {"success": "no", "errmsg": "invalid connection"}
        self.conns.update(message)
        return {"success": "yes"}

    async def cmd_unload_conn(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        name = message["name"].decode()
        if self.conns.pop(name, None) is None:
            return {"success": "no", "errmsg": f"connection '{name}' not found"}
        return {"success": "yes"}

    async def cmd_get_shared(self, _w: asyncio.StreamWriter, _m: dict[str, Any]) -> dict[str, Any]:
        return {"keys": list(self.shared)}

    async def cmd_load_shared(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        self.shared[message["id"].decode()] = message
        return {"success": "yes"}

    async def cmd_unload_shared(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        self.shared.pop(message["id"].decode(), None)
        return {"success": "yes"}

    async def cmd_load_cert(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        self.certs.append(message)
        return {"success": "yes"}

    async def cmd_load_key(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        self.keys.append(message)
        return {"success": "yes", "id": "00aa"}

    async def cmd_initiate(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        conn = message["ike"].decode()
        if conn not in self.conns:
            return {"success": "no", "errmsg": f"no config named '{conn}'"}
        remote = self.conns[conn]["remote_addrs"][0].decode()

        async def later() -> None:
            await asyncio.sleep(self.initiate_delay_s)
            self.establish(conn, remote, initiator=True)

        task = asyncio.create_task(later())
        self._tasks = getattr(self, "_tasks", set())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return {"success": "yes"}

    async def cmd_terminate(self, _w: asyncio.StreamWriter, message: dict[str, Any]) -> dict[str, Any]:
        uid = int(message["ike-id"])
        if uid in self.sas:
            self.drop(uid)
        return {"success": "yes"}

    async def cmd_list_sas(self, writer: asyncio.StreamWriter, _m: dict[str, Any]) -> dict[str, Any]:
        if self.list_sas_delay_s:
            await asyncio.sleep(self.list_sas_delay_s)
        if "list-sa" in self._subscribers.get(writer, set()):
            for uid, sa in self.sas.items():
                writer.write(_event("list-sa", {sa["conn"]: self._ike_section(uid)}))
        return {}


@contextlib.asynccontextmanager
async def fake_charon(path: Path, local: str) -> Any:
    charon = FakeCharon(path, local)
    await charon.start()
    try:
        yield charon
    finally:
        await charon.stop()
