"""NHS: registrations, resolution forwarding, purges and Traffic Indications."""

from __future__ import annotations

from dataclasses import dataclass, replace

from dmvpn.nhrp.cache import CacheEntry, EntryType, Network, host_network, network
from dmvpn.nhrp.codec import (
    CIE,
    Address,
    CIECode,
    ErrorCode,
    Extension,
    ForwardTransitNHS,
    IndicationAnswer,
    Message,
    NATAddress,
    PacketType,
    RegistrationFlag,
    ResolutionFlag,
    ResponderAddress,
    ReverseTransitNHS,
    TrafficIndication,
    find_extension,
    indication_excerpt,
    ip_addresses,
)
from dmvpn.nhrp.counters import DropReason
from dmvpn.nhrp.engine.client import Registrar
from dmvpn.nhrp.engine.config import NhsAnswers
from dmvpn.nhrp.engine.context import Context
from dmvpn.nhrp.engine.ratelimit import RateLimiter
from dmvpn.nhrp.engine.responder import has_loop

FORWARDABLE = frozenset({EntryType.DYNAMIC, EntryType.STATIC})
INDICATION_TARGETS = frozenset({EntryType.DYNAMIC, EntryType.STATIC, EntryType.SHORTCUT, EntryType.CACHED})
MAX_INTERESTED_PER_PREFIX = 64
# How long an answer we gave a lower spoke about a higher one lets the higher one's indication carry the
# answer back (see Server._answered_the_other_end): the lower end initiates the SA within a moment of it.
ANSWER_MEMORY_S = 10.0
MAX_REMEMBERED_ANSWERS = 4096


@dataclass(slots=True)
class PendingPurge:
    nbma: Address
    packet: Message
    attempts: int
    timeout: float
    deadline: float


