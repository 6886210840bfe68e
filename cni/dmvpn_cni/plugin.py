"""The ``dmvpn`` CNI plugin: commands ADD, DEL, CHECK, VERSION, STATUS and GC.

dmvpn owns no datapath of its own on the pod side: it reads the node's pod CIDRs and tunnel MTU
from the state file the dmvpn agent publishes and delegates to the reference ``bridge`` plugin
with ``host-local`` IPAM, like flannel does. What it adds is the glue: the delegate config is
recorded per attachment so DEL/GC work when the agent or its state are gone, results are
converted between spec versions, and a failed ADD is rolled back completely.
"""

from __future__ import annotations

import sys

from dmvpn_cni import fastos, jsonio
from dmvpn_cni.config import (
    CniEnv,
    NetConf,
    NodeStateUnavailable,
    bridge_delegate_config,
    load_node_state,
    parse_json_config,
)
from dmvpn_cni.delegate import Attachment, find_plugin, invoke, supported_versions
from dmvpn_cni.protocol import (
    INTERNAL_ERROR,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    IO_FAILURE,
    LATEST_VERSION,
    NO_ATTACHMENT_RECORD,
    NOT_AVAILABLE,
    NOT_AVAILABLE_LIMITED,
    SUPPORTED_VERSIONS,
    TRY_AGAIN_LATER,
    CNIError,
    at_least,
    convert_result,
    pick_delegate_version,
    require_version,
)
from dmvpn_cni.store import AttachmentRecord, AttachmentStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, BinaryIO

    JSONObject = dict[str, Any]

BRIDGE = "bridge"
HOST_LOCAL = "host-local"


def warn(message: str) -> None:
    """Unstructured notes go to stderr, which runtimes log (the spec reserves stdout for JSON)."""
    sys.stderr.write(f"dmvpn: {message}\n")


class Invocation:
    """One run of the plugin: its environment, its stdin, and the version errors are reported in."""

    def __init__(self, environ: Mapping[str, str], stdin: bytes) -> None:
        self.env = CniEnv(environ)
        self.stdin = stdin
        self.reply_version = LATEST_VERSION

    def net_conf(self) -> NetConf:
        raw = parse_json_config(self.stdin)
        version = raw.get("cniVersion")
        if isinstance(version, str) and version in SUPPORTED_VERSIONS:
            self.reply_version = version
        return NetConf(raw)

    def attachment(self) -> Attachment:
        return Attachment(self.env.container_id, self.env.netns, self.env.ifname, self.env.args)


def delegate_version(conf: NetConf, bridge: str) -> str:
    return pick_delegate_version(conf.cni_version, supported_versions(bridge, conf.data_dir), BRIDGE)


def find_delegates(search_path: list[str]) -> str:
    """The bridge plugin's path, after making sure its IPAM plugin is there too (clearer error)."""
    find_plugin(HOST_LOCAL, search_path)
    return find_plugin(BRIDGE, search_path)


def with_prev_result(delegate_conf: JSONObject, prev_result: JSONObject | None) -> JSONObject:
    if prev_result is not None:
        delegate_conf["prevResult"] = convert_result(prev_result, delegate_conf["cniVersion"])
    return delegate_conf


def cmd_add(call: Invocation) -> JSONObject:
    call.env.require_attachment(need_netns=True)
    conf = call.net_conf()
    try:
        state = load_node_state(conf.node_state_file)
    except NodeStateUnavailable as err:
        raise CNIError(
            TRY_AGAIN_LATER,
            "dmvpn node state is not available yet",
            f"{err.reason}; the dmvpn agent writes it once the node has a pod CIDR and its tunnel is up",
        ) from None
    bridge = find_delegates(call.env.path)
    version = delegate_version(conf, bridge)
    delegate = bridge_delegate_config(conf, state, version)
    store = AttachmentStore(conf.data_dir, conf.name)
    record = AttachmentRecord(
        call.env.container_id,
        call.env.ifname,
        netns=call.env.netns,
        cni_version=conf.cni_version,
        delegate=delegate,
    )
    # Recorded before the delegate runs: if we are killed half-way, DEL still knows what to undo.
    # The disk flush (fsync) overlaps the delegate's run and completes before we answer.
    try:
        store.save(record, durable=False)
    except OSError as err:
        raise record_failure(store, err) from None
    flush_failures: list[OSError] = []

    def flush_record() -> None:
        try:
            store.make_durable(record.container_id, record.ifname)
        except OSError as err:
            flush_failures.append(err)

    try:
        result = invoke(
            bridge,
            "ADD",
            conf.with_request_fields(delegate, version),
            call.attachment(),
            call.env.path,
            while_running=flush_record,
        )
        if flush_failures:
            raise record_failure(store, flush_failures[0])
        if not isinstance(result, dict):
            raise CNIError(INTERNAL_ERROR, "bridge ADD printed no result object")
        return add_result(result, conf.cni_version, call.env.ifname, state.mtu)
    except BaseException:
        undo_add(call, conf, store, bridge=bridge, delegate=conf.with_request_fields(delegate, version))
        raise


