"""The local control socket: one JSON request per line (``{"command": "show dmvpn"}``), one JSON answer
per line (``{"ok": true, "data": ...}`` or ``{"ok": false, "error": "..."}``). Both ends live here: the
agent's server, and :func:`request`, the client that ``dmvpnctl`` and the test lab use."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/run/dmvpn/agent.sock")
MAX_REQUEST = 4096
REQUEST_TIMEOUT_S = 5.0

Handler = Callable[[str], Any]


def answer(handler: Handler, line: bytes) -> dict[str, Any]:
    """The reply to one request line (pure apart from ``handler``)."""
    try:
        request = json.loads(line)
    except ValueError:
        return {"ok": False, "error": "request is not JSON"}
    command = request.get("command") if isinstance(request, dict) else None
    if not isinstance(command, str):
        return {"ok": False, "error": 'request needs a "command" string'}
    try:
        return {"ok": True, "data": handler(command)}
    except KeyError:
        return {"ok": False, "error": f"unknown command {command!r}"}
    except Exception as error:  # a broken view must not take the socket down
        log.exception("control command %r failed", command)
        return {"ok": False, "error": f"{command} failed: {error}"}


class ControlServer:
    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self.handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # a stale socket of a killed agent
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path), limit=MAX_REQUEST * 2)
        os.chmod(self.path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                line = await asyncio.wait_for(reader.readline(), 30.0)
                if not line:
                    break
                reply = answer(self.handler, line[:MAX_REQUEST])
                writer.write(json.dumps(reply, default=str).encode() + b"\n")
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class AgentUnreachable(RuntimeError):
    """Nothing answers on the socket: no agent there, the connection refused, or a socket error or timeout."""


class AgentRefused(RuntimeError):
    """The agent answered with an error, or with something that is not an answer (a reply cut short too)."""


def request(path: Path, command: str, timeout: float = REQUEST_TIMEOUT_S) -> Any:
    """Send one command to the agent at ``path`` and return its ``data`` (blocking: for the CLI and tests)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            buffer = _read_line(sock)
    except (FileNotFoundError, ConnectionRefusedError) as error:
        raise AgentUnreachable(f"no agent at {path} ({error.strerror}); is dmvpn-agent running?") from None
    except OSError as error:
        raise AgentUnreachable(f"talking to the agent at {path} failed: {error}") from None
    try:
        reply = json.loads(buffer)
    except ValueError:
        raise AgentRefused(f"the agent at {path} sent no valid answer to {command!r}") from None
    if not isinstance(reply, dict) or not reply.get("ok"):
        why = reply.get("error", "unknown error") if isinstance(reply, dict) else "not an answer"
        raise AgentRefused(f"the agent refused {command!r}: {why}")
    return reply.get("data")


def _read_line(sock: socket.socket) -> bytes:
    """Up to the answer's newline, or what came before the agent closed the connection."""
    buffer = b""
    while not buffer.endswith(b"\n"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    return buffer