class Server:
    def __init__(self, ctx: Context, registrar: Registrar) -> None:
        self.ctx = ctx
        self.registrar = registrar
        # Who resolved what through us: told when the binding goes (prefix -> requester -> NBMA).
        self.interested: dict[Network, dict[Address, Address]] = {}
        self.pending_purges: dict[int, PendingPurge] = {}
        # When we last gave a spoke another's binding: (recipient NBMA, registrant NBMA) -> time.
        self._answered: dict[tuple[Address, Address], float] = {}
        config = ctx.config
        self._indications = RateLimiter(
            burst=config.traffic_indication_burst,
            interval=config.traffic_indication_interval,
            max_keys=config.max_rate_limit_keys,
        )

    # --- registration -------------------------------------------------------------------------

    def on_registration(self, request: Message, nbma: Address, now: float) -> None:
        config = self.ctx.config
        flags = RegistrationFlag(request.flags) & (RegistrationFlag.UNIQUE | RegistrationFlag.NAT)
        reply = Message(
            type=PacketType.REGISTRATION_REPLY,
            flags=flags,
            request_id=request.request_id,
            hop_count=config.hop_count,
            src_nbma=request.src_nbma,
            src_protocol=request.src_protocol,
            dst_protocol=config.protocol_address,
            cies=tuple(self._register(request, cie, nbma, now) for cie in request.cies),
            extensions=self._registration_reply_extensions(request, nbma),
        )
        self.ctx.send(nbma, reply)

    def _register(self, request: Message, cie: CIE, nbma: Address, now: float) -> CIE:
        """Bind one CIE's prefix to the NBMA address the request came from; the CIE, with its code."""
        config = self.ctx.config
        protocol = cie.client_protocol or request.src_protocol
        if protocol is None or request.src_protocol is None or protocol.version != config.protocol_address.version:
            return replace(cie, code=CIECode.ADMINISTRATIVELY_PROHIBITED)
        host = protocol.max_prefixlen
        length = host if cie.prefix_length in (0, 0xFF) or cie.prefix_length > host else cie.prefix_length
        if length < config.min_prefix_length:
            return replace(cie, code=CIECode.ADMINISTRATIVELY_PROHIBITED)
        prefix = network(protocol, length)
        existing = self.ctx.cache.get(prefix)
        if (
            existing is not None
            and existing.type == EntryType.DYNAMIC
            and existing.unique
            and existing.nbma != nbma
            and not existing.expired(now)
        ):
            self.ctx.counters.events["registration_unique_conflict"] += 1
            return replace(cie, code=CIECode.UNIQUE_ADDRESS_REGISTERED)
        entry = CacheEntry(
            prefix=prefix,
            type=EntryType.DYNAMIC,
            nbma=nbma,  # where it came from: right even behind NAT
            next_hop=request.src_protocol,
            claimed_nbma=cie.client_nbma or request.src_nbma,
            expires=now + (cie.holding_time or config.holding_time),
            mtu=cie.mtu,
            unique=bool(request.flags & RegistrationFlag.UNIQUE),
        )
        if not self.ctx.cache_put(entry):
            full = self.ctx.cache.get(prefix) is None
            code = CIECode.INSUFFICIENT_RESOURCES if full else CIECode.ADMINISTRATIVELY_PROHIBITED
            return replace(cie, code=code)
        self.ctx.counters.events["registration_accepted"] += 1
        if existing is not None and existing.type == EntryType.DYNAMIC and existing.nbma != nbma:
            # The registrant moved (a new NBMA address, non-unique registration): whoever resolved the
            # old binding holds a shortcut to an address that is gone; purge it so they resolve again.
            self.ctx.counters.events["registration_moved"] += 1
            self.binding_gone(existing, now)
        return replace(cie, code=CIECode.SUCCESS)

    def _registration_reply_extensions(self, request: Message, nbma: Address) -> tuple[Extension, ...]:
        extensions: list[Extension] = []
        for extension in request.extensions:
            if isinstance(extension, ResponderAddress):
                extensions.append(ResponderAddress(cies=(self.ctx.our_cie(),)))
            elif isinstance(extension, ForwardTransitNHS | ReverseTransitNHS):
                extensions.append(extension)
            elif isinstance(extension, NATAddress) and self.ctx.config.nat_extension:
                extensions.append(self._nat_extension_for(request.src_protocol, nbma, request.src_nbma))
        return tuple(extensions)

    def _nat_extension_for(self, protocol: Address | None, real: Address | None, claimed: Address | None) -> NATAddress:
        """Tell a peer behind NAT which NBMA address we see it at (nothing when there is no NAT)."""
        if protocol is None or real is None or real == claimed:
            return NATAddress()
        cie = CIE(
            prefix_length=protocol.max_prefixlen,
            mtu=self.ctx.config.mtu,
            client_nbma=real,
            client_protocol=protocol,
        )
        return NATAddress(cies=(cie,))

    # --- resolution ---------------------------------------------------------------------------

    def on_resolution_request(self, request: Message, nbma: Address, raw: bytes, now: float) -> None:
        ctx = self.ctx
        destination = request.dst_protocol
        if destination is None or request.src_protocol is None:
            ctx.drop(DropReason.NOT_FOR_US)
            return
        if has_loop(find_extension(request, ForwardTransitNHS), ctx.config.protocol_address):
            ctx.drop(DropReason.LOOP_DETECTED)
            ctx.send_error(nbma, ErrorCode.LOOP_DETECTED, offset=0, quoted=raw, about=request.src_protocol, now=now)
            return
        entry = ctx.cache.lookup(destination, now, types=FORWARDABLE)
        if entry is not None and self._answers_itself(request, entry, nbma):
            self._answer_from_cache(request, entry, nbma, now)
            return
        target = entry.nbma if entry is not None else None
        if target == nbma:  # never back to where it came from: the sender would be asking itself
            entry, target = None, None
        if target is None:
            upstream = self.registrar.first_up()
            target = upstream.nbma if upstream is not None and upstream.nbma != nbma else None
        if target is None:
            self._negative_reply(request, nbma)
            return
        if request.hop_count <= 1:
            ctx.drop(DropReason.HOP_COUNT_EXCEEDED)
            ctx.send_error(
                nbma, ErrorCode.HOP_COUNT_EXCEEDED, offset=9, quoted=raw, about=request.src_protocol, now=now
            )
            return
        if entry is not None:
            self._remember_interest(entry, request.src_protocol, self._requester_nbma(request, nbma))
        forwarded = replace(request, hop_count=request.hop_count - 1, extensions=self._forward_extensions(request, now))
        ctx.counters.events["resolution_forwarded"] += 1
        ctx.send(target, forwarded)

    def _answers_itself(self, request: Message, entry: CacheEntry, nbma: Address) -> bool:
        """Answer from the registration instead of forwarding (a requester that did not insist on A)."""
        if request.flags & ResolutionFlag.A:
            return False
        return self._may_answer_for(entry, self._requester_nbma(request, nbma))

    def _may_answer_for(self, entry: CacheEntry, requester_nbma: Address) -> bool:
        """May we give ``entry``'s binding (a registration) to the spoke at ``requester_nbma``?"""
        if entry.type != EntryType.DYNAMIC or entry.nbma is None or entry.nbma == requester_nbma:
            return False
        if self.ctx.config.nhs_answers is NhsAnswers.ALL:
            return True
        return int(requester_nbma) < int(entry.nbma)

    def _forward_extensions(self, request: Message, now: float) -> tuple[Extension, ...]:
        """Copy the extensions, adding ourselves to the forward transit record and, for a requester
        behind NAT, its real NBMA address to an empty NAT extension (so the responder can reply)."""
        extensions: list[Extension] = []
        for extension in request.extensions:
            if isinstance(extension, ForwardTransitNHS):
                extensions.append(ForwardTransitNHS(cies=(*extension.cies, self._transit_cie())))
            elif isinstance(extension, NATAddress) and not extension.cies and request.src_protocol is not None:
                source = self.ctx.cache.lookup(request.src_protocol, now, types=frozenset({EntryType.DYNAMIC}))
                if source is not None and source.nbma is not None:
                    nat = self._nat_extension_for(request.src_protocol, source.nbma, source.claimed_nbma)
                    extensions.append(nat)
                else:
                    extensions.append(extension)
            else:
                extensions.append(extension)
        return tuple(extensions)

    def _transit_cie(self) -> CIE:
        return self.ctx.our_cie()

    @staticmethod
    def _registration_cie(entry: CacheEntry, now: float) -> CIE:
        """A registration as the CIE of a non-authoritative answer: the rest of its holding time."""
        return CIE(
            prefix_length=entry.prefix.prefixlen,
            mtu=entry.mtu,
            holding_time=int(max((entry.expires or now) - now, 0)),
            client_nbma=entry.nbma,
            client_protocol=entry.next_hop,
        )

    def _answer_from_cache(self, request: Message, entry: CacheEntry, nbma: Address, now: float) -> None:
        """A non-authoritative answer (the requester did not insist on A) from a registration."""
        answer = self._registration_cie(entry, now)
        assert request.src_protocol is not None
        requester_nbma = self._requester_nbma(request, nbma)
        self._remember_interest(entry, request.src_protocol, requester_nbma)
        self._note_answer(requester_nbma, entry, now)
        reply = Message(
            type=PacketType.RESOLUTION_REPLY,
            flags=(request.flags & (ResolutionFlag.Q | ResolutionFlag.S | ResolutionFlag.NAT)) | ResolutionFlag.D,
            request_id=request.request_id,
            hop_count=self.ctx.config.hop_count,
            src_nbma=request.src_nbma,
            src_protocol=request.src_protocol,
            dst_protocol=request.dst_protocol,
            cies=(answer,),
            extensions=tuple(
                self._nat_extension_for(entry.next_hop, entry.nbma, entry.claimed_nbma)
                if isinstance(extension, NATAddress)
                else extension
                for extension in request.extensions
                if isinstance(extension, ForwardTransitNHS | ReverseTransitNHS | NATAddress)
            ),
        )
        self.ctx.counters.events["resolution_answered_from_cache"] += 1
        self.ctx.send(nbma, reply)

    def _negative_reply(self, request: Message, nbma: Address) -> None:
        nak = CIE(
            code=CIECode.NO_BINDING_EXISTS,
            prefix_length=request.dst_protocol.max_prefixlen if request.dst_protocol else 0,
            holding_time=int(self.ctx.config.negative_holding_time),
        )
        reply = Message(
            type=PacketType.RESOLUTION_REPLY,
            flags=request.flags & (ResolutionFlag.Q | ResolutionFlag.S | ResolutionFlag.NAT),
            request_id=request.request_id,
            hop_count=self.ctx.config.hop_count,
            src_nbma=request.src_nbma,
            src_protocol=request.src_protocol,
            dst_protocol=request.dst_protocol,
            cies=(nak,),
        )
        self.ctx.counters.events["resolution_nak_sent"] += 1
        self.ctx.send(nbma, reply)

    def _requester_nbma(self, request: Message, nbma: Address) -> Address:
        forward = find_extension(request, ForwardTransitNHS)
        if forward is not None and forward.cies:  # came through another NHS
            return self.ctx.nat_binding(request, request.src_protocol) or request.src_nbma or nbma
        return nbma

    def on_foreign_reply(self, reply: Message, nbma: Address, raw: bytes, now: float) -> None:
        """A Resolution Reply for someone else travelling back through us: pass it on towards them."""
        ctx = self.ctx
        us = ctx.config.protocol_address
        looped = has_loop(find_extension(reply, ReverseTransitNHS), us)
        if looped or has_loop(find_extension(reply, ResponderAddress), us):
            ctx.drop(DropReason.LOOP_DETECTED)
            ctx.send_error(nbma, ErrorCode.LOOP_DETECTED, offset=0, quoted=raw, about=reply.src_protocol, now=now)
            return
        entry = ctx.cache.lookup(reply.src_protocol, now, types=FORWARDABLE) if reply.src_protocol else None
        if entry is None or entry.nbma is None:
            ctx.drop(DropReason.NO_ROUTE)
            return
        if reply.hop_count <= 1:
            ctx.drop(DropReason.HOP_COUNT_EXCEEDED)
            ctx.send_error(nbma, ErrorCode.HOP_COUNT_EXCEEDED, offset=9, quoted=raw, about=reply.src_protocol, now=now)
            return
        extensions = tuple(
            ReverseTransitNHS(cies=(*extension.cies, self._transit_cie()))
            if isinstance(extension, ReverseTransitNHS)
            else extension
            for extension in reply.extensions
        )
        ctx.send(entry.nbma, replace(reply, hop_count=reply.hop_count - 1, extensions=extensions))

    # --- purges -------------------------------------------------------------------------------

    def _remember_interest(self, entry: CacheEntry, requester: Address, requester_nbma: Address) -> None:
        prefixes = {entry.prefix}
        if entry.next_hop is not None:
            prefixes.add(host_network(entry.next_hop))
        for prefix in prefixes:
            interested = self.interested.setdefault(prefix, {})
            if requester in interested or len(interested) < MAX_INTERESTED_PER_PREFIX:
                interested[requester] = requester_nbma

    def withdraw(self, request: Message, nbma: Address) -> list[CacheEntry]:
        """A registrant's Purge Request: remove the bindings it owns that the CIEs name."""
        removed: list[CacheEntry] = []
        for cie in request.cies:
            protocol = cie.client_protocol or request.src_protocol
            if protocol is None:
                continue
            host = protocol.max_prefixlen
            length = host if cie.prefix_length in (0, 0xFF) or cie.prefix_length > host else cie.prefix_length
            prefix = network(protocol, length)
            entry = self.ctx.cache.get(prefix)
            # Only from where it was registered: anyone can claim a protocol address, not an NBMA one.
            if entry is not None and entry.type == EntryType.DYNAMIC and entry.nbma == nbma:
                self.ctx.cache_remove(prefix)
                removed.append(entry)
        return removed

    def binding_gone(self, entry: CacheEntry, now: float) -> None:
        """A registration expired or was withdrawn: purge it from everyone who resolved it via us."""
        for requester, nbma in self.interested.pop(entry.prefix, {}).items():
            if nbma == entry.nbma:
                continue
            self._send_purge(entry.prefix, requester, nbma, now)

    def _send_purge(self, prefix: Network, requester: Address, nbma: Address, now: float) -> None:
        config = self.ctx.config
        purge = Message(
            type=PacketType.PURGE_REQUEST,
            request_id=self.ctx.new_request_id(),
            hop_count=config.hop_count,
            src_nbma=config.nbma_address,
            src_protocol=config.protocol_address,
            dst_protocol=requester,
            cies=(CIE(prefix_length=prefix.prefixlen, client_protocol=prefix.network_address),),
        )
        timeout = config.purge_timeout
        self.pending_purges[purge.request_id] = PendingPurge(nbma, purge, 1, timeout, now + timeout)
        self.ctx.counters.events["purge_sent"] += 1
        self.ctx.send(nbma, purge)

    def on_purge_reply(self, reply: Message) -> bool:
        return self.pending_purges.pop(reply.request_id, None) is not None

    def next_deadline(self) -> float | None:
        return min((pending.deadline for pending in self.pending_purges.values()), default=None)

    def tick(self, now: float) -> None:
        for request_id, pending in list(self.pending_purges.items()):
            if pending.deadline > now:
                continue
            if pending.attempts >= self.ctx.config.purge_attempts:
                del self.pending_purges[request_id]
                self.ctx.counters.events["purge_unanswered"] += 1
                continue
            pending.attempts += 1
            pending.timeout *= 2
            pending.deadline = now + pending.timeout
            self.ctx.send(pending.nbma, pending.packet)

    # --- traffic indications ------------------------------------------------------------------

    def hairpin(self, packet: bytes, now: float) -> None:
        """The data plane saw ``packet`` enter and leave through the hub: tell its source to resolve."""
        ctx = self.ctx
        if not ctx.config.redirect:
            return
        addresses = ip_addresses(packet)
        if addresses is None:
            ctx.drop(DropReason.BAD_TRAFFIC_INDICATION)
            return
        source, destination = addresses
        if source.version != ctx.config.protocol_address.version:
            ctx.drop(DropReason.UNSUPPORTED_PROTOCOL)
            return
        entry = ctx.cache.lookup(source, now, types=INDICATION_TARGETS)
        if entry is None or entry.nbma is None:
            ctx.drop(DropReason.NO_ROUTE)
            return
        if not self._indications.allow((source, destination), now):
            ctx.drop(DropReason.RATE_LIMITED)
            return
        indication = TrafficIndication(
            hop_count=1,
            src_nbma=ctx.config.nbma_address,
            src_protocol=ctx.config.protocol_address,
            dst_protocol=source,
            original_packet=indication_excerpt(packet),
            extensions=self._indication_answer(entry, destination, now),
        )
        ctx.counters.events["traffic_indication_sent"] += 1
        ctx.send(entry.nbma, indication)

    def _indication_answer(self, source: CacheEntry, destination: Address, now: float) -> tuple[Extension, ...]:
        """Our answer for ``destination``, carried in the indication to ``source``'s spoke when we would
        answer its Resolution Request ourselves, or when we gave the other end its answer moments ago: the
        spoke has the shortcut a round trip sooner. We note the interest as for that answer, so the spoke
        hears a purge should the registration go."""
        if not self.ctx.config.indication_answers or source.nbma is None or source.next_hop is None:
            return ()
        target = self.ctx.cache.lookup(destination, now, types=FORWARDABLE)
        if target is None or not (
            self._may_answer_for(target, source.nbma) or self._answered_the_other_end(target, source, now)
        ):
            return ()
        self._remember_interest(target, source.next_hop, source.nbma)
        self._note_answer(source.nbma, target, now)
        self.ctx.counters.events["indication_answered"] += 1
        return (IndicationAnswer(cies=(self._registration_cie(target, now),)),)

    def _answered_the_other_end(self, target: CacheEntry, source: CacheEntry, now: float) -> bool:
        """Did ``target``'s spoke get ``source``'s binding from us within :data:`ANSWER_MEMORY_S`? Then it is
        bringing the path up (a lower end initiates the SA on our answer), and ``source``'s spoke, the higher
        end here, may have ``target``'s binding too: it waits for that SA instead of sending a Resolution
        Request that would cross the hub and the other spoke while their IKE exchange runs."""
        if target.type != EntryType.DYNAMIC or target.nbma is None or source.nbma is None:
            return False
        answered = self._answered.get((target.nbma, source.nbma))
        return answered is not None and now - answered <= ANSWER_MEMORY_S

    def _note_answer(self, recipient_nbma: Address, registration: CacheEntry, now: float) -> None:
        if registration.nbma is None:
            return
        if len(self._answered) >= MAX_REMEMBERED_ANSWERS:  # bounded: drop what is too old to matter
            self._answered = {key: at for key, at in self._answered.items() if now - at <= ANSWER_MEMORY_S}
            if len(self._answered) >= MAX_REMEMBERED_ANSWERS:
                self._answered.pop(next(iter(self._answered)))
        self._answered[(recipient_nbma, registration.nbma)] = now
