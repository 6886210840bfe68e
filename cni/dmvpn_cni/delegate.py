"""Running other CNI plugins (bridge, host-local) the way a runtime runs us.

The exec protocol: find the executable by name in CNI_PATH, start it with the CNI_* variables
and the config on stdin, read its stdout; exit status 0 means a result (or nothing), anything
else means an error JSON. We spawn with ``os.posix_spawn`` instead of ``subprocess``, which
would add several milliseconds of imports to every pod start.
"""

from __future__ import annotations

import os

from dmvpn_cni import jsonio
from dmvpn_cni.protocol import INTERNAL_ERROR, INVALID_ENVIRONMENT, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    JSONObject = dict[str, Any]

# SIGPIPE is 13 on every Linux architecture. We restore its default in children as subprocess
# does (Python ignores it); importing ``signal`` for the name would load ``enum``.
_SIGPIPE = 13
_VERSION_CACHE_FILE = "delegate-versions.json"
_ATTACHMENT_VARIABLES = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS")


def find_plugin(name: str, search_path: list[str]) -> str:
    for directory in search_path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(
        INVALID_ENVIRONMENT,
        f"cannot find the {name} plugin in CNI_PATH",
        f"searched {os.pathsep.join(search_path) or '(nothing)'}; dmvpn delegates to the reference plugins "
        "bridge and host-local, install them (containernetworking-plugins) into one of these directories",
    )


class Attachment:
    """The CNI_* identity of one container interface, as passed on to delegates."""

    def __init__(self, container_id: str = "", netns: str = "", ifname: str = "", args: str = "") -> None:
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args

    def variables(self) -> dict[str, str]:
        return {
            "CNI_CONTAINERID": self.container_id,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": self.ifname,
            "CNI_ARGS": self.args,
        }


def invoke(
    plugin: str, command: str, conf: JSONObject, attachment: Attachment, search_path: list[str]
) -> object | None:
    """Run ``plugin`` for ``command``; return its parsed stdout, or raise its error as a CNIError."""
    env = _delegate_environment(os.environ, command, attachment, search_path)
    stdout, status = _spawn(plugin, jsonio.dumps(conf).encode(), env)
    name = os.path.basename(plugin)
    if status == 0:
        text = stdout.decode("utf-8", "replace").strip()
        if not text:
            return None
        try:
            return jsonio.loads(text)
        except jsonio.JSONError as err:
            raise CNIError(INTERNAL_ERROR, f"{name} {command} printed a result that is not JSON", str(err)) from None
    raise _delegate_error(name, command, stdout, status)


def _delegate_environment(
    base: Mapping[str, str], command: str, attachment: Attachment, search_path: list[str]
) -> dict[str, str]:
    env = {key: value for key, value in base.items() if key not in _ATTACHMENT_VARIABLES}
    env["CNI_COMMAND"] = command
    env["CNI_PATH"] = os.pathsep.join(search_path)
    for key, value in attachment.variables().items():
        if value:
            env[key] = value
    return env


def _delegate_error(name: str, command: str, stdout: bytes, status: int) -> CNIError:
    """Pass the delegate's own error code through; prefix its message with who said it."""
    text = stdout.decode("utf-8", "replace").strip()
    try:
        body = jsonio.loads(text) if text else None
    except jsonio.JSONError:
        body = None
    how = f"exit status {status}" if status >= 0 else f"killed by signal {-status}"
    if isinstance(body, dict) and isinstance(body.get("code"), int):
        msg = body.get("msg")
        details = body.get("details")
        return CNIError(
            body["code"],
            f"{name} {command} failed: {msg if isinstance(msg, str) else 'no message'}",
            details if isinstance(details, str) else "",
        )
    return CNIError(INTERNAL_ERROR, f"{name} {command} failed with {how}", text[:2000])


def _spawn(path: str, stdin_data: bytes, env: dict[str, str]) -> tuple[bytes, int]:
    """Start ``path`` with a pipe on stdin and stdout (stderr is shared: it is for logs)."""
    in_read, in_write = os.pipe()
    out_read, out_write = os.pipe()
    try:
        pid = os.posix_spawn(
            path,
            [path],
            env,
            file_actions=[(os.POSIX_SPAWN_DUP2, in_read, 0), (os.POSIX_SPAWN_DUP2, out_write, 1)],
            setsigdef=(_SIGPIPE,),
        )
    except OSError as err:
        for fd in (in_read, in_write, out_read, out_write):
            os.close(fd)
        raise CNIError(INTERNAL_ERROR, f"cannot run {path}: {err.strerror}") from None
    os.close(in_read)
    os.close(out_write)
    try:
        _write_all(in_write, stdin_data)
    finally:
        os.close(in_write)
    chunks = []
    try:
        while True:
            chunk = os.read(out_read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(out_read)
        _, wait_status = os.waitpid(pid, 0)
    return b"".join(chunks), os.waitstatus_to_exitcode(wait_status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except BrokenPipeError:
        pass  # the child exited without reading its config; its exit status tells why


def supported_versions(plugin: str, cache_dir: str) -> list[str]:
    """The spec versions ``plugin`` speaks, remembered per binary so a pod start costs no extra exec."""
    try:
        info = os.stat(plugin)
    except OSError as err:
        raise CNIError(INTERNAL_ERROR, f"cannot stat {plugin}: {err.strerror}") from None
    stamp = [info.st_ino, info.st_size, info.st_mtime_ns]
    cache_path = os.path.join(cache_dir, _VERSION_CACHE_FILE)
    cache = _read_cache(cache_path)
    entry = cache.get(plugin)
    if isinstance(entry, dict) and entry.get("stamp") == stamp:
        cached = entry.get("versions")
        if isinstance(cached, list) and all(isinstance(item, str) for item in cached):
            return cached
    versions = _query_versions(plugin)
    cache[plugin] = {"stamp": stamp, "versions": versions}
    _write_cache(cache_path, cache)
    return versions


def _query_versions(plugin: str) -> list[str]:
    answer = invoke(plugin, "VERSION", {"cniVersion": "1.0.0"}, Attachment(), [os.path.dirname(plugin)])
    versions = answer.get("supportedVersions") if isinstance(answer, dict) else None
    if not isinstance(versions, list) or not all(isinstance(item, str) for item in versions):
        raise CNIError(INTERNAL_ERROR, f"{plugin} VERSION did not list supportedVersions", repr(answer)[:500])
    return versions


def _read_cache(path: str) -> JSONObject:
    try:
        with open(path, encoding="utf-8") as handle:
            value = jsonio.loads(handle.read())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_cache(path: str, cache: JSONObject) -> None:
    """Best effort: a lost cache only costs one VERSION exec next time."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(jsonio.dumps(cache))
        os.replace(temporary, path)
    except OSError:
        _remove_quietly(temporary)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        return
