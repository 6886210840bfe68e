"""Turn netlink errno codes into messages a network engineer can act on."""

from __future__ import annotations

import errno
import os

from dmvpn.dataplane.types import DataplaneError

# errnos that mean "the thing is (not) there" and that callers treat as outcomes, not failures.
EEXIST = errno.EEXIST
ENOENT = errno.ENOENT
ESRCH = errno.ESRCH
ENODEV = errno.ENODEV
NOT_THERE = frozenset({ENOENT, ESRCH, ENODEV})


def errno_name(code: int) -> str:
    return f"{errno.errorcode.get(code, 'E?')} ({os.strerror(code)})"


def netlink_failure(action: str, code: int) -> DataplaneError:
    """A DataplaneError saying what we tried and the kernel's answer, e.g. 'add neighbour ...: EEXIST (...)'."""
    return DataplaneError(f"{action}: {errno_name(code)}")
