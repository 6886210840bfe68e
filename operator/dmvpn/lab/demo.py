"""``make lab``: hub + 3 spokes + pods, one charon and one real ``dmvpn-agent --standalone`` per site.

It pings pod-to-pod across spokes and shows, as it happens, the first packets via the hub, the Traffic
Indication, the resolution, the SA and the switch to the direct path; then ``dmvpnctl show dmvpn`` on every
site and a timeline with the measured shortcut time. ``--static`` runs the older hand-built lab instead
(kernel data plane only, no agent). Run as root on a kernel with ``ip_gre``/``esp4`` (``make lab`` boots a
guest for that when this kernel lacks them).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from dmvpn.cli.main import app as dmvpnctl
from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Site, hub_and_spokes, ping, static_hub_and_spokes, static_shortcut

DELAY_MS = 10.0
PING_INTERVAL = 0.02
PING_COUNT = 250  # 5 s: the emulated guest needs ~2.5 s for IKE + NHRP; real hardware far less
SHOWN_EVENTS = {
    "traffic-indication",
    "resolution-reply",
    "ike",
    "sa-up",
    "sa-ready",
    "route-added",
    "registration",
    "nhs",
}
_T0: list[float] = []  # t = 0 of the printed times: the first ping's send time once a reply tells it
_FIRST_PING = threading.Event()  # set when _T0 holds that send time (until then: when ping was started)


def _step(text: str) -> None:
    stamp = f"+{(time.time() - _T0[0]) * 1000:8.1f} ms" if _T0 else time.strftime("%H:%M:%S")
    print(f"[{stamp}] {text}", flush=True)


def _describe(sites: list[Site]) -> None:
    for site in sites:
        role = "hub  " if site.name == "hub" else "spoke"
        _step(f"  {role} {site.name:7} NBMA {site.nbma}  tunnel {site.tunnel_ip}  LAN {site.lan}  pod {site.pod_ip}")


# --- the hand-built lab (kept for comparison: --static) ------------------------------------------------


def _path_proof(lab_hub: Site, src: Site, dst: Site, label: str) -> bool:
    assert src.pod is not None
    before = lab_hub.ns.link_stats("gre1")
    sent, received = ping(src.pod, str(dst.pod_ip), count=3, interval=0.3)
    after = lab_hub.ns.link_stats("gre1")
    crossed = after["rx"] - before["rx"]
    path = f"via the hub (hub gre1 saw {crossed} packets)" if crossed else "DIRECT (hub gre1 saw 0 packets)"
    _step(f"{label}: pod {src.pod_ip} -> pod {dst.pod_ip}: {received}/{sent} replies, {path}")
    return received == sent


def static_demo() -> int:
    with Lab(prefix="lab") as lab:
        _step(f"building the underlay 192.0.2.0/24 (bridge in netns lab-inet), {DELAY_MS:.0f} ms one-way per site")
        sites = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
        _describe(sites)
        hub, spoke1, spoke2 = sites
        _step("multipoint GRE gre1 on every site; hub maps spokes, spokes send 10.1.0.0/16 via hub")
        static_hub_and_spokes(sites)
        ok = _path_proof(hub, spoke1, spoke2, "before shortcut")
        static_shortcut(spoke1, spoke2)
        static_shortcut(spoke2, spoke1)
        ok = _path_proof(hub, spoke1, spoke2, "after shortcut ") and ok
    _step("path proof: " + ("hub first, then direct" if ok else "FAILED"))
    return 0 if ok else 1


# --- the agent demo ---------------------------------------------------------------------------------------


@dataclass
class Timeline:
    marks: list[tuple[float, str, str]] = field(default_factory=list)  # (wall time, who, what)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, at: float, who: str, what: str) -> None:
        with self.lock:
            self.marks.append((at, who, what))


def first_sent_at(stamp: float, rtt_ms: float, seq: int, interval: float) -> float:
    """When ping sent its first request, from any reply: ``ping -D`` stamps the reply's arrival, the RTT
    dates its request, and requests leave every ``interval`` from icmp_seq 1."""
    return stamp - rtt_ms / 1000 - (seq - 1) * interval


def _follow_events(
    agents: AgentLab, names: list[str], timeline: Timeline, stop: threading.Event, started: float
) -> None:
    """Poll each agent's event log and print new events (since ``started``) as they happen, once t = 0 is
    known (the first reply dates the first ping; starting ping in the pod's namespace took ~250 ms in the
    emulated guest, which t = 0 must not include). Events meanwhile wait in the agents' logs."""
    seen: dict[str, int] = dict.fromkeys(names, 0)
    _FIRST_PING.wait(timeout=5.0)
    while not stop.is_set():
        for name in names:
            try:
                events: list[dict[str, Any]] = agents.agents[name].request("show events", timeout=2.0)
            except Exception:
                continue
            for event in events[seen[name] :]:
                if event["kind"] in SHOWN_EVENTS and event["time"] >= started:
                    timeline.add(event["time"], name, f"{event['kind']}: {event['text']}")
                    offset = (event["time"] - _T0[0]) * 1000
                    print(f"[+{offset:8.1f} ms] {name:7} {event['kind']:<18} {event['text']}", flush=True)
            seen[name] = len(events)
        stop.wait(0.05)


