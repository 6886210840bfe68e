"""``os`` for the ADD/DEL hot path, straight from the built-in ``posix`` module.

``import os`` executes os.py, _collections_abc, posixpath and stat: about 1 ms per plugin call,
a third of what the plugin spends on its own work (see bench/cni_bench.py). ``posix`` is compiled
into the interpreter and loaded at start-up anyway, and ``os`` re-exports its system calls; only
the few pure-Python path helpers we need are re-implemented here (for POSIX paths only, which is
all a Linux CNI plugin sees). Cold paths (CHECK, GC) simply use ``os``.
"""

from __future__ import annotations

import posix
import sys
from posix import (
    O_CLOEXEC,
    O_CREAT,
    O_RDONLY,
    O_TRUNC,
    O_WRONLY,
    POSIX_SPAWN_DUP2,
    X_OK,
    access,
    close,
    fstat,
    fsync,
    getpid,
    listdir,
    mkdir,
    pipe,
    posix_spawn,
    read,
    replace,
    stat,
    unlink,
    waitpid,
    waitstatus_to_exitcode,
    write,
)
from posix import open as open_fd

PATHSEP = ":"
_FILE_TYPE_MASK = 0o170000
_REGULAR_FILE = 0o100000
_DIRECTORY = 0o040000

__all__ = [
    "O_CLOEXEC",
    "O_CREAT",
    "O_RDONLY",
    "O_TRUNC",
    "O_WRONLY",
    "PATHSEP",
    "POSIX_SPAWN_DUP2",
    "basename",
    "close",
    "cni_environ",
    "dirname",
    "environ_bytes",
    "exists",
    "exit_now",
    "fstat",
    "fsync",
    "getpid",
    "is_executable_file",
    "join",
    "listdir",
    "makedirs",
    "open_fd",
    "pipe",
    "posix_spawn",
    "read",
    "replace",
    "stat",
    "unlink",
    "waitpid",
    "waitstatus_to_exitcode",
    "write",
]


def _decode(value: bytes) -> str:
    # What os.environ does on Linux: the filesystem encoding, undecodable bytes kept losslessly.
    return value.decode("utf-8", "surrogateescape")


def cni_environ() -> dict[str, str]:
    """The CNI_* variables of this process (the only ones the plugin reads)."""
    return {_decode(key): _decode(value) for key, value in posix.environ.items() if key.startswith(b"CNI_")}


def environ_bytes() -> dict[bytes, bytes]:
    """The whole environment, undecoded, to hand on to a delegate unchanged."""
    return dict(posix.environ)


def join(directory: str, name: str) -> str:
    if name.startswith("/") or not directory:
        return name
    return f"{directory.rstrip('/')}/{name}" if directory != "/" else f"/{name}"


def dirname(path: str) -> str:
    head = path.rpartition("/")[0]
    return head.rstrip("/") or ("/" if path.startswith("/") else "")


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def _mode(path: str) -> int | None:
    try:
        return stat(path).st_mode & _FILE_TYPE_MASK
    except (OSError, ValueError):
        return None


def exists(path: str) -> bool:
    return _mode(path) is not None


def is_executable_file(path: str) -> bool:
    return _mode(path) == _REGULAR_FILE and access(path, X_OK)


def makedirs(path: str, mode: int) -> None:
    """``os.makedirs(path, mode, exist_ok=True)``."""
    try:
        mkdir(path, mode)
    except FileExistsError:
        if _mode(path) != _DIRECTORY:
            raise
    except FileNotFoundError:
        parent = dirname(path)
        if not parent or parent == path:
            raise
        makedirs(parent, mode)
        makedirs(path, mode)


def exit_now(status: int) -> None:
    """Flush stdout/stderr and end the process without interpreter finalization.

    Tearing down the interpreter (module dicts, GC) costs about 1.3 ms of a plugin call and buys
    nothing here: by the time the plugin has answered, every file it wrote is closed.
    """
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):
            continue  # a closed or missing stream has nothing left to lose
    posix._exit(status)
