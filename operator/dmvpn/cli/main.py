"""``dmvpnctl``: ask the local node agent what it is doing (Cisco-style ``show`` views; ``--json`` for scripts)."""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from dmvpn.agent.control import DEFAULT_SOCKET, AgentRefused, AgentUnreachable, request

app = typer.Typer(help="Query the kube-dmvpn node agent.", no_args_is_help=True, add_completion=False)
show_app = typer.Typer(help="Show agent state.", no_args_is_help=True)
app.add_typer(show_app, name="show")

SocketOption = Annotated[Path, typer.Option("--socket", help="the agent's control socket")]
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


def _fetch(path: Path, command: str) -> Any:
    try:
        return request(path, command)
    except (AgentUnreachable, AgentRefused) as error:
        Console(stderr=True).print(f"[red]dmvpnctl: {error}[/red]")
        raise typer.Exit(1) from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


def _cell(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    return table


def _view(socket_path: Path, command: str, as_json: bool) -> Any:
    """The agent's answer to ``command``, or None once it was printed as JSON."""
    data = _fetch(socket_path, command)
    if as_json:
        _print_json(data)
        return None
    return data


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int):
        return "-"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


@show_app.command("dmvpn")
def show_dmvpn(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Peers: NHSes, registered spokes and shortcuts (IOS: show dmvpn)."""
    data = _view(socket_path, "show dmvpn", as_json)
    if data is None:
        return
    title = (
        f"Interface {data['interface']}, {data['role']} {data.get('node', '')}, "
        f"NBMA {data.get('nbma', '-')}, tunnel {data.get('tunnel', '-')}, phase {data.get('phase', '-')}"
    )
    columns = ("Peer NBMA", "Peer tunnel", "Kind", "State", "IPsec", "Up", "Expires")
    rows = (
        [*(_cell(peer.get(key)) for key in ("nbma", "tunnel", "kind", "state", "ipsec")),
         _duration(peer.get("uptime")), _duration(peer.get("expiresIn"))]
        for peer in data["peers"]
    )  # fmt: skip
    Console().print(_table(title, columns, rows))


@show_app.command("nhrp")
def show_nhrp(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """The NHRP cache (IOS: show ip nhrp)."""
    data = _view(socket_path, "show nhrp", as_json)
    if data is None:
        return
    rows = (
        [*(_cell(row.get(key)) for key in ("protocol", "nbma", "type")), _duration(row.get("expiresIn"))]
        for row in data
    )
    Console().print(_table("NHRP cache", ("Protocol", "NBMA", "Type", "Expires in"), rows))


@show_app.command("ipsec")
def show_ipsec(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """IPsec SAs per peer with counters (IOS: show crypto ipsec sa)."""
    data = _view(socket_path, "show ipsec", as_json)
    if data is None:
        return
    columns = ("Peer", "State", "Children", "Bytes in", "Bytes out", "Packets in", "Packets out", "Up")
    Console().print(_table("IPsec SAs", columns, (_sa_row(sa) for sa in data)))


def _sa_row(sa: dict[str, Any]) -> list[str]:
    children = ", ".join(f"{c.get('name')}:{c.get('state')}" for c in sa.get("children", []))
    counters = (_cell(sa.get(key)) for key in ("bytesIn", "bytesOut", "packetsIn", "packetsOut"))
    return [_cell(sa.get("peer")), _cell(sa.get("state")), children or "-", *counters, _duration(sa.get("established"))]


@show_app.command("counters")
def show_counters(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """NHRP packets in/out per type and drops per reason."""
    data = _view(socket_path, "show counters", as_json)
    if data is None:
        return
    packets_in, packets_out = data.get("packets_in", {}), data.get("packets_out", {})
    kinds = sorted(set(packets_in) | set(packets_out))
    rows = ([kind, str(packets_in.get(kind, 0)), str(packets_out.get(kind, 0))] for kind in kinds)
    console = Console()
    console.print(_table("NHRP packets", ("Type", "In", "Out"), rows))
    console.print(_table("Drops", ("Reason", "Packets"), _pairs(data.get("drops", {}))))
    if data.get("agent"):
        console.print(_table("Agent", ("Counter", "Value"), _pairs(data["agent"])))


def _pairs(mapping: dict[str, Any]) -> list[list[str]]:
    return [[name, str(value)] for name, value in sorted(mapping.items())]


@show_app.command("events")
def show_events(socket_path: SocketOption = DEFAULT_SOCKET, as_json: JsonOption = False) -> None:
    """Recent agent events (registrations, indications, resolutions, SAs, routes)."""
    data = _view(socket_path, "show events", as_json)
    if data is None:
        return

    for event in data:
        stamp = datetime.datetime.fromtimestamp(event["time"]).strftime("%H:%M:%S.%f")[:-3]
        typer.echo(f"{stamp} {event['kind']:<20} {event['text']}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
