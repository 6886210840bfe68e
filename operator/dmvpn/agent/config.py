"""The agent's resolved view of its own DMVPN object: every address, prefix and secret it needs.

:class:`NodeConfig` is what the reconciler works from, whatever fed it (a standalone file or, later,
the Kubernetes API). Building one is pure except for reading secret files, which goes through a
:class:`SecretSource` so tests pass plain dicts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address, IPv4Interface, IPv4Network
from pathlib import Path
from typing import Literal

from dmvpn.api import (
    DMVPNHub,
    DMVPNObject,
    DMVPNSpoke,
    SecretKeyRef,
    SecretValueError,
    ValidationFailed,
    load_documents,
    validate_ipsec_psk,
    validate_nhrp_secret,
)

Role = Literal["hub", "spoke"]


class ConfigError(ValueError):
    """The desired state cannot be used; the message names the object and field to fix."""


SecretSource = Callable[[SecretKeyRef], bytes]
"""Reads one secret value (``name``/``key``); raises ConfigError when it is not there."""


def secrets_dir_source(directory: Path) -> SecretSource:
    """Secrets as files ``DIR/<secret-name>/<key>``: the layout of a Secret mounted as a volume."""

    def read(ref: SecretKeyRef) -> bytes:
        path = directory / ref.name / ref.key
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"secret {ref.name!r} key {ref.key!r}: no file {path}") from None
        except OSError as error:
            raise ConfigError(f"secret {ref.name!r} key {ref.key!r}: cannot read {path}: {error.strerror}") from None

    return read


@dataclass(frozen=True)
class HubPeer:
    """One NHS of a spoke: its addresses, and the prefixes it summarises (from its object, if known)."""

    nbma: IPv4Address
    tunnel_ip: IPv4Address
    name: str | None = None
    summary_prefixes: tuple[IPv4Network, ...] = ()
    site_prefixes: tuple[IPv4Network, ...] = ()


@dataclass(frozen=True)
class PeerSpoke:
    """Another spoke known from the same desired state (Phase 1/2 need their prefixes)."""

    name: str
    tunnel_ip: IPv4Address
    site_prefixes: tuple[IPv4Network, ...]


@dataclass(frozen=True)
class IpsecSettings:
    mode: Literal["required", "disabled"] = "disabled"
    psk: bytes | None = None
    certificate: bytes | None = None
    private_key: bytes | None = None
    ca: bytes | None = None
    ike_proposals: tuple[str, ...] = ()
    esp_proposals: tuple[str, ...] = ()
    dpd_delay: int = 30
    rekey_time: int = 14400

    @property
    def required(self) -> bool:
        return self.mode == "required"


@dataclass(frozen=True)
class NodeConfig:
    """Everything one node's endpoint is, resolved."""

    node: str
    object_name: str
    role: Role
    interface: str
    nbma: IPv4Address
    tunnel: IPv4Interface  # with the cloud's subnet, e.g. 10.255.0.1/24
    gre_key: int | None = None
    network_id: int = 1
    mtu: int = 1400
    ttl: int = 64
    phase: int = 3
    hold_time: int = 7200
    shortcut_idle_timeout: int = 300
    unique_registration: bool = True
    auth_secret: bytes | None = None
    ipsec: IpsecSettings = field(default_factory=IpsecSettings)
    site_prefixes: tuple[IPv4Network, ...] = ()
    summary_prefixes: tuple[IPv4Network, ...] = ()  # hub: what spokes route to it
    hubs: tuple[HubPeer, ...] = ()  # spoke: the NHSes to register with
    peer_spokes: tuple[PeerSpoke, ...] = ()  # spoke: others sharing a hub (Phase 1/2 routes)

    @property
    def tunnel_ip(self) -> IPv4Address:
        return self.tunnel.ip

    @property
    def tunnel_network(self) -> IPv4Network:
        return self.tunnel.network

    @property
    def is_hub(self) -> bool:
        return self.role == "hub"

    def hub_by_nbma(self, nbma: IPv4Address) -> HubPeer | None:
        return next((hub for hub in self.hubs if hub.nbma == nbma), None)


# --- building it ---------------------------------------------------------------------------------


