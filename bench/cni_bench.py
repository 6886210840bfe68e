"""ADD+DEL latency of the dmvpn CNI plugin against bridge + host-local invoked directly.

Both run in the same process, interleaved pod by pod, with the same bridge/host-local config
(the one dmvpn generates), so the ratio shows what dmvpn costs on top: a Python start-up, reading
the node state, recording the attachment, converting the result. Goal: <= 1.5x. A third variant,
"py-floor", only starts python3 the way our launcher does and execs bridge: the part of the
overhead no Python plugin can avoid, to tell interpreter start-up from our own work. A fourth,
"py-spawn", starts python3 the same way but spawns bridge, waits for it and relays its answer, as
any plugin must that does work after its delegate (dmvpn removes the record after DEL, converts
the result and rolls a failed ADD back): the floor for a delegating Python plugin. CPU time
(plugin plus everything it ran) is reported too, as wall time suffers most on a busy host.

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
import resource
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
    parser.add_argument("--python", default="/usr/bin/python3", help="the node's python3 (default /usr/bin/python3)")
    parser.add_argument(
        "--baseline-cni",
        default=None,
        help="another cni/ directory (e.g. from `git archive`) timed in the same run as 'dmvpn-base', to see "
        "what a change gained",
    )
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
        if args.baseline_cni:
            command += ["--baseline-cni", str(Path(args.baseline_cni).resolve())]
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
        "hairpinMode": True,  # dmvpn's default, passed on to bridge
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.244.251.0/24"}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(workdir / "ipam"),
        },
    }
    env = {"PATH": NODE_PATH, "CNI_PATH": f"{REFERENCE_PLUGINS}:{PLUGIN_DIR}", "CNI_IFNAME": "eth0"}
    floor_conf = {**bridge_conf, "name": "floorbench", "bridge": "floorb-br0"}
    floor_conf["ipam"] = {**bridge_conf["ipam"], "ranges": [[{"subnet": "10.244.252.0/24"}]]}
    spawn_conf = {**bridge_conf, "name": "spawnbench", "bridge": "spawnb-br0"}
    spawn_conf["ipam"] = {**bridge_conf["ipam"], "ranges": [[{"subnet": "10.244.254.0/24"}]]}
    plugins = {
        "dmvpn": (install_plugin(workdir, args.python), ours_conf),
        "bridge": (str(REFERENCE_PLUGINS / "bridge"), bridge_conf),
        "py-floor": (write_python_floor(workdir, args.python), floor_conf),
        "py-spawn": (write_python_spawner(workdir, args.python), spawn_conf),
    }
    if args.baseline_cni:
        base_conf = {**ours_conf, "name": "dmvpnbase", "bridge": "dmvpnbase-br0", "dataDir": str(workdir / "base")}
        base_state = workdir / "base-node-state.json"
        base_state.write_text(json.dumps({**state, "podCIDRs": ["10.244.253.0/24"]}))
        base_conf["nodeStateFile"] = str(base_state)
        plugins["dmvpn-base"] = (install_plugin(workdir, args.python, Path(args.baseline_cni), "base-bin"), base_conf)
    samples: dict[str, dict[str, list[Sample]]] = {name: {"ADD": [], "DEL": []} for name in plugins}
    deadline = time.monotonic() + DEADLINE_SECONDS
    for index in range(args.pods + WARMUP_PODS):
        if time.monotonic() > deadline:
            print(f"deadline of {DEADLINE_SECONDS:.0f}s reached after {index} pods", file=sys.stderr)
            break
        netns = f"/run/netns/{tag}-p{index}"
        # Rotate who goes first so no variant systematically gets the warmer caches.
        names = list(plugins)
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            executable, conf = plugins[name]
            pod_env = {**env, "CNI_CONTAINERID": f"{name}-{index}", "CNI_NETNS": netns}
            for command in ("ADD", "DEL"):
                sample = invoke(executable, command, conf, pod_env)
                if index >= WARMUP_PODS:
                    samples[name][command].append(sample)
    report(samples)
    return 0


def install_plugin(workdir: Path, python: str, plugin_dir: Path = PLUGIN_DIR, bin_name: str = "bin") -> str:
    """Install launcher + package into a bin dir as the chart does, the launcher pointed at ``python``."""
    bin_dir = workdir / bin_name
    shutil.copytree(plugin_dir / "dmvpn_cni", bin_dir / "dmvpn_cni", ignore=shutil.ignore_patterns("__pycache__"))
    source = (plugin_dir / "dmvpn").read_text().splitlines(keepends=True)
    launcher = bin_dir / "dmvpn"
    launcher.write_text(f"#!{python} -IS\n" + "".join(source[1:]))
    launcher.chmod(0o755)
    return str(launcher)


def write_python_floor(workdir: Path, python: str) -> str:
    """The least any Python plugin costs: start the interpreter as our launcher does, exec bridge."""
    floor = workdir / "python-floor"
    floor.write_text(f"#!{python} -IS\nimport posix\nposix.execv({str(REFERENCE_PLUGINS / 'bridge')!r}, ['bridge'])\n")
    floor.chmod(0o755)
    return str(floor)


def write_python_spawner(workdir: Path, python: str) -> str:
    """The least a Python plugin costs that stays alive around its delegate: spawn bridge, relay its answer.

    Started like our launcher, and spawning the way dmvpn does (posix_spawn, config on a pipe).
    The config is written in one go: it is far below a pipe's capacity.
    """
    spawner = workdir / "python-spawn"
    bridge = str(REFERENCE_PLUGINS / "bridge")
    spawner.write_text(
        f"#!{python} -IS\n"
        "import posix, sys\n"
        "data = sys.stdin.buffer.read()\n"
        "in_read, in_write = posix.pipe()\n"
        "out_read, out_write = posix.pipe()\n"
        "actions = [(posix.POSIX_SPAWN_DUP2, in_read, 0), (posix.POSIX_SPAWN_DUP2, out_write, 1)]\n"
        f"pid = posix.posix_spawn({bridge!r}, ['bridge'], posix.environ, file_actions=actions, setsigdef=(13,))\n"
        "posix.close(in_read)\n"
        "posix.close(out_write)\n"
        "posix.write(in_write, data)\n"
        "posix.close(in_write)\n"
        "chunks = []\n"
        "while chunk := posix.read(out_read, 65536):\n"
        "    chunks.append(chunk)\n"
        "status = posix.waitstatus_to_exitcode(posix.waitpid(pid, 0)[1])\n"
        "sys.stdout.buffer.write(b''.join(chunks))\n"
        "sys.stdout.flush()\n"
        "posix._exit(status)\n"
    )
    spawner.chmod(0o755)
    return str(spawner)


class Sample:
    """Wall time, and CPU time of the plugin and everything it ran (less sensitive to a busy host)."""

    def __init__(self, wall: float, cpu: float) -> None:
        self.wall = wall
        self.cpu = cpu


def invoke(executable: str, command: str, conf: dict[str, object], env: dict[str, str]) -> Sample:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
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
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{executable} {command} failed: {done.stdout.decode()} {done.stderr.decode()}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(elapsed, cpu)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def report(samples: dict[str, dict[str, list[Sample]]]) -> None:
    wall = {name: {cmd: [s.wall for s in got] for cmd, got in by.items()} for name, by in samples.items()}
    cpu = {name: [a.cpu + d.cpu for a, d in zip(by["ADD"], by["DEL"], strict=True)] for name, by in samples.items()}
    totals = {name: [a + d for a, d in zip(by["ADD"], by["DEL"], strict=True)] for name, by in wall.items()}
    print(f"pods measured: {len(totals['dmvpn'])} (after {WARMUP_PODS} warm-up pods), load {os.getloadavg()[0]:.1f}")
    print(f"{'':24}{'p50 ms':>9}{'p95 ms':>9}{'mean ms':>9}{'min ms':>9}")
    for name, by_command in wall.items():
        rows = (("ADD", by_command["ADD"]), ("DEL", by_command["DEL"]), ("ADD+DEL", totals[name]))
        for label, values in (*rows, ("ADD+DEL cpu", cpu[name])):
            print(
                f"{name + ' ' + label:24}{percentile(values, 0.5) * 1000:9.1f}"
                f"{percentile(values, 0.95) * 1000:9.1f}{statistics.fmean(values) * 1000:9.1f}"
                f"{min(values) * 1000:9.1f}"
            )
    for label, fraction in (("p50", 0.5), ("p95", 0.95)):
        ratio = percentile(totals["dmvpn"], fraction) / percentile(totals["bridge"], fraction)
        print(f"ratio dmvpn/bridge ADD+DEL {label}: {ratio:.2f}x (goal <= 1.5x)")
    # On a shared host the minimum is the run least disturbed by other load; CPU time hardly moves.
    print(f"ratio dmvpn/bridge ADD+DEL min: {min(totals['dmvpn']) / min(totals['bridge']):.2f}x")
    print(f"ratio dmvpn/bridge ADD+DEL cpu p50: {percentile(cpu['dmvpn'], 0.5) / percentile(cpu['bridge'], 0.5):.2f}x")
    floor = percentile(totals["py-floor"], 0.5) / percentile(totals["bridge"], 0.5)
    floor_min = min(totals["py-floor"]) / min(totals["bridge"])
    print(f"  for scale: bare python3 start + bridge (py-floor)/bridge: p50 {floor:.2f}x, min {floor_min:.2f}x")
    spawn = percentile(totals["py-spawn"], 0.5) / percentile(totals["bridge"], 0.5)
    spawn_min = min(totals["py-spawn"]) / min(totals["bridge"])
    print(f"  python3 start + spawn bridge and relay (py-spawn)/bridge: p50 {spawn:.2f}x, min {spawn_min:.2f}x")
    own = (percentile(cpu["dmvpn"], 0.5) - percentile(cpu["py-floor"], 0.5)) * 1000 / 2
    print(f"  dmvpn's own CPU beyond interpreter start, per call (p50): {own:.1f} ms")
    staying = (percentile(cpu["py-spawn"], 0.5) - percentile(cpu["py-floor"], 0.5)) * 1000 / 2
    print(f"    of which spawning the delegate instead of exec'ing it (py-spawn - py-floor): {staying:.1f} ms")
    if "dmvpn-base" in totals:
        base = percentile(totals["dmvpn-base"], 0.5) / percentile(totals["bridge"], 0.5)
        base_cpu = percentile(cpu["dmvpn-base"], 0.5) / percentile(cpu["bridge"], 0.5)
        print(f"  baseline plugin (dmvpn-base)/bridge: p50 {base:.2f}x, cpu p50 {base_cpu:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
