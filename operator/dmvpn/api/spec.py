"""The desired state of DMVPN endpoints: 'spec' of DMVPNHub and DMVPNSpoke.

Field docstrings become the CRD's descriptions ('kubectl explain dmvpnhub.spec.tunnel'), so they are
written for the user, with the Cisco IOS command each field corresponds to. Defaults are applied by these
models when an object is read, not by the API server (see docs/api.md, "Defaults").
"""

from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from dmvpn.api.constants import (
    DEFAULT_ESP_PROPOSAL,
    DEFAULT_IKE_PROPOSAL,
    DEFAULT_INTERFACE,
    DEFAULT_NHRP_SECRET_KEY,
    DEFAULT_PSK_SECRET_KEY,
)
from dmvpn.api.errors import SpecProblems, join_path
from dmvpn.api.proposals import EspProposal, IkeProposal
from dmvpn.api.types import (
    DnsLabel,
    DnsSubdomain,
    DpdDelay,
    GreKey,
    HoldTime,
    InterfaceName,
    IPv4Prefix,
    Mtu,
    NetworkId,
    NodeSelector,
    RekeyTime,
    SecretKey,
    ShortcutIdleTimeout,
    Ttl,
    TunnelAddress,
    UnicastIPv4,
)

MAX_PREFIXES = 64
MAX_HUBS = 16
MAX_PROPOSALS = 16


def cel_rules(*rules: tuple[str, str]) -> dict[str, Any]:
    """CRD ``x-kubernetes-validations``: the API server rejects the simplest cross-field mistakes at
    apply time. They repeat checks the models make (which remain authoritative and explain more)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message} for rule, message in rules]}


_ENDPOINT_RULES = (("has(self.nodeName) != has(self.nodeSelector)", "set exactly one of nodeName and nodeSelector"),)


class WireModel(BaseModel):
    """camelCase on the wire, snake_case in Python, immutable once validated."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        frozen=True,
    )


class SpecModel(WireModel):
    """Part of a spec: an unknown field is a typo, and a typo is an error."""

    model_config = ConfigDict(extra="forbid")


# --- secrets ---------------------------------------------------------------------------------------


class SecretKeyRef(SpecModel):
    """A key of a Kubernetes Secret."""

    name: DnsSubdomain
    """Name of the Secret."""
    namespace: DnsLabel | None = None
    """Namespace of the Secret. Default: the namespace the operator runs in."""
    key: SecretKey = DEFAULT_NHRP_SECRET_KEY
    """Key in the Secret's data."""

    def namespace_or(self, default: str) -> str:
        """The Secret's namespace, 'default' (the operator's namespace) if not given."""
        return self.namespace or default


class PskSecretRef(SecretKeyRef):
    """A Secret key holding an IKE pre-shared key."""

    key: SecretKey = DEFAULT_PSK_SECRET_KEY
    """Key in the Secret's data."""


class CertificateSecretRef(SecretKeyRef):
    """A Secret key holding this endpoint's PEM certificate (chain)."""

    key: SecretKey = "tls.crt"
    """Key in the Secret's data ('tls.crt' as in a kubernetes.io/tls Secret)."""


class PrivateKeySecretRef(SecretKeyRef):
    """A Secret key holding this endpoint's PEM private key."""

    key: SecretKey = "tls.key"
    """Key in the Secret's data ('tls.key' as in a kubernetes.io/tls Secret)."""


class CaSecretRef(SecretKeyRef):
    """A Secret key holding the PEM CA certificate(s) that peers' certificates must chain to."""

    key: SecretKey = "ca.crt"
    """Key in the Secret's data ('ca.crt' as written by cert-manager)."""


# --- underlay, tunnel, NHRP, IPsec -----------------------------------------------------------------