def find_object(objects: Sequence[DMVPNObject], node: str) -> DMVPNObject:
    """The object whose ``spec.nodeName`` is ``node``; exactly one must match."""
    mine = [obj for obj in objects if obj.spec.node_name == node]
    if not mine:
        named = sorted(obj.spec.node_name for obj in objects if obj.spec.node_name)
        raise ConfigError(
            f"no DMVPNHub or DMVPNSpoke has spec.nodeName {node!r} "
            f"(nodeName values present: {', '.join(named) or 'none'})"
        )
    if len(mine) > 1:
        names = ", ".join(f"{obj.kind}/{obj.name}" for obj in mine)
        raise ConfigError(f"several objects have spec.nodeName {node!r}: {names}; a node runs one endpoint")
    return mine[0]


def _required_nbma(obj: DMVPNObject) -> IPv4Address:
    if obj.spec.nbma.address is None:
        raise ConfigError(
            f"{obj.kind}/{obj.name}: spec.nbma.address is required in standalone mode "
            "(there is no Node to take it from)"
        )
    return obj.spec.nbma.address


def _required_prefixes(obj: DMVPNObject) -> tuple[IPv4Network, ...]:
    if obj.spec.site_prefixes is None:
        raise ConfigError(
            f"{obj.kind}/{obj.name}: spec.sitePrefixes is required in standalone mode "
            "(there is no Node podCIDR to default to; [] announces nothing)"
        )
    return tuple(obj.spec.site_prefixes)


def _ipsec(obj: DMVPNObject, secrets: SecretSource) -> IpsecSettings:
    spec = obj.spec.ipsec
    where = f"{obj.kind}/{obj.name}"
    settings = IpsecSettings(
        mode=spec.mode,
        ike_proposals=tuple(spec.ike_proposals),
        esp_proposals=tuple(spec.esp_proposals),
        dpd_delay=spec.dpd_delay,
        rekey_time=spec.rekey_time,
    )
    if spec.mode == "disabled":
        return settings
    try:
        if spec.psk is not None:
            psk = validate_ipsec_psk(_read(secrets, spec.psk.secret_ref, where, "spec.ipsec.psk.secretRef"))
            return replace(settings, psk=psk)
        if spec.x509 is not None:
            x509 = spec.x509
            return replace(
                settings,
                certificate=_read(secrets, x509.certificate_secret_ref, where, "spec.ipsec.x509.certificateSecretRef"),
                private_key=_read(secrets, x509.key_secret_ref, where, "spec.ipsec.x509.keySecretRef"),
                ca=_read(secrets, x509.ca_secret_ref, where, "spec.ipsec.x509.caSecretRef"),
            )
    except SecretValueError as error:
        raise ConfigError(f"{where}: spec.ipsec: {error}") from None
    raise ConfigError(f"{where}: spec.ipsec: mode required needs psk or x509")


def _read(secrets: SecretSource, ref: SecretKeyRef, where: str, path: str) -> bytes:
    try:
        return secrets(ref)
    except ConfigError as error:
        raise ConfigError(f"{where}: {path}: {error}") from None


def _auth(obj: DMVPNObject, secrets: SecretSource) -> bytes | None:
    auth = obj.spec.nhrp.authentication
    if auth is None:
        return None
    where = f"{obj.kind}/{obj.name}"
    value = _read(secrets, auth.secret_ref, where, "spec.nhrp.authentication.secretRef")
    try:
        return validate_nhrp_secret(value)
    except SecretValueError as error:
        raise ConfigError(f"{where}: spec.nhrp.authentication: {error}") from None


