"""The Containerfile provides what the chart's containers run (no image build here: no daemon, no
registry for base images on build machines; this checks the contract between the two files)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from chartrender import manifests, one

ROOT = Path(__file__).resolve().parents[2]
CONTAINERFILE = (ROOT / "Containerfile").read_text()


def copied_sources() -> list[str]:
    sources: list[str] = []
    for line in CONTAINERFILE.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            sources += line.split()[1:-1]
    return sources


def test_every_copied_path_exists() -> None:
    for source in copied_sources():
        assert (ROOT / source).exists(), source


def test_the_image_has_the_commands_the_chart_runs() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"dmvpn-operator", "dmvpn-agent"} <= set(scripts)
    docs = manifests({})
    pod = one(docs, "DaemonSet", "-agent")["spec"]["template"]["spec"]
    commands = [c["command"][0] for c in pod["containers"]]
    commands.append(one(docs, "Deployment", "-operator")["spec"]["template"]["spec"]["containers"][0]["command"][0])
    for command in commands:
        if command.startswith("/"):
            assert command == "/usr/lib/ipsec/charon" and "strongswan-charon" in CONTAINERFILE
        else:
            assert command in scripts
    init_script = pod["initContainers"][0]["command"][2]
    for path in re.findall(r"/cni/[\w.]+", init_script):
        assert path.removeprefix("/cni/") in {"dmvpn", "dmvpn_cni", "10-dmvpn.conflist"}
    assert "COPY cni/dmvpn_cni /cni/dmvpn_cni" in CONTAINERFILE


def test_debian_slim_base_and_no_leftover_package_lists() -> None:
    assert "debian:bookworm-slim" in CONTAINERFILE
    assert CONTAINERFILE.count("rm -rf /var/lib/apt/lists/*") == CONTAINERFILE.count("apt-get update")