_REPLY = re.compile(r"^\[(?P<stamp>\d+\.\d+)\].*icmp_seq=(?P<seq>\d+).*time=(?P<rtt>[\d.]+) ms")


def _ping_live(src: Site, dst: Site, timeline: Timeline, direct_rtt_ms: float) -> tuple[int, int, float | None]:
    """Ping with per-reply timestamps; print each reply with the path its RTT implies."""
    assert src.pod is not None
    argv = src.pod.argv("ping", "-D", "-n", "-i", str(PING_INTERVAL), "-c", str(PING_COUNT), "-W", "2", str(dst.pod_ip))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first_direct: float | None = None
    sent = received = 0
    last_path = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        match = _REPLY.match(line)
        if match:
            received += 1
            stamp, rtt, seq = float(match["stamp"]), float(match["rtt"]), int(match["seq"])
            direct = rtt < direct_rtt_ms
            sent_at = stamp - rtt / 1000
            if not _FIRST_PING.is_set():
                _T0[0] = first_sent_at(stamp, rtt, seq, PING_INTERVAL)
                _FIRST_PING.set()
            if direct and first_direct is None:
                first_direct = sent_at
                timeline.add(sent_at, src.name, f"first packet on the direct path (icmp_seq {seq})")
            path = "DIRECT" if direct else "via hub"
            if seq <= 3 or path != last_path or seq % 10 == 0:
                print(
                    f"[+{(sent_at - _T0[0]) * 1000:8.1f} ms] ping    seq {seq:3} rtt {rtt:6.1f} ms  {path}", flush=True
                )
            last_path = path
        elif "packets transmitted" in line:
            sent = int(line.split()[0])
    proc.wait(timeout=30)
    return sent, received, first_direct


def agent_demo() -> int:
    with Lab(prefix="lab") as lab:
        _step(f"underlay 192.0.2.0/24, {DELAY_MS:.0f} ms one-way delay per site; hub + 3 spokes with pods")
        sites = hub_and_spokes(lab, spokes=3, delay_ms=DELAY_MS)
        _describe(sites)
        _hub, spoke1, spoke2, _spoke3 = sites
        agents = AgentLab(lab, sites, ipsec=True)
        _step(f"standalone file {agents.file} (DMVPNHub + 3 DMVPNSpoke, IPsec PSK, phase 3)")
        _step("starting one strongSwan charon and one `dmvpn-agent --standalone` per site")
        agents.start_all()
        agents.wait_registered()
        _step("every spoke registered with the hub (IKE SA first, then NHRP registration)")
        _print_show(agents, "hub")

        timeline = Timeline()
        stop = threading.Event()
        started = time.time()
        _T0.append(started)
        follower = threading.Thread(
            target=_follow_events, args=(agents, ["hub", "spoke1", "spoke2"], timeline, stop, started)
        )
        follower.start()
        print(
            f"\n--- pod {spoke1.pod_ip} (spoke1) pings pod {spoke2.pod_ip} (spoke2) every {PING_INTERVAL * 1000:.0f} ms"
        )
        via_hub_rtt = 4 * DELAY_MS
        sent, received, first_direct = _ping_live(spoke1, spoke2, timeline, direct_rtt_ms=via_hub_rtt * 0.8)
        time.sleep(0.5)
        stop.set()
        follower.join(timeout=10)
        print()
        _step(f"{received}/{sent} replies ({sent - received} lost)")
        for site in sites:
            _print_show(agents, site.name)
        _print_timeline(timeline, first_direct)
        ok = received == sent and first_direct is not None
    print("result: " + ("shortcut formed on demand, no ping lost" if ok else "FAILED"), flush=True)
    return 0 if ok else 1


def _print_show(agents: AgentLab, name: str) -> None:
    """The real ``dmvpnctl show dmvpn`` against a site's agent socket, run in this process: a fresh python
    per call spent over 30 s importing typer and rich in a loaded emulated guest."""
    agent = agents.agents[name]
    print(f"\n$ dmvpnctl show dmvpn   # on {name}", flush=True)
    os.environ.setdefault("COLUMNS", "110")
    try:
        dmvpnctl(["show", "dmvpn", "--socket", str(agent.socket)], standalone_mode=False)
    except Exception as error:  # a demo step that fails says so and the demo goes on
        print(f"dmvpnctl failed: {error}", flush=True)
    sys.stdout.flush()


def _print_timeline(timeline: Timeline, first_direct: float | None) -> None:
    print("timeline (t = 0: first ping sent)")
    for at, who, what in sorted(timeline.marks):
        print(f"  {(at - _T0[0]) * 1000:8.1f} ms  {who:7} {what}")
    lower_ti = 2 * DELAY_MS  # pod -> hub, Traffic Indication hub -> spoke1
    lower = lower_ti + 3 * DELAY_MS + 4 * DELAY_MS  # + request via hub, reply; + IKE (2 exchanges) overlapped
    if first_direct is not None:
        measured = (first_direct - _T0[0]) * 1000
        print(
            f"shortcut time: {measured:.0f} ms from the first packet to the first packet on the direct path "
            f"(underlay lower bound with IKE overlapped: {lower:.0f} ms; ratio {measured / lower:.2f})"
        )
    else:
        print("shortcut time: no packet took the direct path")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--static" in args:
        return static_demo()
    return agent_demo()


if __name__ == "__main__":
    raise SystemExit(main())
