"""The engine: one NHRP node (client, server or both) as a sans-IO state machine.

Packets come in as bytes plus the NBMA address they came from, time comes in as ``now``; what to do
comes out as a list of :mod:`actions <dmvpn.nhrp.engine.actions>`. Nothing here sleeps, reads a
clock or touches a socket, so the whole protocol is testable with a fake clock.
"""

from __future__ import annotations

from dmvpn.nhrp.cache import CacheEntry, EntryType, NHRPCache, host_network, prefix_of
from dmvpn.nhrp.codec import (
    ETHERTYPE_IPV4,
    ETHERTYPE_IPV6,
    FIXED_HEADER_LEN,
    Address,
    ErrorCode,
    ErrorIndication,
    Message,
    NHRPDecodeError,
    Packet,
    PacketType,
    PurgeFlag,
    TrafficIndication,
    decode,
)
from dmvpn.nhrp.counters import Counters, DropReason
from dmvpn.nhrp.engine.actions import Action, CacheChanged
from dmvpn.nhrp.engine.client import NHSRegistration, Registrar
from dmvpn.nhrp.engine.config import EngineConfig
from dmvpn.nhrp.engine.context import Context
from dmvpn.nhrp.engine.resolver import Resolver
from dmvpn.nhrp.engine.responder import Responder
from dmvpn.nhrp.engine.server import Server

_TYPE_OFFSET = 17
_REQUEST_ID_OFFSET = 24


