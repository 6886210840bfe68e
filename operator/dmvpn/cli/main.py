"""``dmvpnctl``: ask the local node agent what it is doing (Cisco-style ``show`` views; ``--json`` for scripts)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

DEFAULT_SOCKET = Path("/run/dmvpn/agent.sock")
TIMEOUT_S = 5.0

app = typer.Typer(help="Query the kube-dmvpn node agent.", no_args_is_help=True, add_completion=False)
show_app = typer.Typer(help="Show agent state.", no_args_is_help=True)
app.add_typer(show_app, name="show")

SocketOption = Annotated[Path, typer.Option("--socket", help="the agent's control socket")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


class AgentUnreachable(RuntimeError):
    pass


def request(path: Path, command: str, timeout: float = TIMEOUT_S) -> Any:
    """Send one command to the agent and return its ``data``; raises AgentUnreachable or RuntimeError."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(str(path))
            sock.sendall(json.dumps({"command": command}).encode() + b"\n")
            buffer = b""
            while not buffer.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                buffer += chunk
    except (FileNotFoundError, ConnectionRefusedError) as error:
        raise AgentUnreachable(f"no agent at {path} ({error.strerror}); is dmvpn-agent running?") from None
    except OSError as error:
        raise AgentUnreachable(f"talking to the agent at {path} failed: {error}") from None
    try:
        reply = json.loads(buffer)
    except ValueError:
        raise RuntimeError(f"the agent at {path} sent no valid answer") from None
    if not reply.get("ok"):
        raise RuntimeError(str(reply.get("error", "unknown error")))
    return reply.get("data")


def _fetch(path: Path, command: str) -> Any:
    try:
        return request(path, command)
    except (AgentUnreachable, RuntimeError) as error:
        Console(stderr=True).print(f"[red]dmvpnctl: {error}[/red]")
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


@show_app.command("dmvpn")
def show_dmvpn(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Peers: NHSes, registered spokes and shortcuts (IOS: show dmvpn)."""
    data = _fetch(socket_path, "show dmvpn")
    if as_json:
        _print_json(data)
        return
    title = (
        f"Interface {data['interface']}, {data['role']} {data.get('node', '')}, "
        f"NBMA {data.get('nbma', '-')}, tunnel {data.get('tunnel', '-')}, phase {data.get('phase', '-')}"
    )
    table = Table(title=title)
    for column in ("Peer NBMA", "Peer tunnel", "Kind", "State", "IPsec", "Up", "Expires"):
        table.add_column(column)
    for peer in data["peers"]:
        table.add_row(
            _cell(peer.get("nbma")),
            _cell(peer.get("tunnel")),
            _cell(peer.get("kind")),
            _cell(peer.get("state")),
            _cell(peer.get("ipsec")),
            _duration(peer.get("uptime")),
            _duration(peer.get("expiresIn")),
        )
    Console().print(table)


@show_app.command("nhrp")
def show_nhrp(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """The NHRP cache (IOS: show ip nhrp)."""
    data = _fetch(socket_path, "show nhrp")
    if as_json:
        _print_json(data)
        return
    table = Table(title="NHRP cache")
    for column in ("Protocol", "NBMA", "Type", "Expires in"):
        table.add_column(column)
    for row in data:
        table.add_row(
            _cell(row.get("protocol")), _cell(row.get("nbma")), _cell(row.get("type")), _duration(row.get("expiresIn"))
        )
    Console().print(table)


@show_app.command("ipsec")
def show_ipsec(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """IPsec SAs per peer with counters (IOS: show crypto ipsec sa)."""
    data = _fetch(socket_path, "show ipsec")
    if as_json:
        _print_json(data)
        return
    table = Table(title="IPsec SAs")
    for column in ("Peer", "State", "Children", "Bytes in", "Bytes out", "Packets in", "Packets out", "Up"):
        table.add_column(column)
    for sa in data:
        children = ", ".join(f"{c.get('name')}:{c.get('state')}" for c in sa.get("children", []))
        table.add_row(
            _cell(sa.get("peer")),
            _cell(sa.get("state")),
            children or "-",
            _cell(sa.get("bytesIn")),
            _cell(sa.get("bytesOut")),
            _cell(sa.get("packetsIn")),
            _cell(sa.get("packetsOut")),
            _duration(sa.get("established")),
        )
    Console().print(table)


@show_app.command("counters")
def show_counters(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """NHRP packets in/out per type and drops per reason."""
    data = _fetch(socket_path, "show counters")
    if as_json:
        _print_json(data)
        return
    packets = Table(title="NHRP packets")
    for column in ("Type", "In", "Out"):
        packets.add_column(column)
    kinds = sorted(set(data.get("packets_in", {})) | set(data.get("packets_out", {})))
    for kind in kinds:
        packets.add_row(kind, str(data["packets_in"].get(kind, 0)), str(data["packets_out"].get(kind, 0)))
    drops = Table(title="Drops")
    drops.add_column("Reason")
    drops.add_column("Packets")
    for reason, count in sorted(data.get("drops", {}).items()):
        drops.add_row(reason, str(count))
    console = Console()
    console.print(packets)
    console.print(drops)
    agent = data.get("agent")
    if agent:
        table = Table(title="Agent")
        table.add_column("Counter")
        table.add_column("Value")
        for name, value in sorted(agent.items()):
            table.add_row(name, str(value))
        console.print(table)


@show_app.command("events")
def show_events(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Recent agent events (registrations, indications, resolutions, SAs, routes)."""
    data = _fetch(socket_path, "show events")
    if as_json:
        _print_json(data)
        return
    import datetime

    for event in data:
        stamp = datetime.datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S.%f")[:-3]
        typer.echo(f"{stamp} {event['kind']:<20} {event['text']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
