"""The plugin works as the chart installs it: ``dmvpn`` + ``dmvpn_cni/`` copied into a CNI bin dir."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from cnitest import CNI_DIR, REFERENCE_PLUGINS, Node

# Interpreters as old as the plugin promises to run on, where this machine has them (pyenv).
OLD_PYTHONS = sorted(Path("/root/.pyenv/versions").glob("3.9*/bin/python3")) + sorted(
    Path("/root/.pyenv/versions").glob("3.10*/bin/python3")
)


def install(bin_dir: Path) -> Path:
    """What the chart's init container does (see docs/cni.md)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(CNI_DIR / "dmvpn", bin_dir / "dmvpn")
    shutil.copytree(CNI_DIR / "dmvpn_cni", bin_dir / "dmvpn_cni", ignore=shutil.ignore_patterns("__pycache__"))
    return bin_dir / "dmvpn"


def lifecycle(node: Node, plugin: Path, cni_path: str, interpreter: list[str] | None = None) -> None:
    options = {"plugin": plugin, "env": {"CNI_PATH": cni_path}, "interpreter": interpreter}
    pod = node.pod()
    result = node.add(pod, **options)
    done = node.run("CHECK", node.conf(prevResult=result), pod=pod, **options)
    assert done.returncode == 0, done.stdout + done.stderr
    gc_conf = node.conf()
    gc_conf["cni.dev/valid-attachments"] = [{"containerID": pod, "ifname": "eth0"}]
    for command, conf in (("STATUS", node.conf()), ("GC", gc_conf)):
        done = node.run(command, conf, **options)
        assert done.returncode == 0, done.stdout + done.stderr
    node.delete(pod, **options)
    assert node.allocations() == [] and node.records() == []


def test_copied_next_to_the_reference_plugins_it_runs_the_whole_lifecycle(node: Node) -> None:
    bin_dir = node.workdir / "opt-cni-bin"
    plugin = install(bin_dir)
    for reference in ("bridge", "host-local"):
        (bin_dir / reference).symlink_to(REFERENCE_PLUGINS / reference)
    lifecycle(node, plugin, str(bin_dir))


def test_a_symlinked_launcher_finds_its_package(node: Node) -> None:
    plugin = install(node.workdir / "opt-dmvpn")
    bin_dir = node.workdir / "bin"
    bin_dir.mkdir()
    (bin_dir / "dmvpn").symlink_to(plugin)
    lifecycle(node, bin_dir / "dmvpn", f"{REFERENCE_PLUGINS}:{bin_dir}")


def test_the_installed_copy_caches_its_bytecode_for_fast_start(node: Node) -> None:
    plugin = install(node.workdir / "opt-cni-bin")
    done = node.run("VERSION", stdin=b"", plugin=plugin)
    assert done.returncode == 0
    assert list((plugin.parent / "dmvpn_cni" / "__pycache__").glob("plugin.*.pyc"))


@pytest.mark.skipif(not OLD_PYTHONS, reason="no Python 3.9/3.10 on this machine")
@pytest.mark.parametrize("python", OLD_PYTHONS, ids=lambda path: path.parent.parent.name)
def test_the_oldest_supported_pythons_run_the_whole_lifecycle(node: Node, python: Path) -> None:
    plugin = install(node.workdir / "opt-cni-bin")
    lifecycle(node, plugin, f"{REFERENCE_PLUGINS}:{plugin.parent}", interpreter=[str(python), "-I", "-S"])


def test_an_installer_can_point_the_launcher_at_another_python(node: Node) -> None:
    plugin = install(node.workdir / "opt-cni-bin")
    lines = plugin.read_text().splitlines(keepends=True)
    python = OLD_PYTHONS[0] if OLD_PYTHONS else Path("/usr/bin/python3")
    plugin.write_text(f"#!{python} -IS\n" + "".join(lines[1:]))  # what docs/cni.md tells installers
    lifecycle(node, plugin, f"{REFERENCE_PLUGINS}:{plugin.parent}")
