"""FRR nhrpd (Debian's frr 8.4) as a lab peer: the reference DMVPN implementation on Linux.

Each site runs its own zebra and nhrpd in its namespace with a private FRR pathspace (``-N``) under the
site's run directory, bind-mounted over /run exactly as for charon. Interop tests and benchmarks use it
as the hub or the spokes our agent talks to. Facts this relies on are in shared/notes/lab.md: the tunnel
must be bound to the underlay device (``add_static_mgre`` does ``dev eth0``), nhrpd answers a Resolution
Request only when its route to the requester goes via the tunnel, and a hub needs an NFLOG rule to send
Traffic Indications.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from dmvpn.lab.topology import Lab, LabError, Site, sh

FRR_DIR = Path("/usr/lib/frr")
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
    if frr.shortcut:
        lines.append(" ip nhrp shortcut")
    if frr.role == "hub":
        lines.append(" ip nhrp redirect")
    lines += [f" ip nhrp nhs dynamic nbma {nbma}" for nbma in frr.nhs_nbma]
    return "\n".join([*lines, "exit", ""])


def start_frr_nhrpd(lab: Lab, site: Site, frr: FrrNhrp, timeout_s: float = 30.0) -> Path:
    """Start zebra, then nhrpd, in the site's namespace; returns the vty socket directory for vtysh."""
    if not (FRR_DIR / "nhrpd").exists():
        raise LabError("FRR is not installed (apt package frr): make bootstrap installs it")
    rundir = lab.site_rundir(site)
    pathspace = rundir / "frr" / site.name
    pathspace.mkdir(parents=True, exist_ok=True)
    shutil.chown(pathspace, "frr", "frr")
    (rundir / "zebra.conf").write_text(f"hostname {site.name}\nlog file /run/frr/{site.name}/zebra.log\n")
    (rundir / "nhrpd.conf").write_text(nhrpd_config(site, frr))
    if frr.role == "hub":
        _hairpin_nflog_rule(site, frr.dev)
    for daemon in ("zebra", "nhrpd"):
        script = f"mount --bind {rundir} /run && exec {FRR_DIR / daemon} -N {site.name} -f /run/{daemon}.conf -P 0"
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


def vtysh(site: Site, pathspace: Path, command: str) -> str:
    """Run one vtysh command against the site's FRR."""
    return sh(site.ns.argv("vtysh", "--vty_socket", str(pathspace), "-c", command), timeout=30)


def _wait_for(path: Path, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            return
        time.sleep(0.2)
    output = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise LabError(f"FRR did not create {path} within {timeout_s} s; its output:\n{output}")
