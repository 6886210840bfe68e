"""``make lab``: build the hub + 2 spokes + pods lab and show, step by step, which path pod traffic takes.

This is the hand-built (static) lab: it proves the kernel data plane the agent will drive. Run it as
root on a kernel with ``ip_gre`` (``make lab`` boots a guest for that when this kernel lacks it).
"""

from __future__ import annotations

import time

from dmvpn.lab.topology import Lab, Site, hub_and_spokes, ping, static_hub_and_spokes, static_shortcut

DELAY_MS = 10.0


def _step(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _describe(sites: list[Site]) -> None:
    for site in sites:
        role = "hub  " if site.name == "hub" else "spoke"
        _step(f"  {role} {site.name:7} NBMA {site.nbma}  tunnel {site.tunnel_ip}  LAN {site.lan}  pod {site.pod_ip}")


def _path_proof(lab_hub: Site, src: Site, dst: Site, label: str) -> bool:
    assert src.pod is not None
    before = lab_hub.ns.link_stats("gre1")
    sent, received = ping(src.pod, str(dst.pod_ip), count=3, interval=0.3)
    after = lab_hub.ns.link_stats("gre1")
    crossed = after["rx"] - before["rx"]
    path = f"via the hub (hub gre1 saw {crossed} packets)" if crossed else "DIRECT (hub gre1 saw 0 packets)"
    _step(f"{label}: pod {src.pod_ip} -> pod {dst.pod_ip}: {received}/{sent} replies, {path}")
    return received == sent


def main() -> int:
    with Lab(prefix="lab") as lab:
        _step(f"building the underlay 192.0.2.0/24 (bridge in netns lab-inet), {DELAY_MS:.0f} ms one-way per site")
        sites = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
        _describe(sites)
        hub, spoke1, spoke2 = sites
        _step("multipoint GRE gre1 (key 42, mtu 1400) on every site; hub maps spokes, spokes send 10.1.0.0/16 via hub")
        static_hub_and_spokes(sites)
        ok = _path_proof(hub, spoke1, spoke2, "before shortcut")
        _step("installing the spoke-to-spoke shortcut by hand (what NHRP resolution will do)")
        static_shortcut(spoke1, spoke2)
        static_shortcut(spoke2, spoke1)
        ok = _path_proof(hub, spoke1, spoke2, "after shortcut ") and ok
        _step("tearing the lab down")
    _step("path proof: " + ("hub first, then direct" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
