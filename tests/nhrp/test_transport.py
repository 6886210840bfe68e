"""The AF_PACKET transport: its receive/send logic with a stub socket, and a real packet across
kernel multipoint GRE between two namespaces (``kernel``: runs in the virtme-ng guest)."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
from ipaddress import IPv4Address

import pytest

from dmvpn.lab.topology import Lab, LabError, add_static_mgre, hub_and_spokes
from dmvpn.nhrp.codec import Address, Message, PacketType, decode, encode
from dmvpn.nhrp.transport import NHRPTransport, nbma_from_link_address


class StubSocket:
    def __init__(self, incoming: list[tuple[bytes, tuple[str, int, int, int, bytes]]]) -> None:
        self.incoming = incoming
        self.sent: list[tuple[bytes, tuple[str, int, int, int, bytes]]] = []
        self.error: OSError | None = None

    def recvfrom(self, size: int) -> tuple[bytes, tuple[str, int, int, int, bytes]]:
        if not self.incoming:
            raise BlockingIOError
        return self.incoming.pop(0)

    def sendto(self, data: bytes, address: tuple[str, int, int, int, bytes]) -> int:
        if self.error is not None:
            raise self.error
        self.sent.append((data, address))
        return len(data)

    def fileno(self) -> int:
        return -1

    def close(self) -> None:
        pass


def test_receive_reports_the_sender_nbma_and_skips_our_own_packets() -> None:
    got: list[tuple[bytes, Address]] = []
    stub = StubSocket(
        [
            (b"one", ("gre1", 0x2001, socket.PACKET_HOST, 778, bytes([198, 51, 100, 10]))),
            (b"ours", ("gre1", 0x2001, socket.PACKET_OUTGOING, 778, bytes([192, 0, 2, 1]))),
            (b"odd", ("gre1", 0x2001, socket.PACKET_HOST, 778, b"\x01\x02")),
            (b"two", ("gre1", 0x2001, socket.PACKET_HOST, 778, bytes([203, 0, 113, 7]))),
        ]
    )
    transport = NHRPTransport(stub, "gre1", lambda data, nbma: got.append((data, nbma)))  # type: ignore[arg-type]
    transport._readable()
    assert got == [(b"one", IPv4Address("198.51.100.10")), (b"two", IPv4Address("203.0.113.7"))]


def test_send_puts_the_nbma_address_in_the_link_layer_address() -> None:
    stub = StubSocket([])
    transport = NHRPTransport(stub, "gre1", lambda data, nbma: None)  # type: ignore[arg-type]
    assert transport.send(IPv4Address("198.51.100.10"), b"nhrp")
    assert stub.sent == [(b"nhrp", ("gre1", 0x2001, 0, 0, bytes([198, 51, 100, 10])))]
    stub.error = OSError(105, "No buffer space available")
    assert not transport.send(IPv4Address("198.51.100.10"), b"nhrp")
    assert transport.send_errors == 1
    stub.error = OSError(9, "Bad file descriptor")
    with pytest.raises(OSError):
        transport.send(IPv4Address("198.51.100.10"), b"nhrp")


def test_link_addresses() -> None:
    assert nbma_from_link_address(bytes(4)) == IPv4Address("0.0.0.0")
    assert nbma_from_link_address(bytes(16)) is not None
    assert nbma_from_link_address(b"") is None


# --- kernel -----------------------------------------------------------------------------------------

ECHO_PEER = textwrap.dedent(
    """
    import asyncio, socket, sys
    from dmvpn.nhrp.transport import NHRPTransport

    async def main():
        loop = asyncio.get_running_loop()
        got = loop.create_future()
        def on_packet(data, nbma):
            if not got.done():
                got.set_result((data, nbma))
        transport = NHRPTransport.open(socket.if_nametoindex("gre1"), on_packet)
        transport.start()
        print("READY", flush=True)
        data, nbma = await asyncio.wait_for(got, 120)  # generous: a loaded guest starts Python slowly
        print(nbma, data.hex(), flush=True)
        transport.send(nbma, data)  # echo it back to where it came from
        await asyncio.sleep(0.5)
        transport.close()

    asyncio.run(main())
    """
)


SENDER = textwrap.dedent(
    """
    import asyncio, socket, sys
    from ipaddress import IPv4Address
    from dmvpn.nhrp.transport import NHRPTransport

    async def main(peer, data):
        loop = asyncio.get_running_loop()
        echoed = loop.create_future()
        def on_packet(packet, nbma):
            if not echoed.done():
                echoed.set_result((packet, nbma))
        with NHRPTransport.open(socket.if_nametoindex("gre1"), on_packet) as transport:
            transport.start()
            for _ in range(60):  # the first packets may race the peer's socket: bounded retries
                transport.send(peer, data)
                try:
                    packet, nbma = await asyncio.wait_for(asyncio.shield(echoed), 1.0)
                except TimeoutError:
                    continue
                print(nbma, packet.hex(), flush=True)
                return
        sys.exit("no echo from the peer")

    asyncio.run(main(IPv4Address(sys.argv[1]), bytes.fromhex(sys.argv[2])))
    """
)


@pytest.mark.kernel
def test_an_nhrp_packet_crosses_multipoint_gre_both_ways(lab: Lab) -> None:
    hub, spoke = hub_and_spokes(lab, spokes=1, with_pods=False)
    add_static_mgre(hub)
    add_static_mgre(spoke)
    packet = encode(
        Message(
            type=PacketType.REGISTRATION_REQUEST,
            request_id=7,
            src_nbma=hub.nbma,
            src_protocol=hub.tunnel_ip,
            dst_protocol=spoke.tunnel_ip,
        )
    )
    peer = subprocess.Popen(
        spoke.ns.argv(sys.executable, "-c", ECHO_PEER), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert peer.stdout is not None
        ready = peer.stdout.readline().strip()
        assert ready == "READY", ready
        try:
            echoed = hub.ns.run(sys.executable, "-c", SENDER, str(spoke.nbma), packet.hex(), timeout=180).split()
        except LabError as error:
            peer.kill()
            raise AssertionError(f"{error}\npeer said: {peer.communicate(timeout=10)[0]!r}") from None
        received = peer.stdout.readline().split()
        assert peer.wait(timeout=30) == 0
    finally:
        if peer.poll() is None:
            peer.kill()
            peer.wait(timeout=5)
    assert received == [str(hub.nbma), packet.hex()]  # the spoke sees the hub's NBMA address as the source
    assert echoed == [str(spoke.nbma), packet.hex()]
    assert decode(bytes.fromhex(echoed[1])).packet_type == PacketType.REGISTRATION_REQUEST
