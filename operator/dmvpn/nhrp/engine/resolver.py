"""NHC resolution: Resolution Requests with retries, shortcut installation, the negative cache and
Traffic Indications (which name a destination worth a shortcut)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from dmvpn.nhrp.cache import CacheEntry, EntryType, host_network
from dmvpn.nhrp.codec import (
    CIE,
    Address,
    CIECode,
    ErrorIndication,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    PacketType,
    ResolutionFlag,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    find_extension,
    ip_addresses,
)
from dmvpn.nhrp.counters import DropReason
from dmvpn.nhrp.engine.actions import ResolutionDone, ResolutionFailed
from dmvpn.nhrp.engine.client import Registrar
from dmvpn.nhrp.engine.context import Context
from dmvpn.nhrp.engine.ratelimit import RateLimiter

# Entries that answer a resolution without asking anyone.
POSITIVE = frozenset({EntryType.STATIC, EntryType.NHS, EntryType.DYNAMIC, EntryType.SHORTCUT, EntryType.CACHED})
MAX_PENDING = 4096


@dataclass(slots=True)
class PendingResolution:
    destination: Address
    request_id: int
    nhs_nbma: Address
    attempts: int
    timeout: float
    deadline: float
    renew: bool = False  # asked again for a binding we hold: failing leaves no negative entry


class Resolver:
    def __init__(self, ctx: Context, registrar: Registrar) -> None:
        self.ctx = ctx
        self.registrar = registrar
        self.pending: dict[int, PendingResolution] = {}
        self._by_destination: dict[Address, int] = {}
        config = ctx.config
        self._indications = RateLimiter(
            burst=1, interval=config.traffic_indication_holddown, max_keys=config.max_rate_limit_keys
        )

    # --- asking -------------------------------------------------------------------------------

    def resolve(self, destination: Address, now: float, *, renew: bool = False) -> None:
        """Resolve ``destination``; with ``renew``, ask again even though the cache holds an answer (the
        reply then refreshes that binding in place, before it expires under traffic)."""
        ctx = self.ctx
        if destination.version != ctx.config.protocol_address.version:
            ctx.out.append(ResolutionFailed(destination, "wrong-family"))
            return
        if ctx.owned_prefix(destination) is not None or destination in self._by_destination:
            return
        if not renew and self._answered_from_cache(destination, now):
            return
        nhs = self.registrar.first_up()
        if nhs is None:
            ctx.out.append(ResolutionFailed(destination, "no-nhs"))
            return
        if len(self.pending) >= MAX_PENDING:
            ctx.drop(DropReason.RATE_LIMITED)
            return
        timeout = ctx.config.resolution_timeout
        pending = PendingResolution(
            destination=destination,
            request_id=ctx.new_request_id(),
            nhs_nbma=nhs.nbma,
            attempts=1,
            timeout=timeout,
            deadline=now + timeout,
            renew=renew,
        )
        self.pending[pending.request_id] = pending
        self._by_destination[destination] = pending.request_id
        ctx.send(nhs.nbma, self._request(pending))

    def _answered_from_cache(self, destination: Address, now: float) -> bool:
        ctx = self.ctx
        entry = ctx.cache.lookup(destination, now, types=POSITIVE | {EntryType.NEGATIVE})
        if entry is not None and entry.type == EntryType.NEGATIVE:
            ctx.out.append(ResolutionFailed(destination, "negative-cache"))
            return True
        if entry is not None and (entry.type != EntryType.NHS or destination == entry.next_hop):
            ctx.out.append(ResolutionDone(destination, entry))
            return True
        return False

    def is_pending(self, destination: Address) -> bool:
        return destination in self._by_destination

    def _request(self, pending: PendingResolution) -> Message:
        config = self.ctx.config
        flags = ResolutionFlag.Q | ResolutionFlag.S
        if config.authoritative_requests:
            flags |= ResolutionFlag.A
        extensions: tuple[ResponderAddress | ForwardTransitNHS | ReverseTransitNHS | NATAddress, ...] = (
            ResponderAddress(),
            ForwardTransitNHS(),
            ReverseTransitNHS(),
        )
        if config.nat_extension:
            flags |= ResolutionFlag.NAT
            extensions = (*extensions, NATAddress())
        # The CIE carries our holding time: with the S bit it lets the responder cache our binding.
        own = CIE(prefix_length=config.host_prefix_length, mtu=config.mtu, holding_time=config.holding_time)
        return Message(
            type=PacketType.RESOLUTION_REQUEST,
            flags=flags,
            request_id=pending.request_id,
            hop_count=config.hop_count,
            src_nbma=config.nbma_address,
            src_protocol=config.protocol_address,
            dst_protocol=pending.destination,
            cies=(own,),
            extensions=extensions,
        )

    def next_deadline(self) -> float | None:
        return min((pending.deadline for pending in self.pending.values()), default=None)

    def tick(self, now: float) -> None:
        for pending in [p for p in self.pending.values() if p.deadline <= now]:
            if pending.attempts >= self.ctx.config.resolution_attempts:
                self._fail(pending, now, "timeout", None, self.ctx.config.negative_holding_time)
                continue
            pending.attempts += 1
            pending.timeout *= 2
            pending.deadline = now + pending.timeout
            self._follow_nhs(pending)
            self.ctx.send(pending.nhs_nbma, self._request(pending))

    def _follow_nhs(self, pending: PendingResolution) -> None:
        """Retransmit through an NHS that is up: with two hubs, a request asked of a hub that has since
        been declared down goes to the other one instead of into the void."""
        if any(nhs.nbma == pending.nhs_nbma and nhs.up for nhs in self.registrar.nhs):
            return
        nhs = self.registrar.first_up()
        if nhs is not None:
            pending.nhs_nbma = nhs.nbma

    def retransmit_now(self, now: float) -> int:
        """Send every pending request again at once, keeping its attempt count (a path its reply needs,
        such as an SA to the responder, just came up: the reply may have been held or lost meanwhile)."""
        for pending in self.pending.values():
            pending.deadline = now + pending.timeout
            self._follow_nhs(pending)
            self.ctx.send(pending.nhs_nbma, self._request(pending))
        return len(self.pending)

    # --- answers ------------------------------------------------------------------------------

    def on_reply(self, reply: Message, nbma: Address, now: float) -> None:
        pending = self.pending.get(reply.request_id)
        if pending is None or reply.dst_protocol != pending.destination:
            self.ctx.drop(DropReason.UNKNOWN_REQUEST)
            return
        answer = reply.cies[0] if reply.cies else None
        if answer is None or answer.code != CIECode.SUCCESS:
            code = answer.code if answer is not None else None
            hold = float(answer.holding_time) if answer is not None and answer.holding_time else None
            self._fail(pending, now, "nak", code, hold or self.ctx.config.negative_holding_time)
            return
        self._finish(pending)
        next_hop = answer.client_protocol or pending.destination
        # Where to send: what the NAT extension says, else the responder's own source address when
        # it answered directly from behind NAT, else what it claims.
        peer_nbma = self.ctx.nat_binding(reply, next_hop)
        from_nhs = self.ctx.is_nhs(nbma)
        if peer_nbma is None and not from_nhs and nbma != answer.client_nbma:
            peer_nbma = nbma
        peer_nbma = peer_nbma or answer.client_nbma or nbma
        nhs_answer = from_nhs and not reply.flags & ResolutionFlag.A
        self._install_shortcut(pending.destination, answer, peer_nbma, now, from_nhs=from_nhs, nhs_answer=nhs_answer)

    def _install_shortcut(
        self,
        destination: Address,
        answer: CIE,
        peer_nbma: Address,
        now: float,
        *,
        from_nhs: bool,
        nhs_answer: bool,
        via: Address | None = None,
    ) -> None:
        """``via``: the NHS whose Traffic Indication carried ``answer`` (no request was sent)."""
        ctx = self.ctx
        next_hop = answer.client_protocol or destination
        entry = CacheEntry(
            prefix=ctx.clamp_prefix(destination, answer.prefix_length),
            type=EntryType.SHORTCUT,
            nbma=peer_nbma,
            next_hop=next_hop,
            claimed_nbma=answer.client_nbma,
            expires=now + (answer.holding_time or ctx.config.holding_time),
            mtu=answer.mtu,
        )
        if entry.prefix != host_network(next_hop):
            # The data plane routes the prefix via the next hop, so the next hop needs its own binding.
            ctx.cache_put(replace(entry, prefix=host_network(next_hop)))
        if ctx.cache_put(entry):
            ctx.counters.events["shortcut_installed"] += 1
            done = ResolutionDone(destination, entry, relayed=from_nhs, nhs_answer=nhs_answer, indication_from=via)
            ctx.out.append(done)
        else:
            ctx.out.append(ResolutionFailed(destination, "refused-by-cache"))

    def on_error(self, indication: ErrorIndication, request_id: int, now: float) -> bool:
        pending = self.pending.get(request_id)
        if pending is None:
            return False
        negative = self.ctx.config.negative_holding_time
        self._fail(pending, now, "error-indication", indication.error_code, negative)
        return True

    def _fail(self, pending: PendingResolution, now: float, reason: str, code: int | None, hold: float) -> None:
        self._finish(pending)
        if not pending.renew:  # a failed renewal lets the binding age out; the next indication asks afresh
            self.ctx.cache_put(
                CacheEntry(prefix=host_network(pending.destination), type=EntryType.NEGATIVE, expires=now + hold)
            )
        self.ctx.out.append(ResolutionFailed(pending.destination, reason, code))

    def _finish(self, pending: PendingResolution) -> None:
        self.pending.pop(pending.request_id, None)
        self._by_destination.pop(pending.destination, None)

    # --- traffic indications ------------------------------------------------------------------

    def on_traffic_indication(self, indication: TrafficIndication, nbma: Address, now: float) -> None:
        addresses = ip_addresses(indication.original_packet)
        if addresses is None:
            self.ctx.drop(DropReason.BAD_TRAFFIC_INDICATION)
            return
        if not self.ctx.config.shortcuts:
            self.ctx.drop(DropReason.SHORTCUTS_DISABLED)
            return
        destination = addresses[1]
        if destination.version != self.ctx.config.protocol_address.version:
            self.ctx.drop(DropReason.UNSUPPORTED_PROTOCOL)
            return
        if not self._indications.allow(destination, now):
            self.ctx.drop(DropReason.RATE_LIMITED)
            return
        self.ctx.counters.events["traffic_indication_acted_on"] += 1
        if not self._take_indication_answer(indication, destination, nbma, now):
            self.resolve(destination, now)

    def _take_indication_answer(
        self, indication: TrafficIndication, destination: Address, nbma: Address, now: float
    ) -> bool:
        """Install the shortcut from the answer our NHS put in its indication (``IndicationAnswer``), as
        from its answer to our request: only from an NHS we are registered with, only when we accept
        an NHS's answers (no A bit), and only a usable one (a success CIE naming another NBMA address and a
        next hop). False: ask."""
        ctx = self.ctx
        carried = find_extension(indication, IndicationAnswer)
        if carried is None or ctx.config.authoritative_requests or not self.registrar.is_up(nbma):
            return False
        if ctx.owned_prefix(destination) is not None or destination in self._by_destination:
            return False
        if self._answered_from_cache(destination, now):  # a binding we hold (or a negative one) stands
            return True
        answer = carried.cies[0] if len(carried.cies) == 1 else None
        if not self._usable_indication_answer(answer, destination):
            ctx.drop(DropReason.BAD_TRAFFIC_INDICATION)
            return False
        assert answer is not None and answer.client_nbma is not None
        ctx.counters.events["indication_answer_taken"] += 1
        self._install_shortcut(destination, answer, answer.client_nbma, now, from_nhs=True, nhs_answer=True, via=nbma)
        return True

    def _usable_indication_answer(self, answer: CIE | None, destination: Address) -> bool:
        ctx = self.ctx
        if answer is None or answer.code != CIECode.SUCCESS or answer.client_nbma is None:
            return False
        if (
            answer.client_nbma == ctx.config.nbma_address
            or answer.client_nbma.version != ctx.config.nbma_address.version
        ):
            return False
        # As in a reply, the prefix is the destination's, cut to the CIE's prefix length; the next hop must
        # be an address of the tunnel's family.
        return answer.client_protocol is not None and answer.client_protocol.version == destination.version
