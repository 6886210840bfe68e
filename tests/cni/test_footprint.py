"""The plugin runs on the node's bare python3: standard library only, and little of it on the hot path."""

from __future__ import annotations

import re
import sys
from typing import Any

import pytest
from cnitest import PLUGIN, Node

# Each of these costs a millisecond or more of start-up (json pulls in re and enum); ADD/DEL must not need them.
HEAVY = {"os", "json", "re", "enum", "typing", "subprocess", "ipaddress", "dataclasses", "signal", "socket", "shutil"}
OWN_PACKAGE = "dmvpn_cni"


def imported_modules(node: Node, command: str, conf: dict[str, Any] | None = None, **kwargs: Any) -> set[str]:
    done = node.run(command, conf, interpreter=["python3", "-I", "-S", "-X", "importtime"], **kwargs)
    assert done.returncode == 0, done.stdout + done.stderr
    return set(re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+(\S+)$", done.stderr, flags=re.MULTILINE))


def assert_stdlib_only(modules: set[str]) -> None:
    assert modules, "no import was traced"
    foreign = {name for name in modules if name.split(".")[0] not in sys.stdlib_module_names | {OWN_PACKAGE}}
    assert foreign == set()


def test_add_and_del_import_only_the_standard_library_and_nothing_heavy(node: Node) -> None:
    pod = node.pod()
    for command in ("ADD", "DEL"):
        modules = imported_modules(node, command, pod=pod)
        assert_stdlib_only(modules)
        assert modules & HEAVY == set(), f"{command} imported {sorted(modules & HEAVY)}"
        assert f"{OWN_PACKAGE}.plugin" in modules


def test_every_other_command_imports_only_the_standard_library(node: Node) -> None:
    pod = node.pod()
    result = node.add(pod)
    check_conf = node.conf(prevResult=result)
    gc_conf = node.conf()
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": pod, "ifname": "eth0"}]
    for command, conf in (("CHECK", check_conf), ("STATUS", None), ("GC", gc_conf), ("VERSION", None)):
        assert_stdlib_only(imported_modules(node, command, conf, pod=pod))


def test_the_plugin_runs_without_site_packages_or_environment(node: Node) -> None:
    # The launcher itself asks for -I -S; a hostile PYTHONPATH on the node changes nothing.
    done = node.run("VERSION", stdin=b"", env={"PYTHONPATH": "/nonexistent", "PYTHONSTARTUP": "/nonexistent"})
    assert done.returncode == 0
    assert PLUGIN.read_text().splitlines()[0] == "#!/usr/bin/python3 -IS"


@pytest.mark.parametrize("module", ["plugin", "jsonio", "delegate", "store", "config", "protocol", "check", "gc"])
def test_package_modules_import_nothing_outside_the_standard_library(module: str) -> None:
    import ast

    from cnitest import CNI_DIR

    tree = ast.parse((CNI_DIR / OWN_PACKAGE / f"{module}.py").read_text())
    names = set()
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            names.update(alias.name.split(".")[0] for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom) and statement.level == 0 and statement.module:
            names.add(statement.module.split(".")[0])
    allowed = set(sys.stdlib_module_names) | {OWN_PACKAGE, "__future__"}
    assert names - allowed == set()