class NbmaSpec(SpecModel):
    """The underlay (NBMA) address GRE packets are sent from: 'tunnel source'."""

    address: UnicastIPv4 | None = None
    """Explicit NBMA address (spokes: only with nodeName, a selector matches many nodes). Default: taken
    from the Node."""
    from_node: Literal["InternalIP", "ExternalIP"] = "InternalIP"
    """Which of the Node's status.addresses to use when address is not given."""


class TunnelSpec(SpecModel):
    """The mGRE interface ('interface Tunnel' + 'tunnel mode gre multipoint')."""

    interface: InterfaceName = DEFAULT_INTERFACE
    """Linux interface name of the mGRE device (at most 15 characters)."""
    gre_key: GreKey | None = None
    """GRE key, 'tunnel key': 0..4294967295. Must be the same on hubs and spokes. Default: no key."""
    network_id: NetworkId = 1
    """NHRP network ID, 'ip nhrp network-id': 1..4294967295. Local to the node, as on IOS."""
    mtu: Mtu = 1400
    """MTU of the tunnel interface, 'ip mtu': 576..9000 bytes."""
    ttl: Ttl = 64
    """TTL of the outer (GRE) IP header, 'tunnel ttl': 1..255."""


class HubTunnelSpec(TunnelSpec):
    """The hub's mGRE interface; its address defines the tunnel subnet of the DMVPN cloud."""

    address: TunnelAddress
    """Tunnel address with the tunnel subnet, 'ip address', e.g. 10.255.0.1/24."""


class SpokeTunnelSpec(TunnelSpec):
    """The spoke's mGRE interface."""

    address: TunnelAddress | None = None
    """Tunnel address with prefix, e.g. 10.255.0.11/24. Only with nodeName. Default: allocated by the
    operator from the hub's tunnel subnet (status.allocations)."""


class NhrpAuthentication(SpecModel):
    """NHRP authentication, 'ip nhrp authentication': a clear-text string of at most 8 bytes."""

    secret_ref: SecretKeyRef
    """Secret key holding the string (at most 8 bytes, checked when the Secret is read)."""


class NhrpSpec(SpecModel):
    """NHRP (RFC 2332) settings of the endpoint."""

    hold_time: HoldTime = 7200
    """Holding time advertised in registrations and resolutions, 'ip nhrp holdtime': 1..65535 s."""
    phase: Literal[1, 2, 3] = 3
    """DMVPN phase: 1 hub-and-spoke only, 2 spoke-to-spoke with specific routes, 3 redirect + shortcut
    ('ip nhrp redirect' on hubs, 'ip nhrp shortcut' on spokes)."""
    shortcut_idle_timeout: ShortcutIdleTimeout = 300
    """A shortcut route unused for this many seconds is removed (its NHRP cache entry ages out with the
    holding time)."""
    authentication: NhrpAuthentication | None = None
    """NHRP authentication string. Default: none."""
    unique_registration: bool = True
    """Set the unique bit in registrations: a hub then refuses the same tunnel address from another NBMA
    address (code 14) until the old binding expires. false: 'ip nhrp registration no-unique', for spokes
    whose NBMA address may change (DHCP, a new Node address): the hub rebinds at once and purges the old
    binding from every peer that resolved it, so their shortcuts are rebuilt to the new address."""


class PskSpec(SpecModel):
    """IKE authentication with a pre-shared key, the same on every endpoint of the cloud."""

    secret_ref: PskSecretRef
    """Secret key holding the PSK (at least 16 bytes, checked when the Secret is read)."""


class X509Spec(SpecModel):
    """IKE authentication with certificates."""

    certificate_secret_ref: CertificateSecretRef
    """This endpoint's certificate."""
    key_secret_ref: PrivateKeySecretRef
    """This endpoint's private key."""
    ca_secret_ref: CaSecretRef
    """CA certificates that peers' certificates must chain to."""


