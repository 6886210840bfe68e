"""NHC registration: keep ourselves (and our site prefixes) registered with every configured NHS.

Per NHS: register at start, refresh at holding time / 3, retry unanswered or refused registrations
with a backoff doubling from 1 s to 64 s, and declare the NHS down after ``nhs_down_after``
unanswered attempts, a refusal, or an Error Indication about our registration.
"""

from __future__ import annotations

from dataclasses import dataclass

from dmvpn.nhrp.cache import CacheEntry, EntryType, host_network
from dmvpn.nhrp.codec import (
    CIE,
    Address,
    CIECode,
    ErrorIndication,
    ForwardTransitNHS,
    Message,
    NATAddress,
    PacketType,
    PurgeFlag,
    RegistrationFlag,
    ResponderAddress,
    ReverseTransitNHS,
    find_extension,
)
from dmvpn.nhrp.counters import DropReason
from dmvpn.nhrp.engine.actions import NHSStateChanged
from dmvpn.nhrp.engine.config import NHSConfig
from dmvpn.nhrp.engine.context import Context


@dataclass(slots=True)
class NHSRegistration:
    nbma: Address
    protocol: Address | None
    up: bool = False
    request_id: int | None = None  # the outstanding request
    attempts: int = 0  # attempts since the last success
    backoff: float = 1.0
    next_send: float = 0.0  # when to (re)send: retry or refresh
    registered_until: float | None = None


