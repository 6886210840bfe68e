"""Run ``nft`` in a namespace (pyroute2 has no nftables support; the Debian binding is not on PyPI)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dmvpn.dataplane.netns import netns_path
from dmvpn.dataplane.types import DataplaneError, NamespaceGone

NFT_TIMEOUT_S = 60.0  # generous: the first nft in a fresh namespace may load modules (slow under emulation)


def nft_argv(netns: str | None, *args: str) -> list[str]:
    prefix = [] if netns is None else ["nsenter", f"--net={netns_path(netns)}"]
    return [*prefix, "nft", *args]


def require_netns(netns: str | None) -> None:
    """Checked first: nsenter's "No such file or directory" would read like nft's "no such table"."""
    if netns is not None and not os.path.exists(netns_path(netns)):
        raise NamespaceGone(f"network namespace {netns_path(netns)} does not exist")


async def run_nft(netns: str | None, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    require_netns(netns)
    proc = await asyncio.create_subprocess_exec(
        *nft_argv(netns, *args),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), NFT_TIMEOUT_S
        )
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise DataplaneError(f"nft {' '.join(args)} timed out after {NFT_TIMEOUT_S} s") from exc
    return proc.returncode or 0, out.decode(), err.decode()


async def apply_script(netns: str | None, script: str) -> None:
    """Apply an nft script atomically (one transaction: all of it or nothing)."""
    code, _, err = await run_nft(netns, "-f", "-", stdin=script)
    if code != 0:
        raise DataplaneError(f"nft -f - failed ({code}): {err.strip()}\n--- script ---\n{script}")


async def list_table(netns: str | None, family: str, table: str) -> list[dict[str, Any]] | None:
    """The table's objects as nft JSON items (``[{"chain": {...}}, {"rule": {...}}, ...]``), None if absent."""
    code, out, err = await run_nft(netns, "-j", "list", "table", family, table)
    if code != 0:
        if "No such file or directory" in err:
            return None
        raise DataplaneError(f"nft list table {family} {table} failed ({code}): {err.strip()}")
    items: list[dict[str, Any]] = json.loads(out).get("nftables", [])
    return [item for item in items if "metainfo" not in item]


def rule_marker(kind: str, rule: str) -> str:
    """The comment that identifies our rule and the configuration it was made from."""
    return f"{kind} {hashlib.sha256(rule.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class OwnedChain:
    """One base chain with one rule, and one set, that we own in ``table <family> <table>``. The table may
    hold other chains (the hub's hairpin chain and the usage counter share ``inet dmvpn``): we create it
    if missing, never flush it, and only (re)write or remove our chain and set. Our rule's comment is a
    fingerprint of its configuration, so installing the same one again reads and writes nothing else."""

    family: str
    table: str
    chain: str
    set_name: str

    @property
    def qualified_table(self) -> str:
        return f"{self.family} {self.table}"

    def found(self, items: list[dict[str, Any]]) -> tuple[bool, bool, list[str]]:
        """Whether our chain and set exist, and the comments of the rules in our chain."""
        chain = any(item.get("chain", {}).get("name") == self.chain for item in items)
        named_set = any(item.get("set", {}).get("name") == self.set_name for item in items)
        comments = [
            str(item["rule"].get("comment", ""))
            for item in items
            if "rule" in item and item["rule"].get("chain") == self.chain
        ]
        return chain, named_set, comments

    def removal(self, chain_exists: bool, set_exists: bool) -> list[str]:
        table = self.qualified_table
        lines: list[str] = []
        if chain_exists:
            lines += [f"flush chain {table} {self.chain}", f"delete chain {table} {self.chain}"]
        if set_exists:
            lines.append(f"delete set {table} {self.set_name}")
        return lines

    def script(self, set_spec: str, hook: str, rule: str, marker: str, *, chain_exists: bool, set_exists: bool) -> str:
        """(Re)write our set and chain: ``set_spec`` inside the set's braces, ``hook`` the base chain's
        hook, ``rule`` our one rule, commented with ``marker``."""
        table = self.qualified_table
        lines = [f"add table {table}", *self.removal(chain_exists, set_exists)]
        lines += [
            f"add set {table} {self.set_name} {{ {set_spec} }}",
            f"add chain {table} {self.chain} {{ type filter hook {hook} priority filter; policy accept; }}",
            f'add rule {table} {self.chain} {rule} comment "{marker}"',
        ]
        return "\n".join(lines) + "\n"

    def only_ours(self, items: list[dict[str, Any]]) -> bool:
        """Nothing in the table but our chain, its rules and our set."""
        for item in items:
            for kind, body in item.items():
                if kind == "table":
                    continue
                if kind == "chain" and body.get("name") == self.chain:
                    continue
                if kind == "set" and body.get("name") == self.set_name:
                    continue
                if kind == "rule" and body.get("chain") == self.chain:
                    continue
                return False
        return True

    async def install(self, netns: str | None, marker: str, render: Callable[[bool, bool], str]) -> bool:
        """Apply ``render(chain_exists, set_exists)`` atomically unless our rule already carries
        ``marker``; True if it changed anything."""
        items = await list_table(netns, self.family, self.table) or []
        chain, named_set, comments = self.found(items)
        if chain and named_set and comments == [marker]:
            return False
        await apply_script(netns, render(chain, named_set))
        return True

    async def remove(self, netns: str | None) -> bool:
        """Remove our chain and set, and the table if nothing else is left in it. False if none was there."""
        items = await list_table(netns, self.family, self.table)
        if items is None:
            return False
        lines = self.removal(*self.found(items)[:2])
        if not lines:
            return False
        if self.only_ours(items):
            lines.append(f"delete table {self.qualified_table}")
        await apply_script(netns, "\n".join(lines) + "\n")
        return True