class IpsecSpec(SpecModel):
    """IPsec protection of the GRE packets ('tunnel protection ipsec profile', transport mode)."""

    mode: Literal["required", "disabled"] = "required"
    """required: GRE only inside ESP; disabled: GRE in clear (labs, or an already encrypted underlay)."""
    ike_proposals: list[IkeProposal] = Field(default=[DEFAULT_IKE_PROPOSAL], min_length=1, max_length=MAX_PROPOSALS)
    """IKEv2 proposals in strongSwan syntax, most preferred first ('crypto ikev2 proposal')."""
    esp_proposals: list[EspProposal] = Field(default=[DEFAULT_ESP_PROPOSAL], min_length=1, max_length=MAX_PROPOSALS)
    """ESP proposals in strongSwan syntax, most preferred first ('crypto ipsec transform-set'); a
    key exchange in an ESP proposal enables PFS."""
    psk: PskSpec | None = None
    """Authenticate with a pre-shared key (exactly one of psk and x509 when mode is required)."""
    x509: X509Spec | None = None
    """Authenticate with certificates (exactly one of psk and x509 when mode is required)."""
    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("!(has(self.psk) && has(self.x509))", "set either psk or x509, not both"),
            (
                "(has(self.mode) && self.mode == 'disabled') || has(self.psk) || has(self.x509)",
                "mode required needs psk or x509",
            ),
        )
    )

    dpd_delay: DpdDelay = 30
    """Dead peer detection interval in seconds, 'dpd'; 0 turns it off."""
    rekey_time: RekeyTime = 14400
    """IKE SA rekeying interval in seconds ('lifetime'); CHILD SAs rekey at the same interval."""

    def problems(self) -> list[tuple[str, str]]:
        """Credential problems (checked by the enclosing spec, so they are reported with its others)."""
        if self.psk is not None and self.x509 is not None:
            return [("x509", "set either psk or x509, not both")]
        if self.mode == "required" and self.psk is None and self.x509 is None:
            return [("", "mode is required but no credentials are given: set psk or x509 (or mode: disabled)")]
        return []


# --- hubs a spoke registers with -------------------------------------------------------------------


class HubRef(SpecModel):
    """A next-hop server (hub) of a spoke, 'ip nhrp nhs <tunnel> nbma <nbma>': either the name of a
    DMVPNHub in this cluster, or the addresses of a hub elsewhere (federation)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            ("has(self.nbma) == has(self.tunnelAddress)", "nbma and tunnelAddress go together"),
            ("has(self.name) != has(self.nbma)", "set name, or nbma and tunnelAddress, not both"),
            ("!has(self.summaryPrefixes) || has(self.nbma)", "summaryPrefixes is for a hub outside the cluster"),
        )
    )

    name: DnsSubdomain | None = None
    """Name of a DMVPNHub in this cluster."""
    nbma: UnicastIPv4 | None = None
    """NBMA address of a hub outside this cluster (with tunnelAddress)."""
    tunnel_address: UnicastIPv4 | None = None
    """Tunnel address of a hub outside this cluster (with nbma)."""
    summary_prefixes: list[IPv4Prefix] = Field(default_factory=list, max_length=MAX_PREFIXES)
    """Prefixes routed to a hub outside this cluster, 'ip route <prefix> <tunnelAddress>' (e.g. 10.0.0.0/8;
    Phase 3: the hub redirects, shortcuts follow). An in-cluster hub's come from its DMVPNHub."""

    @model_validator(mode="after")
    def _one_form(self) -> Self:
        remote = self.nbma is not None or self.tunnel_address is not None
        if self.name is not None and remote:
            raise SpecProblems(
                [
                    (
                        "",
                        "use either name (a DMVPNHub here) or nbma + tunnelAddress (elsewhere), not both",
                    )
                ]
            )
        if self.name is None and not remote:
            raise SpecProblems([("", "set name (a DMVPNHub here) or nbma + tunnelAddress (a hub elsewhere)")])
        if remote and self.nbma is None:
            raise SpecProblems([("nbma", "a hub outside the cluster needs both nbma and tunnelAddress")])
        if remote and self.tunnel_address is None:
            raise SpecProblems([("tunnelAddress", "a hub outside the cluster needs both nbma and tunnelAddress")])
        if self.name is not None and self.summary_prefixes:
            raise SpecProblems(
                [("summaryPrefixes", f"only for a hub outside the cluster: DMVPNHub {self.name}'s own apply")]
            )
        problems = overlap_problems("summaryPrefixes", self.summary_prefixes)
        if problems:
            raise SpecProblems(problems)
        return self

    @property
    def is_local(self) -> bool:
        """True if this refers to a DMVPNHub by name, False for a federated hub given by addresses."""
        return self.name is not None


