"""The NHRP transport: an AF_PACKET socket on the mGRE device (the only I/O in ``dmvpn.nhrp``).

NHRP rides directly on GRE (protocol type 0x2001). A ``SOCK_DGRAM`` packet socket bound to the
tunnel device sends and receives exactly the NHRP bytes; the kernel's GRE header operations use the
link-layer address of ``sockaddr_ll`` as the outer destination, so sending to a peer means passing
its NBMA address (4 bytes for an IPv4 underlay) as that address, and a received packet's link-layer
source address is the NBMA address it came from - after NAT, i.e. the address to answer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address

from dmvpn.nhrp.codec import ETHERTYPE_NHRP, Address

log = logging.getLogger(__name__)

MAX_DATAGRAM = 0xFFFF
MAX_READS_PER_WAKEUP = 64  # keep one busy peer from starving the event loop
_TRANSIENT_SEND_ERRORS = frozenset({errno.EAGAIN, errno.ENOBUFS, errno.EHOSTUNREACH, errno.ENETUNREACH})

PacketHandler = Callable[[bytes, Address], None]


def nbma_from_link_address(address: bytes) -> Address | None:
    """The NBMA address in a received ``sockaddr_ll`` (4 bytes: IPv4 GRE, 16: ip6gre)."""
    if len(address) == 4:
        return IPv4Address(address)
    if len(address) == 16:
        return IPv6Address(address)
    return None


class NHRPTransport:
    """Receive NHRP packets into ``on_packet(data, nbma)`` and send them with :meth:`send`."""

    def __init__(self, sock: socket.socket, ifname: str, on_packet: PacketHandler) -> None:
        self._sock = sock
        self._ifname = ifname
        self._on_packet = on_packet
        self._loop: asyncio.AbstractEventLoop | None = None
        self.send_errors = 0

    @classmethod
    def open(cls, ifindex: int, on_packet: PacketHandler) -> NHRPTransport:
        """Open a non-blocking packet socket for NHRP on the device with index ``ifindex``."""
        ifname = socket.if_indextoname(ifindex)
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETHERTYPE_NHRP))
        try:
            sock.setblocking(False)
            sock.bind((ifname, ETHERTYPE_NHRP))
        except BaseException:
            sock.close()
            raise
        return cls(sock, ifname, on_packet)

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Start delivering received packets from the event loop."""
        self._loop = loop or asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)

    def send(self, nbma: Address, data: bytes) -> bool:
        """Send one NHRP packet to the peer at ``nbma``; False on a transient failure (the engine's
        retries cover it), other errors raise."""
        try:
            self._sock.sendto(data, (self._ifname, ETHERTYPE_NHRP, 0, 0, nbma.packed))
        except OSError as error:
            if error.errno not in _TRANSIENT_SEND_ERRORS:
                raise
            self.send_errors += 1
            log.debug("NHRP send to %s failed: %s", nbma, error)
            return False
        return True

    def _readable(self) -> None:
        for _ in range(MAX_READS_PER_WAKEUP):
            try:
                data, address = self._sock.recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # e.g. the device went away; the agent notices through netlink
                log.warning("NHRP receive on %s failed: %s", self._ifname, error)
                return
            if address[2] == socket.PACKET_OUTGOING:
                continue  # packet sockets also see what we (or the kernel) send
            nbma = nbma_from_link_address(address[4])
            if nbma is None:
                continue
            self._on_packet(data, nbma)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop = None
        self._sock.close()

    def __enter__(self) -> NHRPTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