def hub_peers_of(spoke: DMVPNSpoke, hubs: Mapping[str, DMVPNHub]) -> tuple[HubPeer, ...]:
    """The spoke's NHSes in ``spec.hubs`` order: named hubs from ``hubs`` (with an explicit NBMA address),
    federated ones from their ``nbma`` and ``tunnelAddress``."""
    peers: list[HubPeer] = []
    for index, ref in enumerate(spoke.spec.hubs):
        if ref.name is not None:
            hub = hubs.get(ref.name)
            if hub is None:
                raise ConfigError(
                    f"DMVPNSpoke/{spoke.name}: spec.hubs[{index}].name: no DMVPNHub named {ref.name!r} in the file"
                )
            peers.append(
                HubPeer(
                    nbma=_required_nbma(hub),
                    tunnel_ip=hub.spec.tunnel.address.ip,
                    name=hub.name,
                    summary_prefixes=tuple(hub.spec.summary_prefixes),
                    site_prefixes=tuple(hub.spec.site_prefixes or ()),
                )
            )
        else:
            assert ref.nbma is not None and ref.tunnel_address is not None  # the model guarantees both
            peers.append(
                HubPeer(nbma=ref.nbma, tunnel_ip=ref.tunnel_address, summary_prefixes=tuple(ref.summary_prefixes))
            )
    return tuple(peers)


def peer_spokes_of(me: DMVPNSpoke, spokes: Iterable[DMVPNSpoke]) -> tuple[PeerSpoke, ...]:
    """Other spokes with an explicit tunnel address that share a hub with ``me`` (Phase 1/2 routes)."""
    mine = {ref.name or str(ref.nbma) for ref in me.spec.hubs}
    peers: list[PeerSpoke] = []
    for other in spokes:
        if other.name == me.name or other.spec.tunnel.address is None:
            continue
        if not mine & {ref.name or str(ref.nbma) for ref in other.spec.hubs}:
            continue
        peers.append(PeerSpoke(other.name, other.spec.tunnel.address.ip, tuple(other.spec.site_prefixes or ())))
    return tuple(peers)


def endpoint_config(obj: DMVPNObject, node: str, tunnel_address: IPv4Interface, secrets: SecretSource) -> NodeConfig:
    """What hubs and spokes share, resolved (``nbma.address`` and ``sitePrefixes`` must be filled in)."""
    tunnel = obj.spec.tunnel
    nhrp = obj.spec.nhrp
    return NodeConfig(
        node=node,
        object_name=obj.name,
        role="hub" if isinstance(obj, DMVPNHub) else "spoke",
        interface=tunnel.interface,
        nbma=_required_nbma(obj),
        tunnel=tunnel_address,
        gre_key=tunnel.gre_key,
        network_id=tunnel.network_id,
        mtu=tunnel.mtu,
        ttl=tunnel.ttl,
        phase=nhrp.phase,
        hold_time=nhrp.hold_time,
        shortcut_idle_timeout=nhrp.shortcut_idle_timeout,
        unique_registration=nhrp.unique_registration,
        auth_secret=_auth(obj, secrets),
        ipsec=_ipsec(obj, secrets),
        site_prefixes=_required_prefixes(obj),
    )


def node_config(objects: Sequence[DMVPNObject], node: str, secrets: SecretSource) -> NodeConfig:
    """Resolve the object for ``node`` (standalone rules: addresses and prefixes must be explicit)."""
    obj = find_object(objects, node)
    if isinstance(obj, DMVPNHub):
        hub = endpoint_config(obj, node, obj.spec.tunnel.address, secrets)
        return replace(hub, summary_prefixes=tuple(obj.spec.summary_prefixes))
    if obj.spec.tunnel.address is None:
        raise ConfigError(
            f"{obj.kind}/{obj.name}: spec.tunnel.address is required in standalone mode "
            "(no operator allocates one), e.g. 10.255.0.1/24"
        )
    hubs = {o.name: o for o in objects if isinstance(o, DMVPNHub)}
    spokes = [o for o in objects if isinstance(o, DMVPNSpoke)]
    spoke = endpoint_config(obj, node, obj.spec.tunnel.address, secrets)
    return replace(spoke, hubs=hub_peers_of(obj, hubs), peer_spokes=peer_spokes_of(obj, spokes))


def load_standalone(path: Path, node: str, secrets_dir: Path) -> NodeConfig:
    """Read ``path`` (DMVPNHub/DMVPNSpoke documents as applied to a cluster) and resolve ``node``."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    try:
        objects = load_documents(text, source=str(path))
    except ValidationFailed as error:
        raise ConfigError(str(error)) from None
    return node_config(objects, node, secrets_dir_source(secrets_dir))
