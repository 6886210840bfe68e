"""Tunnel address allocation: pure functions over sets of addresses.

The operator allocates one address of the hub's tunnel subnet to every node a spoke selects. Which
addresses are taken is decided by the caller (``dmvpn.controller.ledger`` under a lock); here is only
the arithmetic: keep what a node already has, hand out the lowest free host address to the others.
"""

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Interface, IPv4Network


@dataclass(frozen=True)
class Allocation:
    """The outcome for one spoke: an address per node, and the nodes the subnet had no room for."""

    addresses: dict[str, IPv4Interface] = field(default_factory=dict)
    unallocated: tuple[str, ...] = ()
    moved: tuple[str, ...] = ()
    """Nodes whose previous address had to be given up (taken by a hub, an explicit spoke address or a
    spoke with precedence) and that got a new one."""


def usable_hosts(network: IPv4Network) -> int:
    """How many addresses of ``network`` can be given to endpoints (no network/broadcast address)."""
    return max(network.num_addresses - 2, 0) if network.prefixlen < 31 else network.num_addresses


def _hosts(network: IPv4Network) -> Iterator[IPv4Address]:
    return iter(network.hosts())


def _keeps(address: IPv4Interface, network: IPv4Network, reserved: set[IPv4Address]) -> bool:
    """Whether a previously allocated address is still good: same subnet, a host address, not reserved."""
    if address.network != network:
        return False
    if network.prefixlen < 31 and address.ip in (network.network_address, network.broadcast_address):
        return False
    return address.ip not in reserved


def allocate(
    network: IPv4Network,
    nodes: Iterable[str],
    previous: Mapping[str, IPv4Interface],
    *,
    reserved: set[IPv4Address],
    occupied: set[IPv4Address],
) -> Allocation:
    """Addresses for ``nodes`` in ``network``, stable across calls.

    ``previous`` is what the spoke had (read back from its status); a node keeps its address unless it
    left the subnet or the address is ``reserved`` (hub addresses, explicit spoke addresses, other
    spokes' allocations that take precedence). ``occupied`` addresses (other spokes' allocations that
    do not take precedence over this one) are never handed out anew but do not evict a previous owner:
    that is how two spokes that both claim an address after a restore agree on who keeps it.
    """
    wanted = sorted(set(nodes))
    kept: dict[str, IPv4Interface] = {}
    used: set[IPv4Address] = set()
    moved: list[str] = []
    for node in wanted:
        address = previous.get(node)
        if address is None:
            continue
        if _keeps(address, network, reserved) and address.ip not in used:
            kept[node] = address
            used.add(address.ip)
        else:
            moved.append(node)
    free = (ip for ip in _hosts(network) if ip not in reserved and ip not in occupied and ip not in used)
    addresses = dict(kept)
    unallocated: list[str] = []
    for node in wanted:
        if node in addresses:
            continue
        ip = next(free, None)
        if ip is None:
            unallocated.append(node)
            continue
        addresses[node] = IPv4Interface(f"{ip}/{network.prefixlen}")
    return Allocation(
        addresses={node: addresses[node] for node in wanted if node in addresses},
        unallocated=tuple(unallocated),
        moved=tuple(node for node in moved if node in addresses),
    )
