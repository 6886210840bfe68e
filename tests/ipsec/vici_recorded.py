"""VICI messages recorded from Debian's charon 5.9.8 in the kernel lab (values are bytes, as the codec
returns them). Spoke 192.0.2.1 initiated to 192.0.2.11; rekey_time was 20 s to see rekeys."""

from __future__ import annotations

from typing import Any

_IKE_COMMON: dict[str, Any] = {
    "version": b"2",
    "state": b"ESTABLISHED",
    "local-host": b"192.0.2.1",
    "local-port": b"500",
    "local-id": b"192.0.2.1",
    "remote-host": b"192.0.2.11",
    "remote-port": b"500",
    "remote-id": b"192.0.2.11",
    "encr-alg": b"AES_GCM_16",
    "encr-keysize": b"256",
    "prf-alg": b"PRF_HMAC_SHA2_256",
    "dh-group": b"ECP_256",
}
_TS = {"local-ts": [b"192.0.2.1/32[gre]"], "remote-ts": [b"192.0.2.11/32[gre]"]}


def _child(uid: int, state: bytes, spi_in: bytes, spi_out: bytes, packets: int) -> dict[str, Any]:
    return {
        "name": b"gre",
        "uniqueid": str(uid).encode(),
        "reqid": b"1",
        "state": state,
        "mode": b"TRANSPORT",
        "protocol": b"ESP",
        "spi-in": spi_in,
        "spi-out": spi_out,
        "encr-alg": b"AES_GCM_16",
        "encr-keysize": b"256",
        "bytes-in": str(92 * packets).encode(),
        "packets-in": str(packets).encode(),
        "use-in": b"0",
        "bytes-out": str(92 * packets).encode(),
        "packets-out": str(packets).encode(),
        "use-out": b"0",
        "rekey-time": b"14",
        "life-time": b"19",
        "install-time": b"15",
        **_TS,
    }


IKE_UP: dict[str, Any] = {
    "dmvpn-peer-192.0.2.11": {
        "uniqueid": b"1",
        **_IKE_COMMON,
        "initiator": b"yes",
        "initiator-spi": b"95f457561a4b0c98",
        "responder-spi": b"8dee099eebc1e967",
        "established": b"0",
        "rekey-time": b"20",
        "tasks-active": [b"IKE_ESTABLISH", b"CHILD_CREATE"],
    },
    "up": b"yes",
}

CHILD_UP: dict[str, Any] = {
    "dmvpn-peer-192.0.2.11": {
        "uniqueid": b"1",
        **_IKE_COMMON,
        "initiator": b"yes",
        "initiator-spi": b"95f457561a4b0c98",
        "responder-spi": b"8dee099eebc1e967",
        "established": b"0",
        "rekey-time": b"20",
        "tasks-active": [b"CHILD_CREATE"],
        "child-sas": {"gre-1": _child(1, b"INSTALLED", b"c8330905", b"c32363ff", 0)},
    },
    "up": b"yes",
}

LIST_SA: dict[str, Any] = {
    "dmvpn-peer-192.0.2.11": {
        "uniqueid": b"1",
        **_IKE_COMMON,
        "initiator": b"yes",
        "initiator-spi": b"95f457561a4b0c98",
        "responder-spi": b"8dee099eebc1e967",
        "established": b"3",
        "rekey-time": b"17",
        "child-sas": {"gre-1": _child(1, b"INSTALLED", b"c8330905", b"c32363ff", 3)},
    }
}

CHILD_REKEY: dict[str, Any] = {
    "dmvpn-peer-192.0.2.11": {
        "uniqueid": b"1",
        **_IKE_COMMON,
        "initiator": b"yes",
        "initiator-spi": b"95f457561a4b0c98",
        "responder-spi": b"8dee099eebc1e967",
        "established": b"5",
        "rekey-time": b"15",
        "tasks-passive": [b"CHILD_REKEY"],
        "child-sas": {
            "gre": {
                "old": _child(1, b"REKEYED", b"c8330905", b"c32363ff", 3),
                "new": _child(2, b"INSTALLED", b"c5bb0e85", b"cb076ad1", 0),
            }
        },
    }
}

IKE_REKEY: dict[str, Any] = {
    "dmvpn-peer-192.0.2.11": {
        "old": {
            "uniqueid": b"1",
            **_IKE_COMMON,
            "initiator": b"yes",
            "initiator-spi": b"95f457561a4b0c98",
            "responder-spi": b"8dee099eebc1e967",
            "established": b"8",
            "rekey-time": b"12",
            "tasks-passive": [b"IKE_REKEY"],
        },
        # The new IKE_SA lists no CHILD_SAs and no 'initiator' (the peer initiated the rekeying).
        "new": {
            "uniqueid": b"2",
            **_IKE_COMMON,
            "initiator-spi": b"c59b496e390b747c",
            "responder-spi": b"8b419c548ce9c79d",
            "established": b"0",
            "rekey-time": b"19",
        },
    }
}


def ike_down(uid: int = 2) -> dict[str, Any]:
    """``ike-updown`` going down: same shape, no ``up`` key."""
    return {
        "dmvpn-peer-192.0.2.11": {
            "uniqueid": str(uid).encode(),
            **_IKE_COMMON,
            "state": b"DELETING",
            "initiator-spi": b"c59b496e390b747c",
            "responder-spi": b"8b419c548ce9c79d",
        }
    }


def child_down(ike_uid: int, child_uid: int) -> dict[str, Any]:
    return {
        "dmvpn-peer-192.0.2.11": {
            "uniqueid": str(ike_uid).encode(),
            **_IKE_COMMON,
            "initiator-spi": b"c59b496e390b747c",
            "responder-spi": b"8b419c548ce9c79d",
            "child-sas": {f"gre-{child_uid}": _child(child_uid, b"DELETING", b"c5bb0e85", b"cb076ad1", 7)},
        }
    }
