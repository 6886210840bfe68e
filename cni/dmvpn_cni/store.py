"""Per-attachment records: the delegate config an ADD used, so DEL and GC never need the agent.

Layout: ``<dataDir>/<network>/<containerID>@<ifname>.json``. Container IDs cannot contain ``@``
(the spec limits them to letters, digits, ``_``, ``.``, ``-``), so the first ``@`` splits the
name unambiguously even though interface names may contain one.
"""

from __future__ import annotations

from dmvpn_cni import fastos, jsonio

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    JSONObject = dict[str, Any]

RECORD_VERSION = 1
_SUFFIX = ".json"


class AttachmentRecord:
    """What DEL/GC/CHECK need to undo or verify one ADD."""

    def __init__(
        self,
        container_id: str,
        ifname: str,
        *,
        netns: str,
        cni_version: str,
        delegate: JSONObject,
        mtime: float = 0.0,
    ) -> None:
        self.container_id = container_id
        self.ifname = ifname
        self.netns = netns
        self.cni_version = cni_version
        self.delegate = delegate
        self.mtime = mtime

    def to_json_object(self) -> JSONObject:
        return {
            "version": RECORD_VERSION,
            "containerID": self.container_id,
            "ifname": self.ifname,
            "netns": self.netns,
            "cniVersion": self.cni_version,
            "delegate": self.delegate,
        }

    @classmethod
    def from_json_object(cls, raw: object, mtime: float) -> AttachmentRecord | None:
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            return None
        fields = [raw.get(key) for key in ("containerID", "ifname", "netns", "cniVersion")]
        delegate = raw.get("delegate")
        if not all(isinstance(field, str) for field in fields) or not isinstance(delegate, dict):
            return None
        container_id, ifname, netns, cni_version = (str(field) for field in fields)
        return cls(container_id, ifname, netns=netns, cni_version=cni_version, delegate=delegate, mtime=mtime)


class AttachmentStore:
    def __init__(self, data_dir: str, network: str) -> None:
        self.directory = fastos.join(data_dir, network)

    def path(self, container_id: str, ifname: str) -> str:
        return fastos.join(self.directory, f"{container_id}@{ifname}{_SUFFIX}")

    def save(self, record: AttachmentRecord, *, durable: bool = True) -> None:
        """Write atomically: a running reader sees the old record, the new one, or none, never a torn file.

        ``durable=False`` skips the ``fsync`` before the rename; the caller must then call
        :meth:`make_durable` before it relies on the record surviving a power loss (ADD does so while
        the delegate runs, so the disk flush costs a pod start no time).
        """
        fastos.makedirs(self.directory, 0o700)
        final = self.path(record.container_id, record.ifname)
        temporary = f"{final}.{fastos.getpid()}.tmp"
        data = jsonio.dumps(record.to_json_object()).encode()
        fd = fastos.open_fd(temporary, fastos.O_WRONLY | fastos.O_CREAT | fastos.O_TRUNC | fastos.O_CLOEXEC, 0o600)
        try:
            try:
                fastos.write(fd, data)
                if durable:
                    # A reboot must not leave an empty record behind a rename: DEL after a node
                    # restart is exactly when the record matters.
                    fastos.fsync(fd)
            finally:
                fastos.close(fd)
            fastos.replace(temporary, final)
        except BaseException:
            _unlink_quietly(temporary)
            raise

    def make_durable(self, container_id: str, ifname: str) -> None:
        """``fsync`` a record saved with ``durable=False`` (raises OSError when the disk fails)."""
        fd = fastos.open_fd(self.path(container_id, ifname), fastos.O_RDONLY | fastos.O_CLOEXEC)
        try:
            fastos.fsync(fd)
        finally:
            fastos.close(fd)

    def load(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        """The record, or None when it is missing or unreadable (callers then fall back)."""
        return self._load_path(self.path(container_id, ifname))

    def _load_path(self, path: str) -> AttachmentRecord | None:
        try:
            with open(path, "rb") as handle:
                mtime = fastos.fstat(handle.fileno()).st_mtime
                raw = handle.read()
            return AttachmentRecord.from_json_object(jsonio.loads(raw.decode("utf-8")), mtime)
        except (OSError, ValueError):
            return None

    def remove(self, container_id: str, ifname: str) -> None:
        _unlink_quietly(self.path(container_id, ifname))

    def scan(self) -> list[StoredFile]:
        """Every file of this network: loadable records, and leftovers (torn temporaries, garbage)."""
        try:
            names = sorted(fastos.listdir(self.directory))
        except FileNotFoundError:
            return []
        found = []
        for name in names:
            path = fastos.join(self.directory, name)
            record = self._load_path(path) if name.endswith(_SUFFIX) else None
            if record is not None:
                mtime = record.mtime
            else:
                try:
                    mtime = fastos.stat(path).st_mtime
                except OSError:
                    continue
            found.append(StoredFile(name, record, mtime))
        return found

    def remove_name(self, name: str) -> None:
        _unlink_quietly(fastos.join(self.directory, name))


class StoredFile:
    def __init__(self, name: str, record: AttachmentRecord | None, mtime: float) -> None:
        self.name = name
        self.record = record
        self.mtime = mtime


def _unlink_quietly(path: str) -> None:
    try:
        fastos.unlink(path)
    except FileNotFoundError:
        return