def record_failure(store: AttachmentStore, err: OSError) -> CNIError:
    return CNIError(
        IO_FAILURE,
        f"cannot record the attachment under {store.directory}: {err.strerror}",
        "dmvpn keeps each pod's delegate config there so that DEL works without the agent; "
        "check the dataDir setting and that the directory is writable",
    )


def add_result(result: JSONObject, cni_version: str, ifname: str, mtu: int) -> JSONObject:
    converted = convert_result(result, cni_version)
    if at_least(cni_version, "1.1.0") and isinstance(converted.get("interfaces"), list):
        converted["interfaces"] = [_with_sandbox_mtu(entry, ifname, mtu) for entry in converted["interfaces"]]
    return converted


def _with_sandbox_mtu(entry: object, ifname: str, mtu: int) -> object:
    """1.1.0 results can carry the interface MTU; we know it for the pod's interface."""
    if isinstance(entry, dict) and entry.get("sandbox") and entry.get("name") == ifname:
        return {**entry, "mtu": mtu}
    return entry


def undo_add(call: Invocation, conf: NetConf, store: AttachmentStore, *, bridge: str, delegate: JSONObject) -> None:
    """Leave nothing behind a failed ADD: veth, IPAM allocation and our record."""
    try:
        invoke(bridge, "DEL", delegate, call.attachment(), call.env.path)
    except CNIError as err:
        who = f"{call.env.container_id}/{call.env.ifname}"
        warn(f"rolling back the failed ADD of {who}: {err.msg} {err.details}")
        return  # keep the record: a later DEL or GC can still finish the cleanup
    store.remove(call.env.container_id, call.env.ifname)


def cmd_del(call: Invocation) -> None:
    call.env.require_attachment(need_netns=False)
    conf = call.net_conf()
    store = AttachmentStore(conf.data_dir, conf.name)
    record = store.load(call.env.container_id, call.env.ifname)
    if record is not None:
        delegate = record.delegate
        bridge = find_delegates(call.env.path)
    else:
        found = release_config(conf, store, call.env.path)
        if found is None:
            warn(
                f"DEL {call.env.container_id}/{call.env.ifname}: no record, no node state and no other "
                "attachment to learn the IPAM config from; nothing to release"
            )
            return
        bridge, delegate = found
    delegate_conf = with_prev_result(
        conf.with_request_fields(delegate, str(delegate.get("cniVersion", conf.cni_version))),
        conf.prev_result,
    )
    invoke(bridge, "DEL", delegate_conf, call.attachment(), call.env.path)
    store.remove(call.env.container_id, call.env.ifname)


def release_config(conf: NetConf, store: AttachmentStore, search_path: list[str]) -> tuple[str, JSONObject] | None:
    """A delegate config good enough to release IPAM when the attachment's own record is gone.

    host-local releases by container ID and interface name, so any config naming this network's
    ranges will do: the agent's current node state, else the record of another attachment.
    """
    try:
        state = load_node_state(conf.node_state_file)
    except NodeStateUnavailable:
        state = None
    if state is None:
        others = [stored.record for stored in store.scan() if stored.record is not None]
        if not others:
            return None
        return find_delegates(search_path), others[0].delegate
    bridge = find_delegates(search_path)
    return bridge, bridge_delegate_config(conf, state, delegate_version(conf, bridge))


