"""Agent benchmarks (issue 4), measured in one run inside the kernel lab and printed as ratios.

1. Shortcut time: first packet to first packet on the direct path, pod-to-pod across two spokes, 10 ms one-way
   underlay delay, with IPsec (on-demand SA) and without; against the lower bound the delays imply.
2. Agent RSS and idle CPU (the hub's agent, after the shortcut runs, over an idle window).

Run: ``.venv/bin/python -m dmvpn.lab.guest $PWD/.venv/bin/python bench/agent_bench.py`` (as root in the guest).
Not measured yet (see docs/agent.md): FRR nhrpd + strongSwan in the same run, iperf3 vs a hand-built
GRE+ESP path, 100 peers.
"""

from __future__ import annotations

import re
import subprocess
import time

import psutil

from dmvpn.lab.agents import AgentLab
from dmvpn.lab.topology import Lab, Site, hub_and_spokes

DELAY_MS = 10.0
INTERVAL_S = 0.01
_REPLY = re.compile(r"^\[(?P<stamp>\d+\.\d+)\].*icmp_seq=(?P<seq>\d+).*time=(?P<rtt>[\d.]+) ms")


def lower_bound_ms(ipsec: bool) -> float:
    """pod->hub, TI hub->spoke, request spoke->hub->spoke, reply spoke->spoke: 5 one-way hops; IKE_SA_INIT +
    IKE_AUTH (2 round trips) overlap nothing before the reply can leave the responder: +4 hops."""
    hops = 5 + (4 if ipsec else 0)
    return hops * DELAY_MS


def shortcut_time_ms(src: Site, dst: Site, count: int = 150) -> tuple[float | None, int, int]:
    assert src.pod is not None
    argv = src.pod.argv("ping", "-D", "-n", "-i", str(INTERVAL_S), "-c", str(count), "-W", "2", str(dst.pod_ip))
    started = time.time()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False).stdout
    first_direct: float | None = None
    received = 0
    for line in out.splitlines():
        match = _REPLY.match(line)
        if not match:
            continue
        received += 1
        rtt = float(match["rtt"])
        if rtt < 3 * DELAY_MS and first_direct is None:
            first_direct = float(match["stamp"]) - rtt / 1000
    return (None if first_direct is None else (first_direct - started) * 1000), count, received


def run(ipsec: bool) -> dict[str, float | None]:
    with Lab(prefix="bench") as lab:
        hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
        agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=ipsec)
        agents.start_all()
        agents.wait_registered()
        time.sleep(1.0)
        measured, sent, received = shortcut_time_ms(spoke1, spoke2)
        agent_proc = psutil.Process(agents.agents["hub"].pid)
        cpu_before = sum(agent_proc.cpu_times()[:2])
        time.sleep(10.0)
        idle_cpu = (sum(agent_proc.cpu_times()[:2]) - cpu_before) / 10.0 * 100
        rss_mb = agent_proc.memory_info().rss / 2**20
        return {"shortcut_ms": measured, "lost": float(sent - received), "rss_mb": rss_mb, "idle_cpu_pct": idle_cpu}


def main() -> int:
    for ipsec in (False, True):
        label = "GRE+ESP (on-demand SA)" if ipsec else "plain GRE"
        result = run(ipsec)
        bound = lower_bound_ms(ipsec)
        measured = result["shortcut_ms"]
        if measured is None:
            print(f"{label}: no packet took the direct path")
            continue
        print(
            f"{label}: shortcut {measured:.0f} ms, lower bound {bound:.0f} ms, ratio {measured / bound:.2f}; "
            f"{result['lost']:.0f} pings lost; hub agent RSS {result['rss_mb']:.1f} MiB, "
            f"idle CPU {result['idle_cpu_pct']:.2f} %"
        )
    print("reference (shared/notes/lab.md, same lab, FRR 8.4 + strongSwan): plain GRE ~109 ms, GRE+ESP ~267 ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
