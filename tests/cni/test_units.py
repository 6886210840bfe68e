"""Pure parts of the plugin, tested in-process: JSON codec, version conversion, validation, GC parsing.

``dmvpn_cni`` is importable because the conftest puts ``cni/`` on sys.path, as the launcher does.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dmvpn_cni import jsonio
from dmvpn_cni.config import cidr_problem, ifname_problem, is_valid_name
from dmvpn_cni.gc import leaked_allocations
from dmvpn_cni.protocol import CNIError, convert_result, pick_delegate_version

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(), children, max_size=5),
    max_leaves=30,
)


@given(JSON_VALUES)
def test_jsonio_round_trips_and_agrees_with_the_json_module(value: Any) -> None:
    text = jsonio.dumps(value)
    assert json.loads(text) == value
    assert jsonio.loads(text) == value
    assert jsonio.loads(json.dumps(value, indent=2)) == value


@pytest.mark.parametrize("text", ["", " ", "{", "[1,]", '{"a" 1}', "nul", "1 2", '{"a": NaN}', "Infinity", '"\x01"'])
def test_jsonio_rejects_what_the_json_spec_rejects(text: str) -> None:
    with pytest.raises(jsonio.JSONError):
        jsonio.loads(text)


def test_jsonio_refuses_to_write_what_json_cannot_hold() -> None:
    for value in (math.nan, math.inf, {1: "a"}, object()):
        with pytest.raises((ValueError, TypeError)):
            jsonio.dumps(value)


LEGACY_RESULT = {
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "br"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
    "ips": [
        {"version": "4", "interface": 2, "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
        {"version": "6", "interface": 2, "address": "fd00::2/64"},
    ],
    "routes": [{"dst": "0.0.0.0/0"}],
    "dns": {},
}


def test_results_convert_between_the_0x_and_1x_formats() -> None:
    current = convert_result(LEGACY_RESULT, "1.0.0")
    assert current["cniVersion"] == "1.0.0"
    assert all("version" not in ip for ip in current["ips"])
    back = convert_result(current, "0.3.1")
    assert [ip["version"] for ip in back["ips"]] == ["4", "6"]
    assert back["interfaces"] == LEGACY_RESULT["interfaces"]
    assert LEGACY_RESULT["ips"][0]["version"] == "4"  # the input is not modified


def test_1_1_fields_are_dropped_for_older_versions() -> None:
    result = {
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "mtu": 1362, "socketPath": "/s", "pciID": "0000:00:01.0"}],
        "ips": [],
        "routes": [{"dst": "0.0.0.0/0", "mtu": 1300, "advmss": 1260, "priority": 5, "table": 7, "scope": 0}],
    }
    older = convert_result(result, "1.0.0")
    assert older["interfaces"] == [{"name": "eth0"}]
    assert older["routes"] == [{"dst": "0.0.0.0/0"}]
    assert convert_result(result, "1.1.0") == result


def test_delegate_version_is_the_requested_one_or_the_newest_below_it() -> None:
    bridge = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert pick_delegate_version("0.4.0", bridge, "bridge") == "0.4.0"
    assert pick_delegate_version("1.1.0", bridge, "bridge") == "1.0.0"
    with pytest.raises(CNIError) as failure:
        pick_delegate_version("1.0.0", ["0.1.0", "0.2.0"], "bridge")
    assert failure.value.code == 1


@pytest.mark.parametrize(
    ("value", "valid"),
    [("abc", True), ("a1_b.c-d", True), ("0abc", True), ("-abc", False), ("_a", False), ("", False), ("a b", False)],
)
def test_names_follow_the_spec(value: str, valid: bool) -> None:
    assert is_valid_name(value) is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [("eth0", True), ("net@1", True), ("a" * 15, True), ("a" * 16, False), ("", False), (".", False), ("a/b", False)],
)
def test_interface_names_follow_linux(value: str, valid: bool) -> None:
    assert (ifname_problem(value) == "") is valid


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("10.244.1.0/24", True),
        ("fd00:10:244::/64", True),
        ("::/0", True),
        ("10.244.1.0", False),
        ("10.244.1.0/33", False),
        ("10.244.1/24", False),
        ("300.1.1.1/8", False),
        ("fd00::/129", False),
        ("nonsense/8", False),
    ],
)
def test_cidr_shape_check(value: str, valid: bool) -> None:
    assert (cidr_problem(value) == "") is valid


def test_leaked_allocations_parses_both_host_local_file_formats(tmp_path: Path) -> None:
    files = {
        "10.244.1.2": "kept\r\neth0",
        "10.244.1.3": "gone\r\neth0",
        "10.244.1.4": "legacy-gone",
        "10.244.1.5": "kept",  # legacy format, its container is still valid
        "10.244.1.6": "bad id!\r\neth0",  # unparsable: never released
        "lock": "",
        "last_reserved_ip.0": "10.244.1.6",
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content.encode())
    old = time.time() - 100
    for entry in tmp_path.iterdir():
        os.utime(entry, (old, old))
    (tmp_path / "10.244.1.7").write_bytes(b"young\r\neth0")  # still within the grace period

    leaked = leaked_allocations(str(tmp_path), {("kept", "eth0")}, cutoff=time.time() - 10)
    assert leaked == {("gone", "eth0"), ("legacy-gone", "")}


@given(JSON_VALUES)
def test_jsonio_without_the_c_accelerator_falls_back_to_the_json_module(value: Any) -> None:
    saved = jsonio._scan, jsonio._escape
    jsonio._scan, jsonio._escape = None, None
    try:
        assert jsonio.loads(jsonio.dumps(value)) == value
        with pytest.raises(jsonio.JSONError):
            jsonio.loads('{"a": NaN}')
    finally:
        jsonio._scan, jsonio._escape = saved


def _add_invocation(tmp_path: Path) -> Any:
    from dmvpn_cni.plugin import Invocation

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("bridge", "host-local"):  # found on CNI_PATH; never run (invoke is replaced below)
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    state = tmp_path / "node-state.json"
    state.write_text(json.dumps({"version": 1, "podCIDRs": ["10.244.9.0/24"], "mtu": 1400}))
    conf = {"cniVersion": "1.0.0", "name": "unit", "type": "dmvpn", "nodeStateFile": str(state),
            "dataDir": str(tmp_path / "data")}  # fmt: skip
    environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0",
               "CNI_PATH": str(bin_dir)}  # fmt: skip
    return Invocation(environ, json.dumps(conf).encode())


def test_add_flushes_the_record_while_the_delegate_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dmvpn_cni import plugin
    from dmvpn_cni.store import AttachmentStore

    events: list[str] = []
    monkeypatch.setattr(plugin, "delegate_version", lambda conf, bridge: "1.0.0")
    monkeypatch.setattr(AttachmentStore, "make_durable", lambda self, cid, ifname: events.append(f"fsync {cid}"))

    def fake_invoke(path: str, command: str, conf: Any, attachment: Any, search: Any, while_running: Any = None) -> Any:
        events.append(command)
        assert (tmp_path / "data" / "unit" / "c1@eth0.json").exists(), "recorded before the delegate runs"
        if while_running is not None:
            while_running()
        return {"cniVersion": "1.0.0", "interfaces": [], "ips": []}

    monkeypatch.setattr(plugin, "invoke", fake_invoke)
    result = plugin.cmd_add(_add_invocation(tmp_path))
    assert result["cniVersion"] == "1.0.0"
    assert events == ["ADD", "fsync c1"]


def test_add_whose_record_cannot_be_flushed_is_rolled_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dmvpn_cni import plugin
    from dmvpn_cni.protocol import IO_FAILURE
    from dmvpn_cni.store import AttachmentStore

    commands: list[str] = []
    monkeypatch.setattr(plugin, "delegate_version", lambda conf, bridge: "1.0.0")

    def failing_flush(self: AttachmentStore, cid: str, ifname: str) -> None:
        raise OSError(5, "Input/output error")

    def fake_invoke(path: str, command: str, conf: Any, attachment: Any, search: Any, while_running: Any = None) -> Any:
        commands.append(command)
        if while_running is not None:
            while_running()
        return {"cniVersion": "1.0.0", "interfaces": [], "ips": []} if command == "ADD" else None

    monkeypatch.setattr(AttachmentStore, "make_durable", failing_flush)
    monkeypatch.setattr(plugin, "invoke", fake_invoke)
    with pytest.raises(CNIError) as raised:
        plugin.cmd_add(_add_invocation(tmp_path))
    assert raised.value.code == IO_FAILURE and "Input/output error" in raised.value.msg
    assert commands == ["ADD", "DEL"], "the delegate's work is undone"
    assert list((tmp_path / "data" / "unit").iterdir()) == [], "and the record removed"


def test_a_record_saved_without_fsync_is_made_durable_later(tmp_path: Path) -> None:
    from dmvpn_cni.store import AttachmentRecord, AttachmentStore

    store = AttachmentStore(str(tmp_path), "net")
    record = AttachmentRecord("c1", "eth0", netns="/run/netns/x", cni_version="1.1.0", delegate={"type": "bridge"})
    store.save(record, durable=False)
    store.make_durable("c1", "eth0")
    loaded = store.load("c1", "eth0")
    assert loaded is not None and loaded.delegate == {"type": "bridge"}
    with pytest.raises(FileNotFoundError):
        store.make_durable("c2", "eth0")
