"""Phase 2 on-demand resolution: the kernel asks userspace for the NBMA address of a tunnel address.

With NOARP cleared and app_solicit=1, ucast/mcast_solicit=0 on the mGRE device, a packet to a tunnel
address without a neighbour entry makes the kernel create an INCOMPLETE entry and multicast an
RTM_GETNEIGH ('who has X') to RTNLGRP_NEIGH; we answer with RTM_NEWNEIGH (lladdr = NBMA).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

from dmvpn.dataplane.types import Solicitation


class SolicitationListener:
    """``async with SolicitationListener("dmvpn0", netns=...) as asks: async for ask in asks: ...``.

    Subscribed when ``__aenter__`` returns: solicitations from then on are delivered, each once per
    kernel probe (about one per second while packets wait for an answer).
    """

    def __init__(self, ifname: str, *, netns: str | None = None) -> None:
        self.ifname = ifname
        self.netns = netns

    async def __aenter__(self) -> SolicitationListener:
        raise NotImplementedError

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        raise NotImplementedError

    def __aiter__(self) -> AsyncIterator[Solicitation]:
        raise NotImplementedError
