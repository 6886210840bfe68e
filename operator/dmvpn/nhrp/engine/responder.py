"""Answering Resolution Requests for our own addresses and site prefixes (spokes and hubs alike).

The reply goes straight to the requester's NBMA address (that is what builds the shortcut), and the
requester's own binding is cached at the same time so that the shortcut works in both directions
at once. We answer whether or not we already have a shortcut to the requester: FRR issue 4845 is a
spoke that stopped answering once it had one, leaving the other direction through the hub.
When the request came through an NHS, the reply's ``Send`` names it as ``relay``: a driver that cannot
reach the requester directly yet may hand the reply back along the request's path (RFC 2332 lets replies
take it; our NHSs pass foreign replies on).
"""

from __future__ import annotations

from dmvpn.nhrp.cache import CacheEntry, EntryType, Network, host_network
from dmvpn.nhrp.codec import (
    Address,
    Extension,
    ForwardTransitNHS,
    Message,
    NATAddress,
    PacketType,
    ResolutionFlag,
    ResponderAddress,
    ReverseTransitNHS,
    find_extension,
)
from dmvpn.nhrp.engine.context import Context


class Responder:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def answer(self, request: Message, owned: Network, nbma: Address, now: float) -> None:
        """Reply to ``request`` (received from link-layer ``nbma``) for our prefix ``owned``."""
        requester_nbma = self._requester_nbma(request, nbma)
        if requester_nbma is None or request.src_protocol is None:
            return
        self._cache_requester(request, requester_nbma, now)
        self.ctx.counters.events["resolution_answered"] += 1
        relay = nbma if nbma != requester_nbma and self.ctx.is_nhs(nbma) else None
        self.ctx.send(requester_nbma, self.reply(request, owned), relay=relay)

    def reply(self, request: Message, owned: Network) -> Message:
        config = self.ctx.config
        copied = ResolutionFlag(request.flags) & (ResolutionFlag.Q | ResolutionFlag.S | ResolutionFlag.NAT)
        return Message(
            type=PacketType.RESOLUTION_REPLY,
            flags=copied | ResolutionFlag.A | ResolutionFlag.D,
            request_id=request.request_id,
            hop_count=config.hop_count,
            src_nbma=request.src_nbma,
            src_protocol=request.src_protocol,
            dst_protocol=request.dst_protocol,
            cies=(self.ctx.our_cie(prefix_length=owned.prefixlen),),
            extensions=self._reply_extensions(request),
        )

    def _reply_extensions(self, request: Message) -> tuple[Extension, ...]:
        """Fill in the extensions the requester asked for; transit records travel back unchanged."""
        extensions: list[Extension] = []
        for extension in request.extensions:
            if isinstance(extension, ResponderAddress):
                extensions.append(ResponderAddress(cies=(self.ctx.our_cie(),)))
            elif isinstance(extension, ForwardTransitNHS | ReverseTransitNHS):
                extensions.append(extension)
            elif isinstance(extension, NATAddress) and self.ctx.config.nat_extension:
                extensions.append(self.ctx.our_nat_extension())
        return tuple(extensions)

    def _requester_nbma(self, request: Message, nbma: Address) -> Address | None:
        """Where the requester really is.

        A request that came through an NHS names the requester by the NAT extension (which the hub
        fills in for a requester behind NAT) or by its source NBMA address. A request that came
        straight from the requester came from its real, post-NAT, address.
        """
        forward = find_extension(request, ForwardTransitNHS)
        forwarded = self.ctx.is_nhs(nbma) or (forward is not None and len(forward.cies) > 0)
        if not forwarded:
            return nbma
        return self.ctx.nat_binding(request, request.src_protocol) or request.src_nbma

    def _cache_requester(self, request: Message, requester_nbma: Address, now: float) -> None:
        """The reverse mapping (RFC 2332 6.2.1: only for a stable source binding with a holding time)."""
        source_cie = request.cies[0] if request.cies else None
        stable = bool(request.flags & ResolutionFlag.S)
        if not stable or source_cie is None or source_cie.holding_time == 0 or request.src_protocol is None:
            return
        entry = CacheEntry(
            prefix=host_network(request.src_protocol),
            type=EntryType.CACHED,
            nbma=requester_nbma,
            next_hop=request.src_protocol,
            claimed_nbma=request.src_nbma,
            expires=now + source_cie.holding_time,
            mtu=source_cie.mtu,
        )
        if self.ctx.cache_put(entry):
            self.ctx.counters.events["reverse_mapping_installed"] += 1


def has_loop(extension: ForwardTransitNHS | ReverseTransitNHS | ResponderAddress | None, us: Address) -> bool:
    """Whether a transit record (or responder address) already names us."""
    return extension is not None and any(cie.client_protocol == us for cie in extension.cies)
