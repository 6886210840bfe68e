"""Running other CNI plugins (bridge, host-local) the way a runtime runs us.

The exec protocol: find the executable by name in CNI_PATH, start it with the CNI_* variables
and the config on stdin, read its stdout; exit status 0 means a result (or nothing), anything
else means an error JSON. We spawn with ``posix_spawn`` instead of ``subprocess``, which
would add several milliseconds of imports to every pod start.
"""

from __future__ import annotations

from dmvpn_cni import fastos, jsonio
from dmvpn_cni.protocol import INTERNAL_ERROR, INVALID_ENVIRONMENT, CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any

    JSONObject = dict[str, Any]

# SIGPIPE is 13 on every Linux architecture. We restore its default in children as subprocess
# does (Python ignores it); importing ``signal`` for the name would load ``enum``.
_SIGPIPE = 13
_VERSION_CACHE_FILE = "delegate-versions.json"
_ATTACHMENT_VARIABLES = (b"CNI_CONTAINERID", b"CNI_NETNS", b"CNI_IFNAME", b"CNI_ARGS")


def find_plugin(name: str, search_path: list[str]) -> str:
    for directory in search_path:
        candidate = fastos.join(directory, name)
        if fastos.is_executable_file(candidate):
            return candidate
    raise CNIError(
        INVALID_ENVIRONMENT,
        f"cannot find the {name} plugin in CNI_PATH",
        f"searched {fastos.PATHSEP.join(search_path) or '(nothing)'}; dmvpn delegates to the reference plugins "
        "bridge and host-local, install them (containernetworking-plugins) into one of these directories",
    )


class Attachment:
    """The CNI_* identity of one container interface, as passed on to delegates."""

    def __init__(self, container_id: str = "", netns: str = "", ifname: str = "", args: str = "") -> None:
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args

    def variables(self) -> dict[bytes, str]:
        return {
            b"CNI_CONTAINERID": self.container_id,
            b"CNI_NETNS": self.netns,
            b"CNI_IFNAME": self.ifname,
            b"CNI_ARGS": self.args,
        }


def invoke(
    plugin: str,
    command: str,
    conf: JSONObject,
    attachment: Attachment,
    search_path: list[str],
    while_running: Callable[[], None] | None = None,
) -> object | None:
    """Run ``plugin`` for ``command``; return its parsed stdout, or raise its error as a CNIError.

    ``while_running`` is called once the delegate has its config, before we wait for its answer:
    work that overlaps the delegate's instead of adding to the pod's start time."""
    env = _delegate_environment(fastos.environ_bytes(), command, attachment, search_path)
    stdout, status = _spawn(plugin, jsonio.dumps(conf).encode(), env, while_running)
    name = fastos.basename(plugin)
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
    base: Mapping[bytes, bytes], command: str, attachment: Attachment, search_path: list[str]
) -> dict[bytes, bytes]:
    """Our own environment (the runtime's) with this call's CNI_* variables."""
    env = {key: value for key, value in base.items() if key not in _ATTACHMENT_VARIABLES}
    env[b"CNI_COMMAND"] = command.encode()
    env[b"CNI_PATH"] = fastos.PATHSEP.join(search_path).encode("utf-8", "surrogateescape")
    for key, value in attachment.variables().items():
        if value:
            env[key] = value.encode("utf-8", "surrogateescape")
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


def _spawn(
    path: str, stdin_data: bytes, env: dict[bytes, bytes], while_running: Callable[[], None] | None = None
) -> tuple[bytes, int]:
    """Start ``path`` with a pipe on stdin and stdout (stderr is shared: it is for logs)."""
    in_read, in_write = fastos.pipe()
    out_read, out_write = fastos.pipe()
    try:
        pid = fastos.posix_spawn(
            path,
            [path],
            env,
            file_actions=[(fastos.POSIX_SPAWN_DUP2, in_read, 0), (fastos.POSIX_SPAWN_DUP2, out_write, 1)],
            setsigdef=(_SIGPIPE,),
        )
    except OSError as err:
        for fd in (in_read, in_write, out_read, out_write):
            fastos.close(fd)
        raise CNIError(INTERNAL_ERROR, f"cannot run {path}: {err.strerror}") from None
    fastos.close(in_read)
    fastos.close(out_write)
    try:
        _write_all(in_write, stdin_data)
    finally:
        fastos.close(in_write)
    chunks = []
    try:
        if while_running is not None:
            while_running()
        while True:
            chunk = fastos.read(out_read, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        fastos.close(out_read)
        _, wait_status = fastos.waitpid(pid, 0)
    return b"".join(chunks), fastos.waitstatus_to_exitcode(wait_status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    try:
        while view:
            view = view[fastos.write(fd, view) :]
    except BrokenPipeError:
        pass  # the child exited without reading its config; its exit status tells why


def supported_versions(plugin: str, cache_dir: str) -> list[str]:
    """The spec versions ``plugin`` speaks, remembered per binary so a pod start costs no extra exec."""
    try:
        info = fastos.stat(plugin)
    except OSError as err:
        raise CNIError(INTERNAL_ERROR, f"cannot stat {plugin}: {err.strerror}") from None
    stamp = [info.st_ino, info.st_size, info.st_mtime_ns]
    cache_path = fastos.join(cache_dir, _VERSION_CACHE_FILE)
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
    answer = invoke(plugin, "VERSION", {"cniVersion": "1.0.0"}, Attachment(), [fastos.dirname(plugin)])
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
    temporary = f"{path}.{fastos.getpid()}.tmp"
    try:
        fastos.makedirs(fastos.dirname(path), 0o700)
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(jsonio.dumps(cache))
        fastos.replace(temporary, path)
    except OSError:
        _remove_quietly(temporary)


def _remove_quietly(path: str) -> None:
    try:
        fastos.unlink(path)
    except OSError:
        return
