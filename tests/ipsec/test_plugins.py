"""The plugin list charon loads: installed by the project's apt packages, and the docs show it as it is."""

from __future__ import annotations

from pathlib import Path

from dmvpn.ipsec.plugins import CHARON_PLUGINS, charon_load_setting

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIR = Path("/usr/lib/ipsec/plugins")


def test_every_listed_plugin_is_installed() -> None:
    missing = [name for name in CHARON_PLUGINS if not (PLUGIN_DIR / f"libstrongswan-{name}.so").exists()]
    assert not missing, f"not installed by tools/bootstrap.sh's packages: {missing}"


def test_no_plugin_that_inspects_traffic_is_listed() -> None:
    assert not {"forecast", "farp", "dhcp", "ha", "connmark", "kernel-libipsec"} & set(CHARON_PLUGINS)
    assert len(set(CHARON_PLUGINS)) == len(CHARON_PLUGINS)


def test_the_docs_show_the_setting_a_standalone_node_needs() -> None:
    assert f"  load = {charon_load_setting()}\n" in (ROOT / "docs" / "ipsec.md").read_text()