class Registrar:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.nhs = [self._fresh(nhs) for nhs in ctx.config.nhs]

    def _fresh(self, nhs: NHSConfig) -> NHSRegistration:
        first_backoff = self.ctx.config.registration_backoff[0]
        return NHSRegistration(nbma=nhs.nbma, protocol=nhs.protocol, backoff=first_backoff)

    # --- timers -------------------------------------------------------------------------------

    def start(self, now: float) -> None:
        for registration in self.nhs:
            if registration.protocol is not None:
                self._install_nhs_entry(registration)
            registration.next_send = now
        self.tick(now)

    def next_deadline(self) -> float | None:
        return min((registration.next_send for registration in self.nhs), default=None)

    def tick(self, now: float) -> None:
        for registration in self.nhs:
            if registration.registered_until is not None and registration.registered_until <= now:
                registration.registered_until = None
                self._set_state(registration, up=False, reason="registration expired")
            if registration.next_send <= now:
                self._send_request(registration, now)

    def _send_request(self, registration: NHSRegistration, now: float) -> None:
        config = self.ctx.config
        if registration.request_id is not None:  # the previous attempt went unanswered
            registration.attempts += 1
            if registration.attempts >= config.nhs_down_after:
                self._set_state(registration, up=False, reason="no registration reply")
        registration.request_id = self.ctx.new_request_id()
        self.ctx.send(registration.nbma, self._request(registration))
        registration.next_send = now + registration.backoff
        registration.backoff = min(registration.backoff * 2, config.registration_backoff[1])

    def _request(self, registration: NHSRegistration) -> Message:
        config = self.ctx.config
        flags = RegistrationFlag.UNIQUE if config.unique else RegistrationFlag(0)
        extensions: tuple[ResponderAddress | ForwardTransitNHS | ReverseTransitNHS | NATAddress, ...] = (
            ResponderAddress(),
            ForwardTransitNHS(),
            ReverseTransitNHS(),
        )
        if config.nat_extension:
            flags |= RegistrationFlag.NAT
            extensions = (*extensions, NATAddress())
        assert registration.request_id is not None
        return Message(
            type=PacketType.REGISTRATION_REQUEST,
            flags=flags,
            request_id=registration.request_id,
            hop_count=config.hop_count,
            src_nbma=config.nbma_address,
            src_protocol=config.protocol_address,
            dst_protocol=registration.protocol or config.protocol_address,
            cies=self._registration_cies(),
            extensions=extensions,
        )

    def _registration_cies(self) -> tuple[CIE, ...]:
        """Our own address (empty client addresses mean "the source"), then each site prefix.

        The prefix CIEs are what lets a hub learn whole site prefixes: this is how federation works.
        """
        config = self.ctx.config
        own = CIE(prefix_length=config.host_prefix_length, mtu=config.mtu, holding_time=config.holding_time)
        prefixes = tuple(
            CIE(
                prefix_length=prefix.prefixlen,
                mtu=config.mtu,
                holding_time=config.holding_time,
                client_protocol=prefix.network_address,
            )
            for prefix in config.site_prefixes
        )
        return (own, *prefixes)

    # --- replies ------------------------------------------------------------------------------

    def find(self, request_id: int) -> NHSRegistration | None:
        return next((r for r in self.nhs if r.request_id == request_id), None)

    def on_reply(self, reply: Message, nbma: Address, now: float) -> None:
        if not any(r.nbma == nbma for r in self.nhs):
            self.ctx.drop(DropReason.UNKNOWN_NHS)
            return
        registration = self.find(reply.request_id)
        if registration is None or registration.nbma != nbma:
            self.ctx.drop(DropReason.UNKNOWN_REQUEST)
            return
        registration.request_id = None
        own = reply.cies[0] if reply.cies else None
        if own is None or own.code != CIECode.SUCCESS:
            code = own.code if own is not None else None
            self.ctx.counters.events["registration_refused"] += 1
            self._set_state(registration, up=False, reason=f"registration refused (CIE code {code})")
            return  # retried at next_send with the growing backoff
        refused = sum(1 for cie in reply.cies[1:] if cie.code != CIECode.SUCCESS)
        self.ctx.counters.events["site_prefix_refused"] += refused
        self._registered(registration, reply, own, now)

    def _registered(self, registration: NHSRegistration, reply: Message, own: CIE, now: float) -> None:
        config = self.ctx.config
        if registration.protocol is None and reply.dst_protocol is not None:
            registration.protocol = reply.dst_protocol  # a dynamically learned NHS
        if registration.protocol is not None:
            self._install_nhs_entry(registration)
        holding_time = own.holding_time or config.holding_time
        registration.attempts = 0
        registration.backoff = config.registration_backoff[0]
        registration.next_send = now + holding_time / 3
        registration.registered_until = now + holding_time
        nat = find_extension(reply, NATAddress)
        if nat is not None and config.nat_extension:
            seen = self.ctx.nat_binding(reply, config.protocol_address)
            self.ctx.set_nat_nbma(seen)
        self.ctx.counters.events["registration_succeeded"] += 1
        self._set_state(registration, up=True, reason="registered")

    def on_error(self, indication: ErrorIndication, request_id: int) -> bool:
        """An Error Indication about one of our registrations; True if it was ours."""
        registration = self.find(request_id)
        if registration is None:
            return False
        registration.request_id = None
        self._set_state(registration, up=False, reason=f"error indication {indication.error_code}")
        return True

    def _install_nhs_entry(self, registration: NHSRegistration) -> None:
        assert registration.protocol is not None
        self.ctx.cache_put(
            CacheEntry(
                prefix=host_network(registration.protocol),
                type=EntryType.NHS,
                nbma=registration.nbma,
                next_hop=registration.protocol,
            )
        )

    def _set_state(self, registration: NHSRegistration, *, up: bool, reason: str) -> None:
        if registration.up == up:
            return
        registration.up = up
        if not up:
            registration.registered_until = None
        self.ctx.out.append(NHSStateChanged(registration.nbma, registration.protocol, up, reason))

    # --- queries and shutdown -----------------------------------------------------------------

    def first_up(self) -> NHSRegistration | None:
        return next((r for r in self.nhs if r.up), None)

    def is_up(self, nbma: Address) -> bool:
        """Are we registered with the NHS at ``nbma`` (and is it answering)?"""
        return any(r.nbma == nbma and r.up for r in self.nhs)

    def withdraw(self) -> None:
        """Ask every NHS we are registered with to forget us (Purge Request, no reply wanted)."""
        config = self.ctx.config
        for registration in self.nhs:
            if not registration.up:
                continue
            purge = Message(
                type=PacketType.PURGE_REQUEST,
                flags=PurgeFlag.NO_REPLY,
                request_id=self.ctx.new_request_id(),
                hop_count=config.hop_count,
                src_nbma=config.nbma_address,
                src_protocol=config.protocol_address,
                dst_protocol=registration.protocol or config.protocol_address,
                cies=self._registration_cies(),
            )
            self.ctx.send(registration.nbma, purge)
            self._set_state(registration, up=False, reason="withdrawn")
            registration.next_send = float("inf")