# --- the two specs ---------------------------------------------------------------------------------


def overlap_problems(field: str, prefixes: list[IPv4Network]) -> list[tuple[str, str]]:
    """Problems for prefixes in one list that overlap or repeat each other."""
    problems: list[tuple[str, str]] = []
    for index, prefix in enumerate(prefixes):
        for earlier_index, earlier in enumerate(prefixes[:index]):
            if prefix.overlaps(earlier):
                relation = "repeats" if prefix == earlier else "overlaps"
                problems.append((f"{field}[{index}]", f"{prefix} {relation} {field}[{earlier_index}] {earlier}"))
                break
    return problems


class EndpointSpec(SpecModel):
    """What hubs and spokes share: where they run, underlay, NHRP, IPsec and the site behind them."""

    node_name: DnsSubdomain | None = None
    """Run on this Node (exactly one of nodeName and nodeSelector)."""
    node_selector: NodeSelector | None = None
    """Run on every Node with these labels (exactly one of nodeName and nodeSelector); {} selects all."""
    nbma: NbmaSpec = Field(default_factory=NbmaSpec)
    """Underlay address, 'tunnel source'."""
    nhrp: NhrpSpec = Field(default_factory=NhrpSpec)
    """NHRP settings."""
    ipsec: IpsecSpec
    """IPsec settings; required so that running GRE in clear is a decision (mode: disabled)."""
    site_prefixes: list[IPv4Prefix] | None = Field(default=None, max_length=MAX_PREFIXES)
    """Prefixes behind this endpoint, announced to NHRP peers. Default: the Node's spec.podCIDRs.
    An empty list announces nothing (a transit-only endpoint)."""

    def tunnel_network(self) -> IPv4Network | None:
        """The tunnel subnet if this spec states it (hubs always, spokes with an explicit address)."""
        return None

    def problems(self) -> list[tuple[str, str]]:
        """Cross-field problems, as (path relative to spec, message)."""
        problems = [(join_path("ipsec", path), message) for path, message in self.ipsec.problems()]
        if self.node_name is not None and self.node_selector is not None:
            problems.append(("nodeSelector", "set either nodeName or nodeSelector, not both"))
        if self.node_name is None and self.node_selector is None:
            problems.append(("nodeName", "set nodeName (one node) or nodeSelector (nodes by label)"))
        if self.site_prefixes is not None:
            problems += overlap_problems("sitePrefixes", self.site_prefixes)
            network = self.tunnel_network()
            for index, prefix in enumerate(self.site_prefixes):
                if network is not None and prefix.overlaps(network):
                    problems.append(
                        (
                            f"sitePrefixes[{index}]",
                            f"{prefix} overlaps the tunnel subnet {network} (tunnel.address)",
                        )
                    )
        return problems

    @model_validator(mode="after")
    def _cross_field(self) -> Self:
        problems = self.problems()
        if problems:
            raise SpecProblems(problems)
        return self


