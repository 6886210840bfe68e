"""A small NFLOG (NETLINK_NETFILTER) reader: pyroute2 has none. Parsing is pure and unit-tested."""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

from dmvpn.dataplane.types import HairpinEvent


def parse_nflog_packet(message: bytes) -> HairpinEvent | None:
    """Decode one NFULNL_MSG_PACKET netlink message into an event; None for non-IPv4 or other messages."""
    raise NotImplementedError


class NflogReader:
    """``async with NflogReader(group=1, netns=...) as reader: async for event in reader: ...``.

    Binds the NFLOG group (copy mode packet, ``copy_range`` bytes, queue threshold 1 so nothing is
    batched) when ``__aenter__`` returns.
    """

    def __init__(self, group: int, *, netns: str | None = None, copy_range: int = 128) -> None:
        self.group = group
        self.netns = netns
        self.copy_range = copy_range

    async def __aenter__(self) -> NflogReader:
        raise NotImplementedError

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[HairpinEvent]:
        raise NotImplementedError