class Engine:
    """An NHRP node. Drive it with :meth:`start`, :meth:`receive`, :meth:`tick` (at
    :meth:`next_deadline`), :meth:`resolve`, :meth:`hairpin` and :meth:`shutdown`; each returns the
    actions to carry out, in order."""

    def __init__(self, config: EngineConfig) -> None:
        self._ctx = Context(config)
        self._registrar = Registrar(self._ctx)
        self._resolver = Resolver(self._ctx, self._registrar)
        self._responder = Responder(self._ctx)
        self._server = Server(self._ctx, self._registrar) if config.server else None
        v4 = config.protocol_address.version == 4
        self._protocol_type = ETHERTYPE_IPV4 if v4 else ETHERTYPE_IPV6

    # --- read-only views ----------------------------------------------------------------------

    @property
    def config(self) -> EngineConfig:
        return self._ctx.config

    @property
    def cache(self) -> NHRPCache:
        return self._ctx.cache

    @property
    def counters(self) -> Counters:
        return self._ctx.counters

    @property
    def nat_nbma(self) -> Address | None:
        """Our NBMA address as our NHS sees it, when NAT changes it."""
        return self._ctx.nat_nbma

    @property
    def nhs(self) -> tuple[NHSRegistration, ...]:
        return tuple(self._registrar.nhs)

    # --- driving ------------------------------------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """Install local and static bindings and send the first registrations."""
        config = self._ctx.config
        own = host_network(config.protocol_address)
        local = [
            CacheEntry(prefix=own, type=EntryType.LOCAL, nbma=config.nbma_address, next_hop=config.protocol_address)
        ]
        local += [
            CacheEntry(prefix=prefix, type=EntryType.LOCAL, next_hop=config.protocol_address)
            for prefix in config.site_prefixes
        ]
        for mapping in config.static_mappings:
            host = mapping.prefix.prefixlen == mapping.prefix.max_prefixlen
            next_hop = mapping.next_hop or (mapping.prefix.network_address if host else None)
            local.append(CacheEntry(prefix=mapping.prefix, type=EntryType.STATIC, nbma=mapping.nbma, next_hop=next_hop))
        for entry in local:
            self._ctx.cache_put(entry)
        self._registrar.start(now)
        return self._collect()

    def receive(self, data: bytes, nbma: Address, now: float) -> list[Action]:
        """Handle one NHRP packet that arrived from the peer at ``nbma``."""
        try:
            packet = decode(data)
        except NHRPDecodeError as error:
            self._undecodable(data, nbma, error, now)
            return self._collect()
        self._ctx.counters.packets_in[packet.packet_type] += 1
        if packet.protocol_type != self._protocol_type:
            self._ctx.drop(DropReason.UNSUPPORTED_PROTOCOL)
        elif not self._ctx.authentic(packet):
            self._ctx.drop(DropReason.AUTH_FAILURE)
            if not isinstance(packet, ErrorIndication):  # never answer an error with an error
                self._ctx.send_error(
                    nbma,
                    ErrorCode.AUTHENTICATION_FAILURE,
                    offset=0,
                    quoted=data,
                    about=packet.src_protocol,
                    now=now,
                )
        else:
            self._dispatch(packet, data, nbma, now)
        return self._collect()

    def tick(self, now: float) -> list[Action]:
        """Run every timer that is due: retries, refreshes, expiry."""
        self._registrar.tick(now)
        self._resolver.tick(now)
        if self._server is not None:
            self._server.tick(now)
        for change in self._ctx.cache.expire(now):
            self._ctx.out.append(CacheChanged(change.kind, change.entry))
            if self._server is not None and change.entry.type == EntryType.DYNAMIC:
                self._server.binding_gone(change.entry, now)
        return self._collect()

    def next_deadline(self) -> float | None:
        """When :meth:`tick` next has work (None: only when a packet or a call comes)."""
        deadlines = [
            self._registrar.next_deadline(),
            self._resolver.next_deadline(),
            self._server.next_deadline() if self._server is not None else None,
            self._ctx.cache.next_expiry(),
        ]
        return min((deadline for deadline in deadlines if deadline is not None), default=None)

    def resolving(self, destination: Address) -> bool:
        """Whether a Resolution Request of ours for ``destination`` is waiting for its reply."""
        return self._resolver.is_pending(destination)

    def resolve(self, destination: Address, now: float) -> list[Action]:
        """Find the NBMA next hop for ``destination`` (ResolutionDone/ResolutionFailed follow)."""
        self._resolver.resolve(destination, now)
        return self._collect()

    def retransmit_resolutions(self, now: float) -> list[Action]:
        """Resend pending Resolution Requests now (e.g. an SA to another spoke came up)."""
        self._resolver.retransmit_now(now)
        return self._collect()

    def renew(self, destination: Address, now: float) -> list[Action]:
        """Ask again for a binding we already hold (a shortcut about to expire while it carries traffic):
        the reply refreshes the entry in place, so its routes never go (ResolutionDone follows)."""
        self._resolver.resolve(destination, now, renew=True)
        return self._collect()

    def hairpin(self, packet: bytes, now: float) -> list[Action]:
        """(NHS) ``packet`` (its IP header at least) went out the tunnel it came in by: send a
        rate-limited Traffic Indication to its source so that it resolves a shortcut."""
        if self._server is not None:
            self._server.hairpin(packet, now)
        return self._collect()

    def shutdown(self, now: float) -> list[Action]:
        """Withdraw our registrations (Purge Requests to our NHSes)."""
        self._registrar.withdraw()
        return self._collect()

    # --- dispatch -----------------------------------------------------------------------------

    def _collect(self) -> list[Action]:
        out, self._ctx.out = self._ctx.out, []
        return out

    def _undecodable(self, data: bytes, nbma: Address, error: NHRPDecodeError, now: float) -> None:
        ctx = self._ctx
        ctx.counters.decode_errors[error.code] += 1
        ctx.drop(DropReason.DECODE_ERROR)
        # Report it, except when it is (or claims to be) an Error Indication, or is corrupt: a bad
        # checksum is silently dropped (RFC 2332 5.2.0.1), and so is anything too short to quote.
        reportable = (
            len(data) >= FIXED_HEADER_LEN
            and data[_TYPE_OFFSET] != PacketType.ERROR_INDICATION
            and error.reason != "bad checksum"
        )
        if reportable:
            ctx.send_error(nbma, error.code, offset=error.offset, quoted=data, about=None, now=now)

    def _dispatch(self, packet: Packet, raw: bytes, nbma: Address, now: float) -> None:
        if isinstance(packet, ErrorIndication):
            self._on_error_indication(packet, now)
        elif isinstance(packet, TrafficIndication):
            self._resolver.on_traffic_indication(packet, nbma, now)
        elif packet.type == PacketType.RESOLUTION_REQUEST:
            self._on_resolution_request(packet, raw, nbma, now)
        elif packet.type == PacketType.RESOLUTION_REPLY:
            self._on_resolution_reply(packet, raw, nbma, now)
        elif packet.type == PacketType.REGISTRATION_REQUEST:
            if self._server is None:
                self._ctx.drop(DropReason.NOT_A_SERVER)
            else:
                self._server.on_registration(packet, nbma, now)
        elif packet.type == PacketType.REGISTRATION_REPLY:
            self._registrar.on_reply(packet, nbma, now)
        elif packet.type == PacketType.PURGE_REQUEST:
            self._on_purge_request(packet, nbma, now)
        elif self._server is None or not self._server.on_purge_reply(packet):
            self._ctx.drop(DropReason.UNKNOWN_REQUEST)

    def _on_resolution_request(self, request: Message, raw: bytes, nbma: Address, now: float) -> None:
        owned = self._ctx.owned_prefix(request.dst_protocol) if request.dst_protocol is not None else None
        if owned is not None:
            self._responder.answer(request, owned, nbma, now)
        elif self._server is not None:
            self._server.on_resolution_request(request, nbma, raw, now)
        else:
            self._ctx.drop(DropReason.NOT_FOR_US)

    def _on_resolution_reply(self, reply: Message, raw: bytes, nbma: Address, now: float) -> None:
        if reply.src_protocol == self._ctx.config.protocol_address:
            self._resolver.on_reply(reply, nbma, now)
        elif self._server is not None:
            self._server.on_foreign_reply(reply, nbma, raw, now)
        else:
            self._ctx.drop(DropReason.NOT_FOR_US)

    def _on_purge_request(self, request: Message, nbma: Address, now: float) -> None:
        ctx = self._ctx
        if self._server is not None:
            for entry in self._server.withdraw(request, nbma):
                self._server.binding_gone(entry, now)
        for cie in request.cies:
            if cie.client_protocol is None:
                continue
            purged = prefix_of(cie.client_protocol, cie.prefix_length)
            ctx.cache_remove_all(
                [
                    entry
                    for entry in ctx.cache
                    if ctx.removable_by_purge(entry)
                    and (entry.prefix.overlaps(purged) or (entry.next_hop is not None and entry.next_hop in purged))
                ]
            )
        ctx.counters.events["purge_received"] += 1
        if request.flags & PurgeFlag.NO_REPLY:
            return
        reply = Message(
            type=PacketType.PURGE_REPLY,
            flags=request.flags,
            request_id=request.request_id,
            hop_count=ctx.config.hop_count,
            src_nbma=request.src_nbma,
            src_protocol=request.src_protocol,
            dst_protocol=request.dst_protocol,
            cies=request.cies,
        )
        ctx.send(nbma, reply)

    def _on_error_indication(self, indication: ErrorIndication, now: float) -> None:
        """Note it and fail whatever request it is about; never answer it (FRR 10 does, and two
        such peers ping-pong Error Indications forever)."""
        self._ctx.counters.error_indications_in[indication.error_code] += 1
        quoted = _quoted_request(indication.offending_packet)
        if quoted is None:
            return
        packet_type, request_id = quoted
        if packet_type == PacketType.REGISTRATION_REQUEST:
            self._registrar.on_error(indication, request_id)
        elif packet_type == PacketType.RESOLUTION_REQUEST:
            self._resolver.on_error(indication, request_id, now)
        elif packet_type == PacketType.PURGE_REQUEST and self._server is not None:
            self._server.pending_purges.pop(request_id, None)


def _quoted_request(quoted: bytes) -> tuple[int, int] | None:
    """(packet type, request ID) of the packet an Error Indication quotes, read straight from its
    header: the quote may be truncated, so it need not decode."""
    if len(quoted) < _REQUEST_ID_OFFSET + 4:
        return None
    return quoted[_TYPE_OFFSET], int.from_bytes(quoted[_REQUEST_ID_OFFSET : _REQUEST_ID_OFFSET + 4], "big")