class DMVPNHubSpec(EndpointSpec):
    """A DMVPN hub (NHRP next-hop server). A hub is one node: with nodeSelector, the selector must match
    exactly one node at a time (e.g. a label moved for failover); the operator reports it otherwise."""

    model_config = ConfigDict(json_schema_extra=cel_rules(*_ENDPOINT_RULES))

    tunnel: HubTunnelSpec
    """The mGRE interface; tunnel.address defines the DMVPN tunnel subnet."""
    summary_prefixes: list[IPv4Prefix] = Field(default_factory=list, max_length=MAX_PREFIXES)
    """Prefixes announced to spokes via this hub, e.g. 10.0.0.0/8 (Phase 3 summarisation): spokes route
    them to the hub and learn shortcuts to other spokes from NHRP redirects."""

    def tunnel_network(self) -> IPv4Network:
        return self.tunnel.address.network

    def problems(self) -> list[tuple[str, str]]:
        problems = super().problems()
        problems += overlap_problems("summaryPrefixes", self.summary_prefixes)
        if self.summary_prefixes and self.nhrp.phase == 2:
            problems.append(
                (
                    "summaryPrefixes",
                    "Phase 2 spokes need the specific routes of other spokes; summarising "
                    "stops spoke-to-spoke tunnels (use nhrp.phase 3)",
                )
            )
        return problems


class DMVPNSpokeSpec(EndpointSpec):
    """A DMVPN spoke (NHRP client)."""

    model_config = ConfigDict(
        json_schema_extra=cel_rules(
            *_ENDPOINT_RULES,
            (
                "!has(self.nbma) || !has(self.nbma.address) || has(self.nodeName)",
                "nbma.address needs nodeName",
            ),
            (
                "!has(self.tunnel) || !has(self.tunnel.address) || has(self.nodeName)",
                "tunnel.address needs nodeName",
            ),
        )
    )

    tunnel: SpokeTunnelSpec = Field(default_factory=SpokeTunnelSpec)
    """The mGRE interface."""
    hubs: list[HubRef] = Field(min_length=1, max_length=MAX_HUBS)
    """Hubs (next-hop servers) to register with, 'ip nhrp nhs'; at least one."""

    def tunnel_network(self) -> IPv4Network | None:
        return self.tunnel.address.network if self.tunnel.address is not None else None

    def problems(self) -> list[tuple[str, str]]:
        return super().problems() + self._single_node_problems() + self._hub_problems()

    def _single_node_problems(self) -> list[tuple[str, str]]:
        if self.node_selector is None or self.node_name is not None:
            return []
        problems: list[tuple[str, str]] = []
        if self.nbma.address is not None:
            problems.append(
                (
                    "nbma.address",
                    "an explicit NBMA address needs nodeName: nodes selected by label each "
                    "have their own address (use nbma.fromNode)",
                )
            )
        if self.tunnel.address is not None:
            problems.append(
                (
                    "tunnel.address",
                    "an explicit tunnel address needs nodeName: nodes selected by label "
                    "each get an address allocated from the hub's subnet",
                )
            )
        return problems

    def _hub_problems(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        seen: dict[tuple[str, Any], int] = {}
        for index, hub in enumerate(self.hubs):
            for field, value in (
                ("name", hub.name),
                ("nbma", hub.nbma),
                ("tunnelAddress", hub.tunnel_address),
            ):
                if value is None:
                    continue
                earlier = seen.setdefault((field, value), index)
                if earlier != index:
                    problems.append((f"hubs[{index}].{field}", f"duplicate of hubs[{earlier}].{field} {value}"))
            problems += self._federated_hub_problems(index, hub.tunnel_address)
        return problems

    def _federated_hub_problems(self, index: int, hub_address: IPv4Address | None) -> list[tuple[str, str]]:
        own = self.tunnel.address
        if hub_address is None or own is None:
            return []
        path = f"hubs[{index}].tunnelAddress"
        if hub_address == own.ip:
            return [(path, f"{hub_address} is this spoke's own tunnel.address")]
        if hub_address not in own.network:
            return [(path, f"{hub_address} is outside this spoke's tunnel subnet {own.network}")]
        return []
