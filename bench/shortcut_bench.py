"""Shortcut time (issue 4): our agents against the lower bound and against FRR nhrpd 8.4 + strongSwan, one run.

Pod-to-pod pings (every 10 ms) across two spokes of a hub-and-spokes lab with 10 ms one-way underlay delay
per site, in four variants per round, each in a fresh lab (rounds interleave them so load changes on the
host hit all alike):

- ours, plain GRE: one real ``dmvpn-agent --standalone`` per site (hub + 2 spokes), IPsec disabled;
- FRR, plain GRE: FRR 8.4 nhrpd hub (``ip nhrp redirect``, the hairpin NFLOG rule with
  ``--nflog-threshold 1``) and FRR spokes (``ip nhrp shortcut``);
- ours, GRE+ESP: the same agents with IPsec required (a charon per site), the spoke-to-spoke SA on demand;
- FRR, GRE+ESP: the same FRR sites with a charon each holding a wildcard GRE trap policy loaded over VICI
  (shared/notes/lab.md: nhrpd's own IPsec control needs a patched strongSwan), ``xfrm_larval_drop=0``.

Shortcut time = send time of the first echo request that did not cross the hub (a counting iptables rule
in the hub's FORWARD chain says how many did: requests leave in order and the path switches once) minus the
send time of the first request (``ping -D``: reply stamp minus RTT). Also shown: the first ping whose round
trip was direct both ways (RTT < 3 x delay), pings lost, and our agents' events (``show events``);
``--ike-steps`` adds the spokes' charon log lines (IKE packets sent and received, SAs established, acquires)
and our agents' IPsec log lines, from their ms stamps, for both implementations. The pings
go from spoke1 (192.0.2.11) to spoke2 (.12); ``--from-higher`` sends them the other way (with IPsec the
lower NBMA address initiates the spoke-to-spoke SA, so the two directions take different paths). Lower
bounds from the delays (one hop = one site's egress delay = 10 ms), for a Resolution Request that the
destination answers (FRR, and an NHS that passes requests on):

- forward, plain: pod->hub 1, Traffic Indication hub->spoke 1, Resolution Request spoke->hub->spoke 2,
  Reply spoke->spoke 1: 5 hops. GRE+ESP: the responder cannot send its Reply before the spoke-to-spoke SA
  (IKE_SA_INIT + IKE_AUTH, 2 round trips, started when the Request arrives): +4 hops = 9.
- both ways direct, plain: the reverse shortcut needs the first reply to hairpin (2 hops after the first
  request reached the far spoke at 2 hops), a Traffic Indication (1), a Request via the hub (2) and a Reply
  (1): ready at 7 hops, so a request sent at 6 hops is the first direct both ways. GRE+ESP: the reverse
  Reply also waits for the SA (up at 8 hops at the far spoke), so the forward bound (9) dominates.

Our hub puts its answer (the destination's registration) in the Traffic Indication itself (docs/agent.md):
the spoke learns the other's address at 2 hops instead of 4 or 5, so our own bounds are lower (plain:
the first direct request at 2 hops, direct both ways at 4: the first reply hairpins at 3, its indication
arrives at 4; with IPsec the lower address initiates at 2 hops and the SA is up 4 hops later: 6). The
bounds printed are those of the destination answering, the same for both.

    .venv/bin/python -m dmvpn.lab.guest $PWD/.venv/bin/python bench/shortcut_bench.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dmvpn.lab.agents import PSK, AgentLab
from dmvpn.lab.charon import load_gre_trap_policy, start_charon
from dmvpn.lab.frr import FrrNhrp, nhrp_cache, start_frr_nhrpd
from dmvpn.lab.topology import TUNNEL_NET, Lab, LabError, Site, add_static_mgre, hub_and_spokes, ping

DELAY_MS = 10.0
INTERVAL_S = 0.01
BUDGET_S = 840.0  # bounded: the whole bench stays under ~15 minutes (a round is ~4 fresh labs)
TIMELINE_MS = 30_000.0  # the events shown: a loaded guest sends the 600 pings over up to ~20 s
PING_COUNT = 600  # 6 s of pings: the emulated guest needs seconds for IKE, real hardware far less
SUMMARY = "10.1.0.0/16"
GRE_KEY = 42
_REPLY = re.compile(r"^\[(?P<stamp>\d+\.\d+)\].*icmp_seq=(?P<seq>\d+).*time=(?P<rtt>[\d.]+) ms")
_SHOWN = (
    "traffic-indication",
    "resolution-reply",
    "ike",
    "sa-up",
    "sa-ready",
    "route-added",
    "binding",
    "registration",
)


def lower_bounds_ms(ipsec: bool) -> tuple[float, float]:
    """(first request direct, first round trip direct) implied by the delays (see the module docstring)."""
    return (9 if ipsec else 5) * DELAY_MS, (9 if ipsec else 6) * DELAY_MS


@dataclass
class Round:
    impl: str
    ipsec: bool
    shortcut_ms: float | None = None  # first echo request that did not cross the hub
    both_ms: float | None = None  # first ping direct both ways
    sent: int = 0
    received: int = 0
    via_hub: int = 0
    setup_s: float = 0.0
    error: str | None = None
    timeline: str = ""

    @property
    def lost(self) -> int:
        return self.sent - self.received


# --- the measurement (the same for both implementations) ------------------------------------------------


class HubCounter:
    """An iptables rule (count only, no target) first in the hub's FORWARD chain: how many echo requests from
    the source pod to the destination pod crossed the hub. Exact (a capture under an emulated CPU drops
    packets), and the same for both implementations (the agent's own rules live in nftables tables)."""

    def __init__(self, hub: Site, src: Site, dst: Site) -> None:
        self.hub = hub
        self.rule = ["FORWARD", "-s", str(src.pod_ip), "-d", str(dst.pod_ip), "-p", "icmp",
                     "--icmp-type", "echo-request", "-m", "comment", "--comment", "bench-via-hub"]  # fmt: skip
        hub.ns.run("iptables", "-I", *self.rule[:1], "1", *self.rule[1:])

    def packets(self) -> int:
        for line in self.hub.ns.run("iptables", "-nvxL", "FORWARD").splitlines():
            if "bench-via-hub" in line:
                return int(line.split()[0])
        raise LabError(f"the counting rule is gone from {self.hub.ns.name}'s FORWARD chain")


def measure(lab: Lab, hub: Site, dev: str, src: Site, dst: Site, result: Round) -> float:
    """Pings src pod -> dst pod while the shortcut forms; fills result; returns t0 (wall clock, s)."""
    assert src.pod is not None and dst.pod is not None
    for pod, site in ((src.pod, src), (dst.pod, dst)):  # ARP on both LANs first: the same for both sides
        ping(pod, str(site.lan_gw), count=1)
    counter = HubCounter(hub, src, dst)
    argv = src.pod.argv("ping", "-D", "-n", "-i", str(INTERVAL_S), "-c", str(PING_COUNT), "-W", "2", str(dst.pod_ip))
    out = subprocess.run(argv, capture_output=True, text=True, timeout=PING_COUNT * INTERVAL_S * 10 + 60,
                         check=False).stdout  # fmt: skip
    time.sleep(1.0)  # requests still in flight via the hub
    via_hub = counter.packets()
    sends: dict[int, float] = {}
    rtts: dict[int, float] = {}
    for line in out.splitlines():
        match = _REPLY.match(line)
        if match:
            seq, rtt = int(match["seq"]), float(match["rtt"])
            sends[seq], rtts[seq] = float(match["stamp"]) - rtt / 1000, rtt
        if "packets transmitted" in line:
            result.sent = int(line.split()[0])
    result.received = len(sends)
    result.via_hub = via_hub
    if not sends:
        raise LabError(f"no ping reply at all:\n{out[-1000:]}")
    first = min(sends)
    t0 = sends[first] - (first - 1) * INTERVAL_S  # the first request's send time (seq 1 is normally received)
    # Requests leave in order and the path switches once: seq 1..N crossed the hub, N+1 on went direct.
    direct = sorted(seq for seq in sends if seq > via_hub)
    if direct:
        result.shortcut_ms = (sends[direct[0]] - t0) * 1000
    both = sorted(seq for seq in sends if rtts[seq] < 3 * DELAY_MS)
    if both:
        result.both_ms = (sends[both[0]] - t0) * 1000
    return t0


# --- ours: one agent per site ---------------------------------------------------------------------------


def timeline(agents: AgentLab, t0: float) -> list[tuple[float, str]]:
    """The agents' events from the first ping on, ms after it (`show events`)."""
    rows: list[tuple[float, str]] = []
    for name, agent in agents.agents.items():
        events: list[dict[str, Any]] = agent.request("show events")
        for event in events:
            at = (float(event["time"]) - t0) * 1000
            if -100 <= at <= TIMELINE_MS and event["kind"].startswith(_SHOWN):
                rows.append((at, f"{name:6} {event['kind']}: {event['text']}"))
    return rows


_LOG_LINE = re.compile(r"^(?P<clock>\d\d:\d\d:\d\d\.\d{3}) (?P<text>.*)$")  # charon's and the agent's logs
_LOG_SHOWN = {
    "charon.log": ("initiating", "sending packet", "received packet", "established", "acquire", "vici"),
    "agent.log": ("IPsec", "initiating it"),
}


def log_steps(lab: Lab, sites: list[Site], t0: float, logs: tuple[str, ...]) -> list[tuple[float, str]]:
    """The spokes' IKE steps from their logs (ms stamps in both), from the first ping on, ms after it."""
    day = datetime.datetime.fromtimestamp(t0).date()
    rows: list[tuple[float, str]] = []
    for site in sites:
        for name in logs:
            log = lab.site_rundir(site) / name
            for line in log.read_text(errors="replace").splitlines() if log.exists() else []:
                match = _LOG_LINE.match(line)
                if not match or not any(word in match["text"] for word in _LOG_SHOWN[name]):
                    continue
                clock = datetime.datetime.strptime(match["clock"], "%H:%M:%S.%f").time()
                at = (datetime.datetime.combine(day, clock).timestamp() - t0) * 1000
                if -100 <= at <= TIMELINE_MS:
                    rows.append((at, f"{site.name:6} {name.split('.')[0]}: {match['text'][:110]}"))
    return rows


def render_rows(rows: list[tuple[float, str]]) -> str:
    return "\n".join(f"      {at:+8.1f} ms  {text}" for at, text in sorted(rows))


def ends(spoke1: Site, spoke2: Site, from_higher: bool) -> tuple[Site, Site]:
    """(source, destination) of the pings: from spoke1 (the lower NBMA address) unless ``from_higher``."""
    return (spoke2, spoke1) if from_higher else (spoke1, spoke2)


def run_ours(ipsec: bool, index: int, from_higher: bool = False, ike_steps: bool = False) -> Round:
    result = Round("ours", ipsec)
    started = time.monotonic()
    with Lab(prefix=f"sc{os.getpid() % 1000}o{index}") as lab:
        hub, spoke1, spoke2 = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
        agents = AgentLab(lab, [hub, spoke1, spoke2], ipsec=ipsec, gre_key=GRE_KEY)
        agents.start_all()
        agents.wait_registered(timeout_s=120)
        time.sleep(1.0)
        result.setup_s = time.monotonic() - started
        t0 = measure(lab, hub, "dmvpn0", *ends(spoke1, spoke2, from_higher), result)
        steps = log_steps(lab, [spoke1, spoke2], t0, ("charon.log", "agent.log")) if ipsec and ike_steps else []
        result.timeline = render_rows(timeline(agents, t0) + steps)
    return result


# --- FRR nhrpd 8.4 (+ strongSwan trap policies) ---------------------------------------------------------


def frr_lab(lab: Lab, ipsec: bool, unique: str | None = None) -> tuple[list[Site], Path]:
    hub, spoke1, spoke2 = sites = hub_and_spokes(lab, spokes=2, delay_ms=DELAY_MS)
    for site in sites:
        add_static_mgre(site, key=GRE_KEY)
    # FRR's hub routes by the kernel table: spokes' tunnel addresses on gre1 and their LANs via them (FRR 8.4
    # keeps no site-prefix CIE from a registration); spokes send the summary and the tunnel subnet via the hub.
    hub.ns.run("ip", "route", "add", str(TUNNEL_NET), "dev", "gre1")
    for spoke in (spoke1, spoke2):
        hub.ns.run("ip", "route", "add", str(spoke.lan), "via", str(spoke.tunnel_ip), "dev", "gre1", "onlink")
        for prefix in (SUMMARY, str(TUNNEL_NET)):
            spoke.ns.run("ip", "route", "add", prefix, "via", str(hub.tunnel_ip), "dev", "gre1", "onlink")
    if ipsec:
        for site in sites:
            site.ns.run("sysctl", "-qw", "net.core.xfrm_larval_drop=0")
            load_gre_trap_policy(start_charon(lab, site), site, PSK, unique=unique)
    hub_vty = start_frr_nhrpd(lab, hub, FrrNhrp(role="hub"))
    for spoke in (spoke1, spoke2):
        start_frr_nhrpd(lab, spoke, FrrNhrp(role="spoke", nhs_nbma=(str(hub.nbma),)))
    return sites, hub_vty


def wait_frr_registered(hub: Site, vty: Path, spokes: list[Site], timeout_s: float = 120.0) -> None:
    wanted = {str(s.tunnel_ip): ("dynamic", str(s.nbma)) for s in spokes}
    cache: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        cache = nhrp_cache(hub, vty)
        if all(cache.get(k) == v for k, v in wanted.items()):
            return
        time.sleep(0.5)
    raise LabError(f"FRR spokes not registered within {timeout_s} s: {cache}")


def ipsec_report(lab: Lab, sites: list[Site]) -> str:
    """What the spokes' kernels and charons did with the spoke-to-spoke SA (printed when pings were lost)."""
    lines: list[str] = []
    for site in sites:
        stats = [" ".join(line.split()) for line in site.ns.run("cat", "/proc/net/xfrm_stat").splitlines()]
        lines.append(f"{site.name} xfrm_stat non-zero: {[s for s in stats if not s.endswith(' 0')]}")
        for block in re.split(r"^src ", site.ns.run("ip", "-s", "xfrm", "state"), flags=re.MULTILINE)[1:]:
            words = block.split()
            spi = re.search(r"spi (0x[0-9a-f]+)", block)
            reqid = re.search(r"reqid (\d+)", block)
            current = re.search(r"(\d+)\(bytes\), (\d+)\(packets\)", block)
            lines.append(f"{site.name} SA {words[0]} -> {words[2]} spi {spi[1] if spi else '?'} reqid "
                         f"{reqid[1] if reqid else '?'}: {current[2] if current else '?'} packets")  # fmt: skip
        for block in re.split(r"^src ", site.ns.run("ip", "xfrm", "policy"), flags=re.MULTILINE)[1:]:
            words = block.split()
            reqid = re.search(r"reqid (\d+)", block)
            if "gre" in words and reqid:
                lines.append(f"{site.name} policy {words[0]} -> {words[2]} {' '.join(words[5:7])} reqid {reqid[1]}")
        log = lab.site_rundir(site) / "charon.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        wanted = ("acquire", "initiating", "establishing", "established", "delet", "closing", "unable", "fail")
        lines += [f"{site.name} charon: {line}" for line in text if any(w in line for w in wanted)][-16:]
    return "\n".join(f"      {line}" for line in lines)


def run_frr(
    ipsec: bool, index: int, unique: str | None = None, from_higher: bool = False, ike_steps: bool = False
) -> Round:
    result = Round("frr", ipsec)
    started = time.monotonic()
    with Lab(prefix=f"sc{os.getpid() % 1000}f{index}") as lab:
        (hub, spoke1, spoke2), hub_vty = frr_lab(lab, ipsec, unique)
        wait_frr_registered(hub, hub_vty, [spoke1, spoke2])
        time.sleep(1.0)
        result.setup_s = time.monotonic() - started
        t0 = measure(lab, hub, "gre1", *ends(spoke1, spoke2, from_higher), result)
        if ipsec and result.lost:
            result.timeline = ipsec_report(lab, [spoke1, spoke2])
        elif ipsec and ike_steps:
            result.timeline = render_rows(log_steps(lab, [spoke1, spoke2], t0, ("charon.log",)))
    return result


# --- the report -----------------------------------------------------------------------------------------


def fmt(ms: float | None) -> str:
    return "   none" if ms is None else f"{ms:7.1f}"


def median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per variant (1-5, default 3)")
    names = ("ours", "frr", "gre", "esp", "ours-gre", "ours-esp", "frr-gre", "frr-esp")
    parser.add_argument("--only", default=None, choices=names, help="an implementation, encapsulation or variant")
    parser.add_argument("--frr-unique", default=None, help="swanctl 'unique' of the FRR sites' trap connection")
    parser.add_argument("--timeline", action="store_true", help="print our agents' events for every round")
    parser.add_argument("--budget", type=float, default=BUDGET_S, help="no new round after this many seconds")
    parser.add_argument("--ike-steps", action="store_true", help="add the spokes' charon IKE steps to the timelines")
    parser.add_argument("--from-higher", action="store_true", help="ping from spoke2 (the higher NBMA) to spoke1")
    args = parser.parse_args()
    if not 1 <= args.rounds <= 5:
        parser.error("--rounds 1-5")
    kinds = {False: "gre", True: "esp"}
    variants = [(impl, ipsec) for ipsec in (False, True) for impl in ("ours", "frr")
                if args.only in (None, impl, kinds[ipsec], f"{impl}-{kinds[ipsec]}")]  # fmt: skip
    print(f"== shortcut time: pod-to-pod across two spokes, {DELAY_MS:.0f} ms one-way underlay per site, "
          f"pings every {INTERVAL_S * 1000:.0f} ms, {args.rounds} rounds x {len(variants)} variants, "
          f"from {'spoke2 (higher NBMA)' if args.from_higher else 'spoke1 (lower NBMA)'} ==",
          flush=True)  # fmt: skip
    results: list[Round] = []
    if "ours" in {impl for impl, _ in variants}:
        started = time.monotonic()
        importlib.import_module("dmvpn.agent.main")  # what every forked agent runs: once, outside the budget
        print(f"  (imported the agent in {time.monotonic() - started:.0f} s)", flush=True)
    bench_started = time.monotonic()
    done = 0
    for index in range(args.rounds):
        elapsed = time.monotonic() - bench_started
        if index and elapsed / index * (index + 1) > args.budget:  # the next round would end past the budget
            print(f"  (stopping after {index} rounds: {elapsed:.0f} s used of a {args.budget:.0f} s budget)")
            break
        done += 1
        for impl, ipsec in variants:
            try:
                if impl == "ours":
                    result = run_ours(ipsec, index, args.from_higher, args.ike_steps)
                else:
                    result = run_frr(ipsec, index, args.frr_unique, args.from_higher, args.ike_steps)
            except (LabError, OSError, subprocess.SubprocessError, ValueError) as error:
                result = Round(impl, ipsec, error=str(error)[-1500:])
            results.append(result)
            label = f"{impl:4} {'GRE+ESP' if ipsec else 'GRE    '}"
            if result.error:
                print(f"  round {index + 1} {label}: FAILED: {result.error}", flush=True)
                continue
            print(f"  round {index + 1} {label}: first direct request {fmt(result.shortcut_ms)} ms, direct both ways "
                  f"{fmt(result.both_ms)} ms, {result.via_hub:3d} requests via the hub, lost {result.lost}/"
                  f"{result.sent} (set-up {result.setup_s:.0f} s)", flush=True)  # fmt: skip
            if result.timeline and (args.timeline or impl == "frr" or index == 0):
                print(result.timeline, flush=True)
    print(f"== summary (medians of {done} rounds; bench took {time.monotonic() - bench_started:.0f} s) ==")
    for ipsec in (False, True):
        name = "GRE+ESP, on-demand spoke-to-spoke SA" if ipsec else "plain GRE"
        bound, bound_both = lower_bounds_ms(ipsec)
        rows = {impl: [r for r in results if r.impl == impl and r.ipsec == ipsec and not r.error]
                for impl in ("ours", "frr")}  # fmt: skip
        med = {impl: median([r.shortcut_ms for r in rows[impl]]) for impl in rows}
        both = {impl: median([r.both_ms for r in rows[impl]]) for impl in rows}
        lost = {impl: [r.lost for r in rows[impl]] for impl in rows}
        failed = {impl: sum(1 for r in results if r.impl == impl and r.ipsec == ipsec and r.error) for impl in rows}
        ran = [impl for impl, kind in variants if kind == ipsec]
        if not ran:
            continue
        print(f"{name}:")
        for impl in ran:
            print(f"  {impl:4}: first direct request {fmt(med[impl])} ms ({ratio(med[impl], bound)} the lower bound "
                  f"{bound:.0f} ms), direct both ways {fmt(both[impl])} ms ({ratio(both[impl], bound_both)} the bound "
                  f"{bound_both:.0f} ms), pings lost per round {lost[impl]}, failed rounds {failed[impl]}")  # fmt: skip
        if len(ran) == 2:
            print(f"  ours/FRR: first direct request {ratio(med['ours'], med['frr'])}, "
                  f"direct both ways {ratio(both['ours'], both['frr'])}", flush=True)  # fmt: skip
    return 1 if any(r.error for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
