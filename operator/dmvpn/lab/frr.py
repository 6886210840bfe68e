"""FRR nhrpd (Debian's frr 8.4) as a lab peer: the reference DMVPN implementation on Linux.

Each site runs its own zebra and nhrpd in its namespace with a private FRR pathspace (``-N``) under the
site's run directory, bind-mounted over /run exactly as for charon. Interop tests and benchmarks use it
as the hub or the spokes our agent talks to. Facts this relies on are in shared/notes/lab.md: the tunnel
must be bound to the underlay device (``add_static_mgre`` does ``dev eth0``), nhrpd answers a Resolution
Request only when its route to the requester goes via the tunnel, and a hub needs an NFLOG rule to send
Traffic Indications.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dmvpn.lab.topology import Lab, LabError, Site, sh

FRR_DIR = Path("/usr/lib/frr")
FRR10_ROOT = Path(os.environ.get("FRR10_ROOT", "/opt/kube-dmvpn/frr10")) / "root"
NFLOG_GROUP = 1


@dataclass(frozen=True)
class FrrNhrp:
    """Settings of one FRR nhrpd site (names follow ``interface gre1`` / ``ip nhrp ...`` commands)."""

    role: str  # "hub" or "spoke"
    network_id: int = 1
    holdtime: int = 300
    nhs_nbma: tuple[str, ...] = ()  # spokes: the hubs' NBMA addresses (``ip nhrp nhs dynamic nbma``)
    dev: str = "gre1"
    shortcut: bool = True
    debug: bool = False
    # 10 = Debian 13's FRR 10.3 (tools/fetch-frr10.sh), the first with ``ip nhrp authentication``.
    version: int = 8
    authentication: str | None = None


def nhrpd_config(site: Site, frr: FrrNhrp) -> str:
    lines = [f"hostname {site.name}", f"log file /run/frr/{site.name}/nhrpd.log"]
    if frr.debug:
        lines.append("debug nhrp all")
    if frr.role == "hub":
        lines.append(f"nhrp nflog-group {NFLOG_GROUP}")
    lines += [
        f"interface {frr.dev}",
        f" ip nhrp network-id {frr.network_id}",
        f" ip nhrp holdtime {frr.holdtime}",
        " ip nhrp registration no-unique",
        " tunnel source eth0",
    ]
    if frr.authentication is not None:
        lines.append(f" ip nhrp authentication {frr.authentication}")
    if frr.shortcut:
        lines.append(" ip nhrp shortcut")
    if frr.role == "hub":
        lines.append(" ip nhrp redirect")
    lines += [f" ip nhrp nhs dynamic nbma {nbma}" for nbma in frr.nhs_nbma]
    return "\n".join([*lines, "exit", ""])


def start_frr_nhrpd(lab: Lab, site: Site, frr: FrrNhrp, timeout_s: float = 30.0) -> Path:
    """Start zebra, then nhrpd, in the site's namespace; returns the vty socket directory for vtysh."""
    if frr.authentication is not None and frr.version < 10:
        raise LabError("ip nhrp authentication needs FRR 10 (FrrNhrp(version=10))")
    rundir = lab.site_rundir(site)
    pathspace = rundir / "frr" / site.name
    pathspace.mkdir(parents=True, exist_ok=True)
    shutil.chown(pathspace, "frr", "frr")
    (rundir / "zebra.conf").write_text(f"hostname {site.name}\nlog file /run/frr/{site.name}/zebra.log\n")
    (rundir / "nhrpd.conf").write_text(nhrpd_config(site, frr))
    if frr.role == "hub":
        _hairpin_nflog_rule(site, frr.dev)
    # FRR 10's zebra needs mgmtd first (without it: hundreds of errors a second).
    daemons = ("mgmtd", "zebra", "nhrpd") if frr.version >= 10 else ("zebra", "nhrpd")
    for daemon in daemons:
        config = "" if daemon == "mgmtd" else f"-f /run/{daemon}.conf"  # mgmtd takes no -f
        command = f"{frr_command(frr.version, daemon)} -N {site.name} {config} -P 0"
        script = f"mount --bind {rundir} /run && exec {command}"
        site.ns.popen("sh", "-c", script, log=rundir / f"{daemon}.stdout")
        _wait_for(pathspace / f"{daemon}.vty", timeout_s, rundir / f"{daemon}.stdout")
    return pathspace


def _hairpin_nflog_rule(site: Site, dev: str) -> None:
    # FRR's documented rule plus --nflog-threshold 1: without it the kernel batches NFLOG for ~1 s.
    site.ns.run(
        "iptables", "-A", "FORWARD", "-i", dev, "-o", dev, "-m", "hashlimit", "--hashlimit-upto", "4/minute",
        "--hashlimit-burst", "1", "--hashlimit-mode", "srcip,dstip", "--hashlimit-srcmask", "24",
        "--hashlimit-dstmask", "24", "--hashlimit-name", "dmvpnlab", "-j", "NFLOG", "--nflog-group",
        str(NFLOG_GROUP), "--nflog-size", "128", "--nflog-threshold", "1",
    )  # fmt: skip


def frr_command(version: int, program: str) -> str:
    """The command line that runs an FRR program of the given major version."""
    if version < 10:
        path = Path("/usr/bin/vtysh") if program == "vtysh" else FRR_DIR / program
        if not path.exists():
            raise LabError("FRR is not installed (apt package frr): make bootstrap installs it")
        return str(path)
    root = FRR10_ROOT
    binary = root / ("usr/bin/vtysh" if program == "vtysh" else f"usr/lib/frr/{program}")
    if not binary.exists():
        raise LabError(f"FRR 10 is not unpacked at {root}: run tools/fetch-frr10.sh (make bootstrap does it)")
    # Run trixie's binaries with trixie's own loader and libraries; nothing is installed system-wide.
    libs = f"{root}/usr/lib/x86_64-linux-gnu/frr:{root}/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu"
    return f"{root}/usr/lib64/ld-linux-x86-64.so.2 --library-path {libs} {binary}"


def vtysh(site: Site, pathspace: Path, command: str, version: int = 8) -> str:
    """Run one vtysh command against the site's FRR."""
    argv = [*frr_command(version, "vtysh").split(), "--vty_socket", str(pathspace), "-c", command]
    return sh(site.ns.argv(*argv), timeout=30)


def _wait_for(path: Path, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.2)
    output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise LabError(f"FRR did not create {path} within {timeout_s} s; its output:\n{output}")


def nhrp_cache(site: Site, pathspace: Path, version: int = 8) -> dict[str, tuple[str, str]]:
    """``show ip nhrp cache`` as {protocol address: (type, NBMA)}."""
    rows: dict[str, tuple[str, str]] = {}
    for line in vtysh(site, pathspace, "show ip nhrp cache", version=version).splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 4:
            rows[fields[2]] = (fields[1], fields[3])
    return rows


def wait_for_cache_entry(
    site: Site, pathspace: Path, protocol: str, seconds: float, version: int = 8
) -> dict[str, tuple[str, str]]:
    """Poll the site's NHRP cache (bounded) until ``protocol`` appears; returns the last cache seen."""
    cache: dict[str, tuple[str, str]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and protocol not in cache:
        time.sleep(1.0)
        cache = nhrp_cache(site, pathspace, version=version)
    return cache
