"""ADD+DEL latency of the dmvpn CNI plugin against bridge + host-local invoked directly.

Both run in the same process, interleaved pod by pod, with the same bridge/host-local config
(the one dmvpn generates), so the ratio shows what dmvpn's own work costs: a Python start-up,
reading the node state, recording the attachment, converting the result. Goal: <= 1.5x.

Needs root and the reference plugins (Debian ``containernetworking-plugins``). Every network
object lives in namespaces made here: a "node" namespace in which the plugins run (the bridge
appears there) and one namespace per pod, created before timing starts. Bounded in pod count and
wall time, and cleans up after itself.

    sudo .venv/bin/python bench/cni_bench.py [--pods 200] [--cni-version 1.0.0]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLUGIN_DIR = REPO / "cni"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
# What a node's runtime gives plugins: the system python3, not a developer's shims.
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEADLINE_SECONDS = 300.0
WARMUP_PODS = 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=200, help="pods to add and delete (default 200)")
    parser.add_argument("--cni-version", default="1.0.0", help="cniVersion of both configs (default 1.0.0)")
    parser.add_argument("--python", default="", help="interpreter for the plugin (DMVPN_CNI_PYTHON)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not 1 <= args.pods <= 1000:
        parser.error("--pods must be between 1 and 1000")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces, bridges, veths)")
    if not (REFERENCE_PLUGINS / "bridge").exists():
        parser.error(f"{REFERENCE_PLUGINS}/bridge missing: apt-get install containernetworking-plugins")
    return run_inner(args) if args.inner else run_outer(args)


def run_outer(args: argparse.Namespace) -> int:
    """Make the namespaces, then run the timed part inside the node namespace."""
    tag = f"dmvpnb{os.getpid()}"
    node = f"{tag}-node"
    pods = [f"{tag}-p{i}" for i in range(args.pods + WARMUP_PODS)]
    workdir = Path(tempfile.mkdtemp(prefix="dmvpn-cni-bench-"))
    made: list[str] = []
    try:
        for name in [node, *pods]:
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
        command = [sys.executable, __file__, "--inner", "--pods", str(args.pods)]
        command += ["--cni-version", args.cni_version, "--python", args.python]
        env = {**os.environ, "DMVPN_BENCH_TAG": tag, "DMVPN_BENCH_WORKDIR": str(workdir)}
        done = subprocess.run(["ip", "netns", "exec", node, *command], env=env, check=False)
        return done.returncode
    finally:
        for name in reversed(made):
            subprocess.run(["ip", "netns", "del", name], check=False)
        shutil.rmtree(workdir, ignore_errors=True)


def run_inner(args: argparse.Namespace) -> int:
    tag = os.environ["DMVPN_BENCH_TAG"]
    workdir = Path(os.environ["DMVPN_BENCH_WORKDIR"])
    state_file = workdir / "node-state.json"
    state = {"version": 1, "node": "bench", "podCIDRs": ["10.244.250.0/24"], "mtu": 1362}
    state_file.write_text(json.dumps(state))
    ours_conf = {
        "cniVersion": args.cni_version,
        "name": "dmvpnbench",
        "type": "dmvpn",
        "bridge": "dmvpnb-br0",
        "nodeStateFile": str(state_file),
        "dataDir": str(workdir / "dmvpn"),
        "ipamDataDir": str(workdir / "ipam"),
    }
    # Exactly what dmvpn hands to bridge, under another name and bridge so the two never collide.
    bridge_conf = {
        "cniVersion": args.cni_version,
        "name": "bridgebench",
        "type": "bridge",
        "bridge": "bridgeb-br0",
        "isGateway": True,
        "ipMasq": False,
        "mtu": 1362,
        "hairpinMode": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.251.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(workdir / "ipam"),
        },
    }
    env = {"PATH": NODE_PATH, "CNI_PATH": f"{REFERENCE_PLUGINS}:{PLUGIN_DIR}", "CNI_IFNAME": "eth0"}
    if args.python:
        env["DMVPN_CNI_PYTHON"] = args.python
    plugins = {
        "dmvpn": (str(PLUGIN_DIR / "dmvpn"), ours_conf),
        "bridge": (str(REFERENCE_PLUGINS / "bridge"), bridge_conf),
    }
    timings: dict[str, dict[str, list[float]]] = {name: {"ADD": [], "DEL": []} for name in plugins}
    deadline = time.monotonic() + DEADLINE_SECONDS
    for index in range(args.pods + WARMUP_PODS):
        if time.monotonic() > deadline:
            print(f"deadline of {DEADLINE_SECONDS:.0f}s reached after {index} pods", file=sys.stderr)
            break
        netns = f"/run/netns/{tag}-p{index}"
        # Alternate who goes first so neither side systematically gets the warmer caches.
        order = list(plugins) if index % 2 == 0 else list(reversed(plugins))
        for name in order:
            executable, conf = plugins[name]
            pod_env = {**env, "CNI_CONTAINERID": f"{name}-{index}", "CNI_NETNS": netns}
            for command in ("ADD", "DEL"):
                elapsed = invoke(executable, command, conf, pod_env)
                if index >= WARMUP_PODS:
                    timings[name][command].append(elapsed)
    report(timings)
    return 0


def invoke(executable: str, command: str, conf: dict[str, object], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(
        [executable],
        input=json.dumps(conf).encode(),
        env={**env, "CNI_COMMAND": command},
        capture_output=True,
        check=False,
        timeout=30,
    )
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{executable} {command} failed: {done.stdout.decode()} {done.stderr.decode()}")
    return elapsed


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(timings: dict[str, dict[str, list[float]]]) -> None:
    totals = {name: [a + d for a, d in zip(t["ADD"], t["DEL"], strict=True)] for name, t in timings.items()}
    pods = len(totals["dmvpn"])
    print(f"pods measured: {pods} (after {WARMUP_PODS} warm-up pods)")
    print(f"{'':18}{'p50 ms':>10}{'p95 ms':>10}{'mean ms':>10}")
    for name, by_command in timings.items():
        for label, values in (
            ("ADD", by_command["ADD"]),
            ("DEL", by_command["DEL"]),
            ("ADD+DEL", totals[name]),
        ):
            row = f"{name} {label}"
            print(
                f"{row:18}{percentile(values, 0.5) * 1000:10.1f}{percentile(values, 0.95) * 1000:10.1f}"
                f"{statistics.fmean(values) * 1000:10.1f}"
            )
    for label, fraction in (("p50", 0.5), ("p95", 0.95)):
        ratio = percentile(totals["dmvpn"], fraction) / percentile(totals["bridge"], fraction)
        print(f"ratio dmvpn/bridge ADD+DEL {label}: {ratio:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    sys.exit(main())
