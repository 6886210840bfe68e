"""The per-shortcut kernel writes: pyroute2's AsyncIPRoute against our hand-encoded messages, one run.

A new shortcut costs a neighbour write (tunnel address -> NBMA) and a route write on each spoke, on the
path the first packets wait for. This times both ways of writing the same neighbour + route pairs into a
throwaway namespace with a multipoint GRE device (blocks in A B B A order, so a change in load hits both
alike) and prints the time per pair and the ratio. Needs root and ip_gre (in the guest:

    .venv/bin/python -m dmvpn.lab.guest $PWD/.venv/bin/python bench/netlink_bench.py [--pairs 50]
)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network

from pyroute2 import AsyncIPRoute

from dmvpn.dataplane.rtnl import Rtnl
from dmvpn.dataplane.rtwrite import NUD_PERMANENT, RTNH_F_ONLINK

PROTO = 0xD5
DEVICE = "bench0"

Writer = Callable[[int, int], Awaitable[None]]  # (device index, pair number) -> one neighbour + one route


def pair(n: int) -> tuple[IPv4Address, IPv4Address, IPv4Network]:
    """The n-th (tunnel address, NBMA address, site prefix): distinct for n < 250 * 250."""
    return (
        IPv4Address(f"10.255.{n // 250}.{n % 250 + 1}"),
        IPv4Address("192.0.2.12"),
        IPv4Network(f"10.{n // 250 + 1}.{n % 250}.0/24"),
    )


def pyroute2_writer(ipr: AsyncIPRoute) -> Writer:
    async def write(index: int, n: int) -> None:
        tunnel, nbma, prefix = pair(n)
        await ipr.neigh("replace", ifindex=index, dst=str(tunnel), lladdr=str(nbma), state=NUD_PERMANENT,
                        protocol=PROTO, family=socket.AF_INET)  # fmt: skip
        await ipr.route("replace", dst=str(prefix.network_address), dst_len=prefix.prefixlen, oif=index,
                        gateway=str(tunnel), flags=RTNH_F_ONLINK, proto=PROTO, table=254, priority=0, type=1, scope=0,
                        family=socket.AF_INET)  # fmt: skip

    return write


def rtwrite_writer(rtnl: Rtnl) -> Writer:
    async def write(index: int, n: int) -> None:
        tunnel, nbma, prefix = pair(n)
        await rtnl.replace_neighbour(index, tunnel, nbma, PROTO)
        await rtnl.replace_route(prefix, tunnel, index, 0, PROTO)

    return write


async def time_block(write: Writer, index: int, first: int, pairs: int) -> float:
    """Seconds per pair for ``pairs`` fresh pairs from number ``first`` on."""
    started = time.perf_counter()
    for n in range(first, first + pairs):
        await write(index, n)
    return (time.perf_counter() - started) / pairs


async def run(netns: str, pairs: int, blocks: int) -> dict[str, list[float]]:
    rtnl = Rtnl(netns)
    await rtnl.open()
    ipr = AsyncIPRoute(netns=f"/run/netns/{netns}", flags=0)
    await ipr.setup_endpoint()
    try:
        link = await rtnl.link_by_name(DEVICE)
        assert link is not None
        writers = {"pyroute2": pyroute2_writer(ipr), "ours": rtwrite_writer(rtnl)}
        await time_block(writers["pyroute2"], link.index, 60_000, 5)  # warm-up, not counted
        await time_block(writers["ours"], link.index, 60_100, 5)
        times: dict[str, list[float]] = {name: [] for name in writers}
        order = ["pyroute2", "ours", "ours", "pyroute2"]
        for block in range(blocks):
            name = order[block % len(order)]
            times[name].append(await time_block(writers[name], link.index, block * pairs, pairs))
        return times
    finally:
        ipr.close()
        rtnl.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=50, help="neighbour + route pairs per block")
    parser.add_argument("--blocks", type=int, default=8, help="blocks, alternating A B B A")
    args = parser.parse_args()
    netns = f"nlbench{os.getpid()}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "add", DEVICE, "type", "gre", "local", "192.0.2.1", "key", "42"],
                       check=True)  # fmt: skip
        # The tunnel's own address: its prefix makes the neighbours' tunnel addresses valid on-link gateways.
        subprocess.run(["ip", "-n", netns, "address", "add", "10.255.255.254/16", "dev", DEVICE], check=True)
        subprocess.run(["ip", "-n", netns, "link", "set", DEVICE, "up"], check=True)
        times = asyncio.run(run(netns, args.pairs, args.blocks))
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
    medians = {name: statistics.median(values) * 1000 for name, values in times.items()}
    print(f"== neighbour + route write per shortcut, {args.blocks} blocks of {args.pairs} pairs (A B B A) ==")
    for name, values in times.items():
        blocks = ", ".join(f"{value * 1000:.2f}" for value in values)
        print(f"  {name:8}: median {medians[name]:6.2f} ms per pair (blocks: {blocks})")
    print(f"  ours / pyroute2: {medians['ours'] / medians['pyroute2']:.2f}x the time")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
