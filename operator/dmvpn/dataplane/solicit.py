"""Phase 2 on-demand resolution: the kernel asks userspace for the NBMA address of a tunnel address.

With NOARP cleared and app_solicit=1, ucast/mcast_solicit=0 on the mGRE device, a packet to a tunnel
address without a neighbour entry makes the kernel create an INCOMPLETE entry and, on its probe,
multicast an RTM_GETNEIGH ('who has X', ``neigh_app_ns``) to RTNLGRP_NEIGH (seen on Debian's 6.1);
we answer with RTM_NEWNEIGH (lladdr = NBMA). Without an answer the entry turns FAILED after
retrans_time (1 s) and the next packet asks again. FRR nhrpd listens for the same message.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.rtnl import RTMGRP_NEIGH

from dmvpn.dataplane.netns import netns_path
from dmvpn.dataplane.rtnl import parse_neigh
from dmvpn.dataplane.types import DataplaneError, NamespaceGone, Solicitation

RTM_GETNEIGH = 30


def solicitation_from(msg: Any, ifindex: int) -> Solicitation | None:
    """A kernel 'who has' for our device, or None for any other neighbour message."""
    if msg["header"]["type"] != RTM_GETNEIGH or msg["family"] != socket.AF_INET:
        return None
    if int(msg["ifindex"]) != ifindex:
        return None
    entry = parse_neigh(msg)
    return None if entry is None else Solicitation(entry.dst, ifindex)


class SolicitationListener:
    """``async with SolicitationListener("dmvpn0", netns=...) as asks: async for ask in asks: ...``.

    Subscribed when ``__aenter__`` returns: solicitations from then on are delivered, one per kernel
    probe (about one per second per address while packets wait for an answer). The device must exist
    at enter; if it is recreated (new ifindex), open a new listener.
    """

    def __init__(self, ifname: str, *, netns: str | None = None) -> None:
        self.ifname = ifname
        self.netns = netns
        self.ifindex = 0
        self._ipr: Any = None

    async def __aenter__(self) -> SolicitationListener:
        kwargs: dict[str, Any] = {"groups": RTMGRP_NEIGH}
        if self.netns is not None:
            kwargs.update(netns=netns_path(self.netns), flags=0)
        ipr = AsyncIPRoute(**kwargs)
        try:
            # Bind before any request: a netlink socket that already sent something is autobound and
            # cannot join groups by bind() any more.
            await ipr.bind(groups=RTMGRP_NEIGH)
            found = await ipr.link_lookup(ifname=self.ifname)
            if not found:
                raise DataplaneError(f"device {self.ifname} not found: create the tunnel first")
            self.ifindex = int(found[0])
        except OSError as err:
            ipr.close()
            raise NamespaceGone(f"cannot listen in namespace {self.netns}: {err}") from err
        except BaseException:
            ipr.close()
            raise
        self._ipr = ipr
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._ipr is not None:
            self._ipr.close()
            self._ipr = None

    def __aiter__(self) -> AsyncIterator[Solicitation]:
        return self._events()

    async def _events(self) -> AsyncIterator[Solicitation]:
        if self._ipr is None:
            raise DataplaneError("listener is not open (use 'async with')")
        while self._ipr is not None:
            # One get() returns the messages of one datagram (the socket's queue is the buffer).
            async for msg in self._ipr.get():
                ask = solicitation_from(msg, self.ifindex)
                if ask is not None:
                    yield ask
            await asyncio.sleep(0)
