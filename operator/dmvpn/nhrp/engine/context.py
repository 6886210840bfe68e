"""State and helpers shared by the engine's parts (client, resolver, responder, server)."""

from __future__ import annotations

import hmac
from dataclasses import replace

from dmvpn.nhrp.cache import CacheEntry, EntryType, Network, NHRPCache, host_network, network
from dmvpn.nhrp.codec import (
    AUTH_TYPE_CLEARTEXT,
    CIE,
    Address,
    Authentication,
    ErrorCode,
    ErrorIndication,
    NATAddress,
    Packet,
    encode,
    find_extension,
    without_extension,
)
from dmvpn.nhrp.counters import Counters, DropReason
from dmvpn.nhrp.engine.actions import Action, CacheChanged, NATAddressChanged, Send
from dmvpn.nhrp.engine.config import EngineConfig
from dmvpn.nhrp.engine.ratelimit import RateLimiter

# An Error Indication quotes the packet in error; keep the quote well inside one tunnel MTU.
MAX_QUOTED_PACKET = 1024
ERROR_INDICATION_BURST = 5


class Context:
    """Everything the parts share; ``out`` collects the actions of the call in progress."""

    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.cache = NHRPCache(config.max_cache_entries)
        self.counters = Counters()
        self.out: list[Action] = []
        self.nat_nbma: Address | None = None  # our NBMA address as the NHS sees it, when different
        self._next_request_id = config.request_id_start & 0xFFFFFFFF
        self._error_limiter = RateLimiter(
            burst=ERROR_INDICATION_BURST,
            interval=config.error_indication_interval,
            max_keys=config.max_rate_limit_keys,
        )

    # --- identity -----------------------------------------------------------------------------

    def new_request_id(self) -> int:
        request_id = self._next_request_id
        self._next_request_id = (request_id + 1) & 0xFFFFFFFF
        return request_id

    def owned_prefix(self, address: Address) -> Network | None:
        """Our own prefix covering ``address`` (our tunnel address or a site prefix), if any."""
        if address == self.config.protocol_address:
            return host_network(address)
        matches = [prefix for prefix in self.config.site_prefixes if address in prefix]
        return max(matches, key=lambda prefix: prefix.prefixlen, default=None)

    def our_cie(self, *, prefix_length: int | None = None, code: int = 0) -> CIE:
        return CIE(
            code=code,
            prefix_length=self.config.host_prefix_length if prefix_length is None else prefix_length,
            mtu=self.config.mtu,
            holding_time=self.config.holding_time,
            client_nbma=self.config.nbma_address,
            client_protocol=self.config.protocol_address,
        )

    def set_nat_nbma(self, seen: Address | None) -> None:
        nat = None if seen == self.config.nbma_address else seen
        if nat != self.nat_nbma:
            self.nat_nbma = nat
            self.out.append(NATAddressChanged(nat))

    def our_nat_extension(self) -> NATAddress:
        """The NAT extension for replies: our post-NAT NBMA address when we know we are behind NAT."""
        if self.nat_nbma is None:
            return NATAddress()
        cie = replace(self.our_cie(), client_nbma=self.nat_nbma)
        return NATAddress(cies=(cie,))

    # --- authentication -----------------------------------------------------------------------

    def authentic(self, packet: Packet) -> bool:
        secret = self.config.auth_secret
        if secret is None:
            return True
        auth = find_extension(packet, Authentication)
        return auth is not None and auth.spi == AUTH_TYPE_CLEARTEXT and hmac.compare_digest(auth.data, secret)

    def with_our_authentication(self, packet: Packet) -> Packet:
        """Drop any authentication extension a forwarded packet carried, and add ours if configured."""
        secret = self.config.auth_secret
        if secret is None and find_extension(packet, Authentication) is None:
            return packet  # nothing to change: skip rebuilding the packet (every send comes through here)
        extensions = without_extension(packet.extensions, Authentication)
        if secret is not None:
            extensions = (Authentication(data=secret), *extensions)
        return replace(packet, extensions=extensions)

    # --- output -------------------------------------------------------------------------------

    def send(self, nbma: Address, packet: Packet, relay: Address | None = None) -> None:
        packet = self.with_our_authentication(packet)
        self.counters.packets_out[packet.packet_type] += 1
        self.out.append(Send(nbma, encode(packet), packet.packet_type, relay))

    def send_error(
        self, nbma: Address, code: ErrorCode, *, offset: int, quoted: bytes, about: Address | None, now: float
    ) -> None:
        """Send an Error Indication about ``quoted`` (never call this for an Error Indication)."""
        if not self._error_limiter.allow(nbma, now):
            self.counters.drops[DropReason.ERROR_RATE_LIMITED] += 1
            return
        self.counters.error_indications_out[code] += 1
        indication = ErrorIndication(
            error_code=code,
            error_offset=offset,
            src_nbma=self.config.nbma_address,
            src_protocol=self.config.protocol_address,
            dst_protocol=about,
            hop_count=self.config.hop_count,
            offending_packet=quoted[:MAX_QUOTED_PACKET],
        )
        self.send(nbma, indication)

    def drop(self, reason: DropReason) -> None:
        self.counters.drops[reason] += 1

    # --- cache --------------------------------------------------------------------------------

    def cache_put(self, entry: CacheEntry) -> bool:
        """Store a binding, reporting the change; False when the cache refused it."""
        if not self.cache.accepts(entry):
            existing = self.cache.get(entry.prefix)
            if existing is None:
                self.drop(DropReason.CACHE_FULL)
            return False
        change = self.cache.put(entry)
        if change is not None:
            self.out.append(CacheChanged(change.kind, change.entry))
        return True

    def cache_remove(self, prefix: Network) -> CacheEntry | None:
        change = self.cache.remove(prefix)
        if change is None:
            return None
        self.out.append(CacheChanged(change.kind, change.entry))
        return change.entry

    def cache_remove_all(self, entries: list[CacheEntry]) -> None:
        for entry in entries:
            self.cache_remove(entry.prefix)

    def nat_binding(self, packet: Packet, protocol: Address | None) -> Address | None:
        """The NBMA address the Cisco NAT extension gives for ``protocol``, if any."""
        nat = find_extension(packet, NATAddress)
        if nat is None or protocol is None or not self.config.nat_extension:
            return None
        for cie in nat.cies:
            if cie.client_protocol == protocol and cie.client_nbma is not None:
                return cie.client_nbma
        return None

    def clamp_prefix(self, address: Address, prefix_length: int) -> Network:
        """The prefix a peer claims around ``address``; never broader than ``min_prefix_length``."""
        host = address.max_prefixlen
        if prefix_length <= 0 or prefix_length > host or prefix_length < self.config.min_prefix_length:
            prefix_length = host
        return network(address, prefix_length)

    def is_nhs(self, nbma: Address) -> bool:
        return any(nhs.nbma == nbma for nhs in self.config.nhs)

    def removable_by_purge(self, entry: CacheEntry) -> bool:
        return entry.type in (EntryType.SHORTCUT, EntryType.CACHED, EntryType.NEGATIVE)