def cmd_check(call: Invocation) -> None:
    call.env.require_attachment(need_netns=True)
    conf = call.net_conf()
    require_version(conf.cni_version, "0.4.0", "CHECK")
    if conf.prev_result is None:
        raise CNIError(INVALID_CONFIG, "CHECK needs prevResult", "the runtime must pass the result of ADD")
    store = AttachmentStore(conf.data_dir, conf.name)
    record = store.load(call.env.container_id, call.env.ifname)
    if record is None:
        raise CNIError(
            NO_ATTACHMENT_RECORD,
            f"dmvpn has no record of container {call.env.container_id} interface {call.env.ifname}",
            f"expected {store.path(call.env.container_id, call.env.ifname)}; the attachment was not made "
            "by this node's dmvpn plugin or was deleted",
        )
    from dmvpn_cni.check import verify_sandbox

    mtu = record.delegate.get("mtu")
    verify_sandbox(call.env.netns, call.env.ifname, conf.prev_result, mtu if isinstance(mtu, int) else None)
    bridge = find_delegates(call.env.path)
    version = str(record.delegate.get("cniVersion", conf.cni_version))
    delegate_conf = with_prev_result(conf.with_request_fields(record.delegate, version), conf.prev_result)
    invoke(bridge, "CHECK", delegate_conf, call.attachment(), call.env.path)


def cmd_version(call: Invocation) -> JSONObject:
    requested = LATEST_VERSION
    if call.stdin.strip():
        raw = parse_json_config(call.stdin)
        if isinstance(raw.get("cniVersion"), str):
            requested = raw["cniVersion"]
    return {"cniVersion": requested, "supportedVersions": list(SUPPORTED_VERSIONS)}


def cmd_status(call: Invocation) -> None:
    conf = call.net_conf()
    require_version(conf.cni_version, "1.1.0", "STATUS")
    try:
        state = load_node_state(conf.node_state_file)
    except NodeStateUnavailable as err:
        code = NOT_AVAILABLE if err.missing else NOT_AVAILABLE_LIMITED
        raise CNIError(code, "dmvpn is not ready: node state unavailable", err.reason) from None
    if not call.env.path:
        return
    try:
        bridge = find_delegates(call.env.path)
    except CNIError as err:
        raise CNIError(NOT_AVAILABLE, err.msg, err.details) from None
    versions = supported_versions(bridge, conf.data_dir)
    if "1.1.0" in versions:
        invoke(bridge, "STATUS", bridge_delegate_config(conf, state, "1.1.0"), Attachment(), call.env.path)


def cmd_gc(call: Invocation) -> None:
    call.env.require_path()
    conf = call.net_conf()
    require_version(conf.cni_version, "1.1.0", "GC")
    from dmvpn_cni.gc import collect_garbage

    collect_garbage(conf, call.env.path)


HANDLERS: dict[str, Callable[[Invocation], JSONObject | None]] = {
    "ADD": cmd_add,
    "DEL": cmd_del,
    "CHECK": cmd_check,
    "VERSION": cmd_version,
    "STATUS": cmd_status,
    "GC": cmd_gc,
}


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, JSONObject | None]:
    """Dispatch one invocation; return the exit status and the JSON to print (if any)."""
    call = Invocation(environ, stdin)
    try:
        handler = HANDLERS.get(call.env.command)
        if handler is None:
            raise CNIError(
                INVALID_ENVIRONMENT,
                f"CNI_COMMAND {call.env.command!r} is not supported" if call.env.command else "CNI_COMMAND is not set",
                f"dmvpn understands {', '.join(HANDLERS)}",
            )
        return 0, handler(call)
    except CNIError as err:
        return 1, err.to_json_object(call.reply_version)
    except Exception as err:  # a bug: still answer in the protocol so the runtime logs something useful
        import traceback

        details = "".join(traceback.format_exception_only(type(err), err)).strip()
        return 1, CNIError(INTERNAL_ERROR, "internal error in the dmvpn plugin", details).to_json_object(
            call.reply_version
        )


def read_stdin(stream: BinaryIO | None) -> bytes:
    if stream is None:
        return b""
    try:
        return stream.read()
    except OSError as err:
        raise CNIError(IO_FAILURE, f"cannot read the network configuration from stdin: {err.strerror}") from None


def main() -> int:
    body: JSONObject | None
    try:
        stdin = read_stdin(getattr(sys.stdin, "buffer", None))
    except CNIError as err:
        status, body = 1, err.to_json_object(LATEST_VERSION)
    else:
        status, body = run(fastos.cni_environ(), stdin)
    if body is not None:
        sys.stdout.write(jsonio.dumps(body))
        sys.stdout.write("\n")
        sys.stdout.flush()
    return status
