"""dmvpnctl against a fake agent: a real unix socket served by the agent's own ControlServer."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from dmvpn.agent.control import ControlServer
from dmvpn.cli.main import app

DMVPN = {
    "interface": "dmvpn0", "role": "spoke", "node": "spoke1", "nbma": "192.0.2.11", "tunnel": "10.255.0.1/24",
    "phase": 3,
    "peers": [
        {"nbma": "192.0.2.1", "tunnel": "10.255.0.254", "kind": "nhs", "state": "up", "ipsec": "up", "uptime": 3725},
        {"nbma": "192.0.2.12", "tunnel": "10.255.0.2", "kind": "shortcut", "state": "up", "ipsec": "up",
         "uptime": 12, "expiresIn": 7188, "prefixes": ["10.1.2.0/24"]},
    ],
}  # fmt: skip
NHRP = [
    {"protocol": "10.255.0.254", "nbma": "192.0.2.1", "type": "nhs", "expiresIn": None},
    {"protocol": "10.1.2.0/24", "nbma": "192.0.2.12", "type": "shortcut", "expiresIn": 7188},
]
IPSEC = [
    {"peer": "192.0.2.1", "conn": "dmvpn-peer-192.0.2.1", "state": "ESTABLISHED", "initiator": True,
     "established": 60, "bytesIn": 1000, "bytesOut": 2000, "packetsIn": 10, "packetsOut": 20,
     "children": [{"name": "gre", "state": "INSTALLED"}]},
]  # fmt: skip
COUNTERS = {
    "packets_in": {"registration_reply": 3, "traffic_indication": 1},
    "packets_out": {"registration_request": 3},
    "drops": {"decode_error": 2},
    "agent": {"reconciles": 4},
}
ANSWERS: dict[str, Any] = {"show dmvpn": DMVPN, "show nhrp": NHRP, "show ipsec": IPSEC, "show counters": COUNTERS}


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "agent.sock"
    loop = asyncio.new_event_loop()
    server = ControlServer(path, lambda command: ANSWERS[command])
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield path
    asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


runner = CliRunner(env={"COLUMNS": "200"})  # wide enough that rich does not elide cells


@pytest.mark.parametrize("what", ["dmvpn", "nhrp", "ipsec", "counters"])
def test_json_output_is_the_agent_data(agent_socket: Path, what: str) -> None:
    result = runner.invoke(app, ["show", what, "--json", "--socket", str(agent_socket)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == ANSWERS[f"show {what}"]


def test_show_dmvpn_table(agent_socket: Path) -> None:
    result = runner.invoke(app, ["show", "dmvpn", "--socket", str(agent_socket)])
    assert result.exit_code == 0, result.output
    assert "dmvpn0" in result.output and "shortcut" in result.output and "192.0.2.12" in result.output
    assert "01:02:05" in result.output  # uptime 3725 s


def test_show_nhrp_and_counters_tables(agent_socket: Path) -> None:
    nhrp = runner.invoke(app, ["show", "nhrp", "--socket", str(agent_socket)])
    assert nhrp.exit_code == 0 and "10.1.2.0/24" in nhrp.output
    counters = runner.invoke(app, ["show", "counters", "--socket", str(agent_socket)])
    assert counters.exit_code == 0 and "decode_error" in counters.output and "traffic_indication" in counters.output
    ipsec = runner.invoke(app, ["show", "ipsec", "--socket", str(agent_socket)])
    assert ipsec.exit_code == 0 and "ESTABLISHED" in ipsec.output and "gre:INSTALLED" in ipsec.output


def test_no_agent_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["show", "dmvpn", "--socket", str(tmp_path / "missing.sock")])
    assert result.exit_code == 1
    assert "is dmvpn-agent running" in result.output


def test_unknown_command_is_reported_by_the_server() -> None:
    from dmvpn.agent.control import answer

    assert answer(lambda c: ANSWERS[c], b'{"command": "show bogus"}') == {
        "ok": False,
        "error": "unknown command 'show bogus'",
    }
    assert answer(lambda c: ANSWERS[c], b"not json")["ok"] is False


def test_a_refused_command_is_a_clear_error(agent_socket: Path) -> None:
    result = runner.invoke(app, ["show", "events", "--socket", str(agent_socket)])  # not in ANSWERS
    assert result.exit_code == 1
    assert "the agent refused 'show events': unknown command 'show events'" in result.output


def test_the_client_raises_refused_for_an_error_or_a_non_answer(agent_socket: Path, tmp_path: Path) -> None:
    from dmvpn.agent.control import AgentRefused, AgentUnreachable, request

    assert request(agent_socket, "show nhrp") == NHRP
    with pytest.raises(AgentRefused, match="unknown command"):
        request(agent_socket, "show bogus")
    with pytest.raises(AgentUnreachable, match="is dmvpn-agent running"):
        request(tmp_path / "missing.sock", "show nhrp")


def test_the_client_raises_refused_for_a_reply_that_is_not_json(tmp_path: Path) -> None:
    import socket

    from dmvpn.agent.control import AgentRefused, request

    path = tmp_path / "garbage.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        listener.listen(1)

        def answer_garbage() -> None:
            connection, _ = listener.accept()
            with connection:
                connection.recv(4096)
                connection.sendall(b"<html>\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        with pytest.raises(AgentRefused, match="no valid answer"):
            request(path, "show nhrp")
        thread.join(5)
