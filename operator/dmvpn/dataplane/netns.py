"""Run a little code inside a network namespace (sysctls, raw sockets) without moving the event loop.

``setns(CLONE_NEWNET)`` is per thread: a short-lived dedicated thread enters the namespace, runs the
function and ends, so no pooled thread (and not the loop's thread) ever changes namespace. A socket
made in that thread stays in the namespace after the thread is gone.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections.abc import Callable
from typing import TypeVar

from dmvpn.dataplane.types import NamespaceGone

CLONE_NEWNET = 0x40000000
T = TypeVar("T")


def netns_path(netns: str) -> str:
    """A namespace name (``ip netns``) or a path (CNI_NETNS, /proc/<pid>/ns/net) as a path."""
    return netns if "/" in netns else f"/run/netns/{netns}"


def _setns(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError as err:
        raise NamespaceGone(f"network namespace {path} does not exist") from err
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns({path}): {os.strerror(code)}")
    finally:
        os.close(fd)


def call_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Blocking: run ``fn`` in the namespace (in a throwaway thread) or here when ``netns`` is None."""
    if netns is None:
        return fn()
    path = netns_path(netns)
    result: list[T] = []
    failure: list[BaseException] = []

    def runner() -> None:
        try:
            _setns(path)
            result.append(fn())
        except BaseException as err:  # handed to the caller below
            failure.append(err)

    thread = threading.Thread(target=runner, name=f"netns:{netns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]


async def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """Async: the same, off the event loop."""
    return await asyncio.to_thread(call_in_netns, netns, fn)
