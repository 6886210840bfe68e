"""Pure functions other layers need to turn validated objects into per-node decisions.

No I/O: Node data (labels, addresses, podCIDRs) is passed in as the plain values found in a Node object.
"""

from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Interface, IPv4Network, ip_network

from dmvpn.api.errors import Problem
from dmvpn.api.objects import DMVPNHub, DMVPNSpoke
from dmvpn.api.spec import DMVPNHubSpec, EndpointSpec, NbmaSpec


def tunnel_network(hub: DMVPNHub | DMVPNHubSpec) -> IPv4Network:
    """The DMVPN tunnel subnet a hub defines (``10.255.0.0/24`` for ``10.255.0.1/24``)."""
    spec = hub.spec if isinstance(hub, DMVPNHub) else hub
    return spec.tunnel.address.network


def hub_tunnel_address(hub: DMVPNHub | DMVPNHubSpec) -> IPv4Address:
    """The hub's own tunnel address (what spokes use as NHS address)."""
    spec = hub.spec if isinstance(hub, DMVPNHub) else hub
    return spec.tunnel.address.ip


def selects_node(spec: EndpointSpec, node_name: str, node_labels: Mapping[str, str]) -> bool:
    """Whether the endpoint runs on this node: nodeName equal, or every nodeSelector label matching."""
    if spec.node_name is not None:
        return spec.node_name == node_name
    selector = spec.node_selector or {}
    return all(node_labels.get(key) == value for key, value in selector.items())


def nbma_for_node(nbma: NbmaSpec, node_addresses: Iterable[Mapping[str, str]]) -> IPv4Address | None:
    """The NBMA address to use: the explicit one, else the node's first IPv4 address of type fromNode.

    ``node_addresses`` is the Node's ``status.addresses`` (``[{"type": "InternalIP", "address": ...}]``).
    None if the node has no such IPv4 address (report it; do not guess another type).
    """
    if nbma.address is not None:
        return nbma.address
    for entry in node_addresses:
        if entry.get("type") != nbma.from_node:
            continue
        try:
            return IPv4Address(entry.get("address", ""))
        except ValueError:
            continue  # an IPv6 address of a dual-stack node
    return None


def site_prefixes_for_node(spec: EndpointSpec, pod_cidrs: Iterable[str]) -> list[IPv4Network]:
    """The prefixes behind this endpoint on a node: sitePrefixes, else the node's IPv4 ``spec.podCIDRs``."""
    if spec.site_prefixes is not None:
        return list(spec.site_prefixes)
    prefixes: list[IPv4Network] = []
    for cidr in pod_cidrs:
        network = ip_network(cidr, strict=False)
        if isinstance(network, IPv4Network):
            prefixes.append(network)
    return prefixes


def spoke_tunnel_address(spoke: DMVPNSpoke, node_name: str) -> IPv4Interface | None:
    """The tunnel address of ``node_name`` in ``spoke``: explicit in spec, else allocated in status."""
    if spoke.spec.tunnel.address is not None:
        return spoke.spec.tunnel.address
    return spoke.status.allocations.get(node_name)


def spoke_hub_problems(spoke: DMVPNSpoke, hubs: Mapping[str, DMVPNHub]) -> list[Problem]:
    """What makes ``spoke`` unable to work with the in-cluster hubs it names (``hubs`` by name).

    The checks that need both objects: the hub exists, GRE key and IPsec mode agree, NHRP authentication
    is on at both ends or neither, an explicit spoke address lies in the hub's subnet, and the spoke's
    site prefixes stay out of it. Paths are relative to the spoke object.
    """
    problems: list[Problem] = []
    for index, ref in enumerate(spoke.spec.hubs):
        if ref.name is None:
            continue
        hub = hubs.get(ref.name)
        if hub is None:
            problems.append(Problem(f"spec.hubs[{index}].name", f"no DMVPNHub named {ref.name!r}"))
            continue
        problems += _pair_problems(spoke, hub)
    return problems


def _pair_problems(spoke: DMVPNSpoke, hub: DMVPNHub) -> list[Problem]:
    problems: list[Problem] = []
    name = hub.name
    if spoke.spec.tunnel.gre_key != hub.spec.tunnel.gre_key:
        problems.append(
            Problem(
                "spec.tunnel.greKey",
                f"{spoke.spec.tunnel.gre_key} differs from hub {name}'s {hub.spec.tunnel.gre_key}; GRE keys must match",
            )
        )
    if spoke.spec.ipsec.mode != hub.spec.ipsec.mode:
        problems.append(
            Problem("spec.ipsec.mode", f"{spoke.spec.ipsec.mode} differs from hub {name}'s {hub.spec.ipsec.mode}")
        )
    if (spoke.spec.nhrp.authentication is None) != (hub.spec.nhrp.authentication is None):
        problems.append(
            Problem("spec.nhrp.authentication", f"must be set on both or neither of this spoke and hub {name}")
        )
    network = tunnel_network(hub)
    address = spoke.spec.tunnel.address
    if address is not None and address.network != network:
        problems.append(Problem("spec.tunnel.address", f"{address} is not in hub {name}'s tunnel subnet {network}"))
    if address is not None and address.ip == hub_tunnel_address(hub):
        problems.append(Problem("spec.tunnel.address", f"{address.ip} is hub {name}'s own tunnel address"))
    for index, prefix in enumerate(spoke.spec.site_prefixes or []):
        if prefix.overlaps(network):
            problems.append(
                Problem(f"spec.sitePrefixes[{index}]", f"{prefix} overlaps hub {name}'s tunnel subnet {network}")
            )
    return problems
