"""The lab proves itself: GRE between two sites protected by ESP, negotiated by one charon per namespace."""

from __future__ import annotations

import socket
import subprocess
import time

import pytest
import vici

from dmvpn.lab.charon import start_charon
from dmvpn.lab.topology import Lab, Site, add_static_mgre, hub_and_spokes, neighbour, ping

pytestmark = pytest.mark.kernel

PSK = "lab-secret-not-for-production"


def _session(path: str) -> vici.Session:
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    return vici.Session(sock)


def _load_transport_gre(session: vici.Session, me: Site, peer: Site) -> None:
    session.load_shared({"type": "IKE", "data": PSK, "owners": [str(me.nbma), str(peer.nbma)]})
    session.load_conn(
        {
            "lab-gre": {
                "version": "2",
                "local_addrs": [str(me.nbma)],
                "remote_addrs": [str(peer.nbma)],
                "proposals": ["aes256gcm16-prfsha256-ecp256"],
                "local": {"auth": "psk", "id": str(me.nbma)},
                "remote": {"auth": "psk", "id": str(peer.nbma)},
                "children": {
                    "gre": {
                        "mode": "transport",
                        "local_ts": ["dynamic[gre]"],
                        "remote_ts": ["dynamic[gre]"],
                        "esp_proposals": ["aes256gcm16-ecp256"],
                        "start_action": "trap",
                    }
                },
            }
        }
    )


def test_gre_runs_inside_esp_transport(lab: Lab) -> None:
    hub, spoke1 = hub_and_spokes(lab, spokes=1, with_pods=False)
    for site in (hub, spoke1):
        add_static_mgre(site)
    neighbour(hub, spoke1)
    hub.ns.run("ip", "route", "add", f"{spoke1.tunnel_ip}/32", "dev", "gre1")
    neighbour(spoke1, hub)
    spoke1.ns.run("ip", "route", "add", f"{hub.tunnel_ip}/32", "dev", "gre1")
    sessions = {}
    for me, peer in ((hub, spoke1), (spoke1, hub)):
        sessions[me.name] = _session(str(start_charon(lab, me)))
        _load_transport_gre(sessions[me.name], me, peer)

    inet = lab.underlay()
    capture = subprocess.Popen(
        inet.argv("timeout", "40", "tcpdump", "-n", "-l", "-i", "br0", "-c", "12", "ip proto 47 or ip proto 50"),
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    time.sleep(1.0)  # let tcpdump attach before the first packet
    # The trap policy holds the first packets while IKE runs, so allow a few for the SA to come up.
    received = 0
    for _ in range(10):
        received = ping(spoke1.ns, str(hub.tunnel_ip), count=1, timeout_s=2)[1]
        if received:
            break
    assert received == 1, "GRE over ESP never came up"
    assert ping(spoke1.ns, str(hub.tunnel_ip), count=5)[1] == 5
    out, _ = capture.communicate(timeout=60)
    lines = [line for line in out.splitlines() if line.strip()]
    print("\n[lab] underlay capture:\n  " + "\n  ".join(lines[:6]))
    assert any("ESP" in line for line in lines), "no ESP on the underlay"
    assert not any("GRE" in line for line in lines), "GRE leaked onto the underlay in the clear"
    sas = list(sessions["spoke1"].list_sas())
    assert sas and any(sa[name]["state"] == b"ESTABLISHED" for sa in sas for name in sa)
    xfrm = spoke1.ns.run("ip", "xfrm", "state")
    assert "proto esp" in xfrm and "mode transport" in xfrm
