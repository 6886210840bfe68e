"""nftables guard for ``ipsec.mode: required``: GRE that did not arrive in ESP is dropped (counted), and GRE
that would leave without an xfrm bundle is dropped too (never in clear on the underlay).

Our own table ``inet dmvpn_ipsec``, replaced atomically in one ``nft -f -`` transaction; nothing else in
the ruleset is read, flushed or deleted. Each rule's comment carries a fingerprint of the configuration,
so installing the same guard again writes nothing (and keeps the counters).

Why both directions: the input rule is the DMVPN promise (a peer without IKE credentials cannot inject
GRE, hence neither NHRP nor traffic). The outbound rule covers the gap of on-demand SAs: GRE to a peer
whose SA is not up yet is dropped instead of leaving in clear. It sits on the postrouting hook, not on
output: a packet the kernel queues in a trap policy while IKE runs (``xfrm_larval_drop=0``) carries a
placeholder route without a transform on the output hook, and would be dropped there; it reaches
postrouting only once it leaves through the SA.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
from collections.abc import Mapping
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from dmvpn.ipsec.types import GuardCounters, IpsecError

GUARD_TABLE = "dmvpn_ipsec"
FAMILY = "inet"
GUARD_FAMILY = FAMILY  # where the data plane reads our counters
_IN_TAG = "dmvpn-ipsec-in"
_OUT_TAG = "dmvpn-ipsec-out"
_TIMEOUT_S = 10.0


def _rule_bodies(local_nbma: IPv4Address | None) -> tuple[str, str]:
    daddr = f" ip daddr {local_nbma}" if local_nbma is not None else ""
    saddr = f" ip saddr {local_nbma}" if local_nbma is not None else ""
    # 'meta secpath missing': the packet was not decapsulated by xfrm (nft prints it 'meta ipsec').
    # 'rt ipsec missing': the route it leaves by is not an xfrm bundle, so it would go out in clear.
    return (
        f"ip protocol gre{daddr} meta secpath missing counter drop",
        f"ip protocol gre{saddr} rt ipsec missing counter drop",
    )


_OUT_HOOK = "postrouting"


def fingerprint(local_nbma: IPv4Address | None) -> str:
    """Short digest of the guard's configuration (rules and the outbound rule's hook), carried in the rule
    comments: a guard of an older layout is replaced."""
    return hashlib.sha256("\n".join((*_rule_bodies(local_nbma), _OUT_HOOK)).encode()).hexdigest()[:16]


def render_guard(local_nbma: IPv4Address | None = None) -> str:
    """The nft script that (re)creates our table in one transaction: an input and an outbound chain
    (postrouting hook) with one counted drop rule each. ``local_nbma`` limits both to GRE to/from that
    address (other GRE users on the node keep working)."""
    inbound, outbound = _rule_bodies(local_nbma)
    digest = fingerprint(local_nbma)
    table = f"{FAMILY} {GUARD_TABLE}"
    return (
        f"add table {table}\n"
        f"delete table {table}\n"  # 'add' first, so the delete never fails: one atomic replacement
        f"table {table} {{\n"
        "  chain input {\n"
        "    type filter hook input priority filter; policy accept;\n"
        f'    {inbound} comment "{_IN_TAG} {digest}"\n'
        "  }\n"
        "  chain output {\n"
        f"    type filter hook {_OUT_HOOK} priority filter; policy accept;\n"
        f'    {outbound} comment "{_OUT_TAG} {digest}"\n'
        "  }\n"
        "}\n"
    )


def _netns_prefix(netns: str | None) -> list[str]:
    if netns is None:
        return []
    path = netns if "/" in netns else str(Path("/run/netns") / netns)
    return ["nsenter", f"--net={path}"]


async def _nft(netns: str | None, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    nft = shutil.which("nft") or "/usr/sbin/nft"
    proc = await asyncio.create_subprocess_exec(
        *_netns_prefix(netns),
        nft,
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin.encode() if stdin else None), _TIMEOUT_S)
    except TimeoutError as error:
        proc.kill()
        await proc.wait()
        raise IpsecError(f"nft {' '.join(args)} did not finish within {_TIMEOUT_S} s") from error
    return proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")


async def _rules(netns: str | None) -> list[dict[str, Any]] | None:
    """Our table's rules (nft JSON), or None if the table does not exist."""
    code, out, _ = await _nft(netns, "-j", "list", "table", FAMILY, GUARD_TABLE)
    if code != 0:
        return None
    return [item["rule"] for item in json.loads(out).get("nftables", []) if "rule" in item]


async def install_guard(local_nbma: IPv4Address | None = None, *, netns: str | None = None) -> bool:
    """Install or update the guard; returns False if it was already exactly in place (nothing written)."""
    digest = fingerprint(local_nbma)
    rules = await _rules(netns)
    if rules is not None:
        comments = sorted(str(rule.get("comment", "")) for rule in rules)
        if comments == sorted([f"{_IN_TAG} {digest}", f"{_OUT_TAG} {digest}"]):
            return False
    code, _, err = await _nft(netns, "-f", "-", stdin=render_guard(local_nbma))
    if code != 0:
        raise IpsecError(f"nft refused the IPsec guard: {err.strip()}")
    return True


async def remove_guard(*, netns: str | None = None) -> bool:
    """Delete our table (mode changed to disabled); returns False if it was not there."""
    if await _rules(netns) is None:
        return False
    code, _, err = await _nft(netns, "delete", "table", FAMILY, GUARD_TABLE)
    if code != 0:
        raise IpsecError(f"nft could not delete table {FAMILY} {GUARD_TABLE}: {err.strip()}")
    return True


def guard_counters_from(by_comment: Mapping[str, tuple[int, int]]) -> GuardCounters:
    """Our two rules' drops from each rule's comment -> (packets, bytes) (pure). The data plane reads the
    counters over netlink (``nft`` itself, run every few seconds, cost more CPU than IKE can spare)."""
    found = {comment.split(" ")[0]: counts for comment, counts in by_comment.items()}
    in_packets, in_bytes = found.get(_IN_TAG, (0, 0))
    out_packets, out_bytes = found.get(_OUT_TAG, (0, 0))
    return GuardCounters(in_packets, in_bytes, out_packets, out_bytes)


async def set_larval_drop(enabled: bool, *, netns: str | None = None) -> None:
    """``net.core.xfrm_larval_drop``: 0 queues packets hitting a trap policy while IKE runs instead of
    dropping them (lab: 0 lost pings instead of 3-6). Our on-demand SAs use no trap policies, but a node
    that does benefits. The setting is per network namespace."""
    value = "1" if enabled else "0"
    proc = await asyncio.create_subprocess_exec(
        *_netns_prefix(netns),
        "sysctl",
        "-qw",
        f"net.core.xfrm_larval_drop={value}",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(proc.communicate(), _TIMEOUT_S)
    if proc.returncode != 0:
        raise IpsecError(f"could not set net.core.xfrm_larval_drop: {err.decode(errors='replace').strip()}")
