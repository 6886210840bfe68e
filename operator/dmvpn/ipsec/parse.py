"""Pure parsing of what charon reports (``list-sas`` items and updown/rekey events; values are bytes)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

from dmvpn.ipsec.types import ChildSaInfo, IkeSaInfo


def _text(value: Any, default: str = "") -> str:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return default if value is None else str(value)


def _int(value: Any) -> int | None:
    text = _text(value)
    try:
        return int(text)
    except ValueError:
        return None


def _count(value: Any) -> int:
    return _int(value) or 0


def _address(value: Any) -> IPv4Address | None:
    try:
        return IPv4Address(_text(value))
    except ValueError:
        return None


def _algorithm(info: Mapping[str, Any]) -> str | None:
    encr = _text(info.get("encr-alg"))
    if not encr:
        return None
    size = _text(info.get("encr-keysize"))
    return f"{encr}_{size}" if size else encr


def parse_child(info: Mapping[str, Any], key: str = "") -> ChildSaInfo:
    """One ``child-sas`` entry (its section name as ``key``, e.g. ``gre-3``)."""
    return ChildSaInfo(
        name=_text(info.get("name"), key),
        unique_id=_count(info.get("uniqueid")),
        state=_text(info.get("state")),
        mode=_text(info.get("mode")),
        protocol=_text(info.get("protocol")),
        spi_in=_text(info.get("spi-in")),
        spi_out=_text(info.get("spi-out")),
        bytes_in=_count(info.get("bytes-in")),
        bytes_out=_count(info.get("bytes-out")),
        packets_in=_count(info.get("packets-in")),
        packets_out=_count(info.get("packets-out")),
        install_time_s=_int(info.get("install-time")),
        rekey_time_s=_int(info.get("rekey-time")),
        life_time_s=_int(info.get("life-time")),
        encryption=_algorithm(info),
    )


def parse_ike(conn: str, info: Mapping[str, Any]) -> IkeSaInfo:
    """One IKE_SA section (``conn`` is the section name: the connection it was made from)."""
    children = info.get("child-sas") or {}
    return IkeSaInfo(
        conn=conn,
        unique_id=_count(info.get("uniqueid")),
        state=_text(info.get("state")),
        local_host=_address(info.get("local-host")),
        remote_host=_address(info.get("remote-host")),
        local_id=_text(info.get("local-id")),
        remote_id=_text(info.get("remote-id")),
        initiator=info.get("initiator") == b"yes",
        spi_initiator=_text(info.get("initiator-spi")),
        spi_responder=_text(info.get("responder-spi")),
        established_s=_int(info.get("established")),
        rekey_time_s=_int(info.get("rekey-time")),
        encryption=_algorithm(info),
        children=tuple(parse_child(child, key) for key, child in children.items() if isinstance(child, Mapping)),
    )


def parse_sas(items: Sequence[Mapping[str, Any]]) -> list[IkeSaInfo]:
    """``list-sas`` streams one ``list-sa`` event per IKE_SA: ``{conn-name: {...}}``."""
    result = []
    for item in items:
        for conn, info in item.items():
            if isinstance(info, Mapping):
                result.append(parse_ike(conn, info))
    return result


@dataclass(frozen=True)
class UpdownEvent:
    """An ``ike-updown`` or ``child-updown`` event: which IKE_SA (and CHILD_SAs) went up or down."""

    kind: str
    up: bool
    ike: IkeSaInfo


@dataclass(frozen=True)
class RekeyEvent:
    """An ``ike-rekey`` (old/new IKE_SA) or ``child-rekey`` (one IKE_SA, old/new CHILD_SA) event."""

    kind: str
    old_ike: IkeSaInfo | None
    new_ike: IkeSaInfo | None
    ike: IkeSaInfo | None
    old_child: ChildSaInfo | None
    new_child: ChildSaInfo | None


def _sections(message: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [(key, value) for key, value in message.items() if isinstance(value, Mapping)]


def parse_updown(kind: str, message: Mapping[str, Any]) -> list[UpdownEvent]:
    """``{up: yes, <conn>: {...ike..., child-sas: {...}}}``; ``up`` is absent when going down."""
    up = message.get("up") == b"yes"
    return [UpdownEvent(kind, up, parse_ike(conn, info)) for conn, info in _sections(message)]


def parse_rekey(kind: str, message: Mapping[str, Any]) -> list[RekeyEvent]:
    """``ike-rekey``: ``{<conn>: {old: {...}, new: {...}}}``; ``child-rekey``: ``{<conn>: {...ike...,
    child-sas: {<name>: {old: {...}, new: {...}}}}}``."""
    events = []
    for conn, info in _sections(message):
        if kind == "ike-rekey":
            old, new = info.get("old"), info.get("new")
            events.append(
                RekeyEvent(
                    kind,
                    parse_ike(conn, old) if isinstance(old, Mapping) else None,
                    parse_ike(conn, new) if isinstance(new, Mapping) else None,
                    None,
                    None,
                    None,
                )
            )
            continue
        bare = {key: value for key, value in info.items() if key != "child-sas"}
        ike = parse_ike(conn, bare)
        for key, pair in _sections(info.get("child-sas") or {}):
            old, new = pair.get("old"), pair.get("new")
            events.append(
                RekeyEvent(
                    kind,
                    None,
                    None,
                    ike,
                    parse_child(old, key) if isinstance(old, Mapping) else None,
                    parse_child(new, key) if isinstance(new, Mapping) else None,
                )
            )
    return events
