"""GC (spec 1.1): release every attachment of this network the runtime no longer knows.

Two kinds of leftovers exist. Attachments we recorded are undone with the recorded delegate
config (bridge DEL: host-local release, veth removal if the netns still exists). Allocations
host-local holds without a record of ours (a record lost in a crash, an ADD killed at the wrong
moment) are released by host-local itself: GC is forwarded to bridge (or else host-local) when it
speaks 1.1.0; older ones (Debian's 1.1.1 knows no GC) get a host-local DEL per leaked owner, which
we find by reading host-local's allocation files (``<ipamDataDir>/<network>/<ip>`` holding
``<containerID>\\r\\n<ifname>``).

Entries younger than ``gcGraceSeconds`` are left alone: an ADD that is still running is in no
runtime's list of valid attachments yet.
"""

from __future__ import annotations

import os
import time

from dmvpn_cni.config import NetConf, is_valid_name
from dmvpn_cni.delegate import Attachment, find_plugin, invoke, supported_versions
from dmvpn_cni.plugin import HOST_LOCAL, find_delegates, release_config, warn
from dmvpn_cni.protocol import GC_INCOMPLETE, INVALID_CONFIG, CNIError, pick_delegate_version
from dmvpn_cni.store import AttachmentStore

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    JSONObject = dict[str, Any]
    AttachmentKey = tuple[str, str]

_VALID_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")  # libcni sends both spellings
_HOST_LOCAL_BOOKKEEPING = ("lock", "last_reserved_ip")


def valid_attachments(raw: JSONObject) -> set[AttachmentKey]:
    for key in _VALID_KEYS:
        if key in raw:
            entries = raw[key]
            break
    else:
        # Never guess "none are valid": that would tear down every pod on the node.
        raise CNIError(INVALID_CONFIG, "GC needs the cni.dev/valid-attachments list")
    if not isinstance(entries, list):
        raise CNIError(INVALID_CONFIG, f"{key} must be a list")
    valid = set()
    for entry in entries:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("containerID"), str)
            or not isinstance(entry.get("ifname"), str)
        ):
            raise CNIError(INVALID_CONFIG, f"each entry of {key} needs containerID and ifname strings")
        valid.add((entry["containerID"], entry["ifname"]))
    return valid


def collect_garbage(conf: NetConf, search_path: list[str]) -> None:
    valid = valid_attachments(conf.raw)
    cutoff = time.time() - conf.gc_grace_seconds
    store = AttachmentStore(conf.data_dir, conf.name)
    bridge = find_delegates(search_path)
    failures = _release_recorded(store, bridge, valid, cutoff, search_path)
    host_local = find_plugin(HOST_LOCAL, search_path)
    if "1.1.0" in supported_versions(bridge, conf.data_dir):
        failures += _forward_gc(conf, store, bridge, valid, search_path, ipam_only=False)
    elif "1.1.0" in supported_versions(host_local, conf.data_dir):
        failures += _forward_gc(conf, store, host_local, valid, search_path, ipam_only=True)
    else:
        failures += _release_leaked_allocations(conf, store, valid, cutoff, search_path)
    if failures:
        raise CNIError(
            GC_INCOMPLETE,
            f"GC could not release {len(failures)} attachment(s); the next GC will retry",
            "; ".join(failures)[:4000],
        )


def _release_recorded(
    store: AttachmentStore, bridge: str, valid: set[AttachmentKey], cutoff: float, search_path: list[str]
) -> list[str]:
    failures = []
    for stored in store.scan():
        if stored.mtime > cutoff:
            continue
        record = stored.record
        if record is None:
            store.remove_name(stored.name)  # a torn temporary or garbage: nothing to undo
            continue
        if (record.container_id, record.ifname) in valid:
            continue
        netns = record.netns if record.netns and os.path.exists(record.netns) else ""
        try:
            invoke(
                bridge,
                "DEL",
                record.delegate,
                Attachment(record.container_id, netns, record.ifname),
                search_path,
            )
        except CNIError as err:
            failures.append(f"{record.container_id}/{record.ifname}: {err.msg}")
            continue
        store.remove(record.container_id, record.ifname)
    return failures


def _forward_gc(
    conf: NetConf,
    store: AttachmentStore,
    plugin: str,
    valid: set[AttachmentKey],
    search_path: list[str],
    *,
    ipam_only: bool,
) -> list[str]:
    """GC through a delegate that knows it: bridge (which passes it on to IPAM), or host-local itself."""
    found = release_config(conf, store, search_path)
    if found is None:
        return []
    delegate = found[1]
    forwarded = {"name": conf.name, "ipam": delegate["ipam"]} if ipam_only else dict(delegate)
    forwarded["cniVersion"] = "1.1.0"
    forwarded["cni.dev/valid-attachments"] = [{"containerID": cid, "ifname": name} for cid, name in sorted(valid)]
    try:
        invoke(plugin, "GC", forwarded, Attachment(), search_path)
    except CNIError as err:
        return [err.msg]
    return []


def _release_leaked_allocations(
    conf: NetConf, store: AttachmentStore, valid: set[AttachmentKey], cutoff: float, search_path: list[str]
) -> list[str]:
    leaked = leaked_allocations(os.path.join(conf.ipam_data_dir, conf.name), valid, cutoff)
    if not leaked:
        return []
    found = release_config(conf, store, search_path)
    if found is None:
        warn(f"GC: keeping {len(leaked)} leaked allocation(s): no node state or record names the IPAM config")
        return []
    host_local = find_plugin(HOST_LOCAL, search_path)
    version = pick_delegate_version(conf.cni_version, supported_versions(host_local, conf.data_dir), HOST_LOCAL)
    ipam_conf = {"cniVersion": version, "name": conf.name, "ipam": found[1]["ipam"]}
    failures = []
    for container_id, ifname in sorted(leaked):
        try:
            invoke(host_local, "DEL", ipam_conf, Attachment(container_id, "", ifname or "eth0"), search_path)
        except CNIError as err:
            failures.append(f"{container_id}/{ifname}: {err.msg}")
    return failures


def leaked_allocations(directory: str, valid: set[AttachmentKey], cutoff: float) -> set[AttachmentKey]:
    """Owners of host-local allocations in ``directory`` that are not valid attachments.

    An owner without an interface name (host-local before 0.8 wrote only the container ID) is
    kept when any valid attachment has that container ID.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return set()
    valid_containers = {container_id for container_id, _ in valid}
    leaked = set()
    for name in names:
        if name.startswith(".") or name.startswith(_HOST_LOCAL_BOOKKEEPING):
            continue
        path = os.path.join(directory, name)
        try:
            if os.stat(path).st_mtime > cutoff:
                continue
            with open(path, "rb") as handle:
                owner = handle.read().decode("utf-8", "replace").split()
        except OSError:
            continue
        # "<containerID>\r\n<ifname>"; neither may contain whitespace, so split() parses both formats.
        container_id = owner[0] if owner else ""
        ifname = owner[1] if len(owner) > 1 else ""
        if not is_valid_name(container_id) or len(owner) > 2:
            continue  # not an allocation file we understand: never release what we cannot parse
        if (container_id, ifname) in valid or (not ifname and container_id in valid_containers):
            continue
        leaked.add((container_id, ifname))
    return leaked
