"""Run ``nft`` in a namespace (pyroute2 has no nftables support; the Debian binding is not on PyPI)."""

from __future__ import annotations

import asyncio
import json
import os
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
