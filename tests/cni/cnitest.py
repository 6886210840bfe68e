"""Harness: run the dmvpn CNI plugin exactly as a container runtime does, inside test-made namespaces.

Every test gets a "node" network namespace in which the plugins run (so the bridge, the host
veths and the gateway address live there, not on the host), pod namespaces made with
``ip netns add``, and a private work directory for the node state, our records and host-local's
allocations. Everything is removed afterwards, whatever the outcome.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CNI_DIR = REPO / "cni"
PLUGIN = CNI_DIR / "dmvpn"
REFERENCE_PLUGINS = Path("/usr/lib/cni")
# What kubelet/containerd hand to plugins on a node: system directories only (no venv, no shims).
NODE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TIMEOUT = 60
# How long the kernel may take to destroy a deleted netns's devices (normally well under a second).
VETH_SETTLE_TIMEOUT = 5.0
# Run the whole suite on another interpreter: DMVPN_TEST_PYTHON=/path/to/python3.9 pytest tests/cni
TEST_PYTHON = os.environ.get("DMVPN_TEST_PYTHON", "")
_subnets = itertools.count(1)

# Unit tests of the package import it the way the launcher does.
sys.path.insert(0, str(CNI_DIR))


def need_host_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.fail("CNI tests need root (network namespaces, bridges, veths)")
    if not (REFERENCE_PLUGINS / "bridge").exists():
        pytest.fail("reference plugins missing: apt-get install containernetworking-plugins")


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, check=check)


def netns_add(name: str) -> None:
    sh("ip", "netns", "add", name)


def netns_del(name: str) -> None:
    sh("ip", "netns", "del", name, check=False)


def in_netns(name: str, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return sh("ip", "netns", "exec", name, *command, check=check)


def ip_json(netns: str, *args: str) -> Any:
    done = in_netns(netns, "ip", "-j", *args)
    return json.loads(done.stdout or "[]")


@dataclass
class PluginRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    @property
    def error_code(self) -> int:
        assert self.returncode != 0, f"expected a failure, got {self.stdout!r}"
        body = self.json
        assert set(body) <= {"cniVersion", "code", "msg", "details"}, body
        assert isinstance(body["msg"], str) and body["msg"], body
        return int(body["code"])


@dataclass
class Node:
    """One simulated Kubernetes node: its netns, the agent's state file and the plugin dirs."""

    netns: str
    workdir: Path
    subnet: str
    bridge: str
    network: str
    pods: list[str] = field(default_factory=list)
    tag: str = ""

    @property
    def state_file(self) -> Path:
        return self.workdir / "node-state.json"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "dmvpn"

    @property
    def ipam_dir(self) -> Path:
        return self.workdir / "ipam" / self.network

    def write_state(self, **overrides: Any) -> dict[str, Any]:
        state: dict[str, Any] = {
            "version": 1,
            "node": "node-a",
            "podCIDRs": [self.subnet],
            "mtu": 1362,
            "overlayPrefixes": ["10.244.0.0/16"],
            "tunnelInterface": "dmvpn0",
        }
        state.update(overrides)
        self.state_file.write_text(json.dumps(state))
        return state

    def conf(self, cni_version: str = "1.1.0", **overrides: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": cni_version,
            "name": self.network,
            "type": "dmvpn",
            "bridge": self.bridge,
            "nodeStateFile": str(self.state_file),
            "dataDir": str(self.data_dir),
            "ipamDataDir": str(self.workdir / "ipam"),
        }
        conf.update(overrides)
        return conf

    def pod(self) -> str:
        """A new pod sandbox: a netns made with ``ip netns add``; returns its name."""
        name = f"{self.tag}-pod{len(self.pods)}"
        netns_add(name)
        self.pods.append(name)
        return name

    def run(
        self,
        command: str,
        conf: dict[str, Any] | None = None,
        *,
        pod: str | None = None,
        container_id: str | None = None,
        ifname: str = "eth0",
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        drop: tuple[str, ...] = (),
        plugin: Path | str = PLUGIN,
        interpreter: list[str] | None = None,
    ) -> PluginRun:
        """Invoke a CNI plugin in the node netns with the CNI_* environment and stdin config."""
        variables = {
            "PATH": NODE_PATH,
            "CNI_COMMAND": command,
            "CNI_PATH": f"{REFERENCE_PLUGINS}{os.pathsep}{CNI_DIR}",
        }
        if pod is not None:
            variables.update(
                {
                    "CNI_CONTAINERID": container_id or pod,
                    "CNI_NETNS": f"/run/netns/{pod}",
                    "CNI_IFNAME": ifname,
                }
            )
        elif container_id is not None:
            variables.update({"CNI_CONTAINERID": container_id, "CNI_IFNAME": ifname})
        variables.update(env or {})
        for name in drop:
            variables.pop(name, None)
        payload = stdin if stdin is not None else json.dumps(conf if conf is not None else self.conf()).encode()
        done = subprocess.run(
            ["nsenter", f"--net=/run/netns/{self.netns}", *self._interpreter(plugin, interpreter), str(plugin)],
            input=payload,
            env=variables,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        return PluginRun(done.returncode, done.stdout.decode(), done.stderr.decode())

    @staticmethod
    def _interpreter(plugin: Path | str, interpreter: list[str] | None) -> list[str]:
        if interpreter is not None:
            return interpreter
        if TEST_PYTHON and Path(plugin).name == "dmvpn":
            return [TEST_PYTHON, "-I", "-S"]
        return []

    def add(self, pod: str, conf: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        done = self.run("ADD", conf, pod=pod, **kwargs)
        assert done.returncode == 0, f"ADD failed: {done.stdout} {done.stderr}"
        result: dict[str, Any] = done.json
        return result

    def delete(self, pod: str, conf: dict[str, Any] | None = None, **kwargs: Any) -> None:
        done = self.run("DEL", conf, pod=pod, **kwargs)
        assert done.returncode == 0, f"DEL failed: {done.stdout} {done.stderr}"
        assert done.stdout.strip() == ""

    def allocations(self) -> list[str]:
        """IPs host-local holds for this network (its bookkeeping files excluded)."""
        if not self.ipam_dir.exists():
            return []
        return sorted(
            entry.name
            for entry in self.ipam_dir.iterdir()
            if entry.name != "lock" and not entry.name.startswith("last_reserved_ip")
        )

    def records(self) -> list[str]:
        directory = self.data_dir / self.network
        return sorted(entry.name for entry in directory.iterdir()) if directory.exists() else []

    def host_veths(self) -> list[str]:
        return [link["ifname"] for link in ip_json(self.netns, "link", "show", "type", "veth")]

    def host_veths_once_settled(self, timeout: float = VETH_SETTLE_TIMEOUT) -> list[str]:
        """The host veths left after a pod netns was deleted, polling until none is left or ``timeout``.

        ``ip netns del`` only drops the last reference: the kernel tears the namespace down later
        (cleanup_net runs from a workqueue), and the host end of each veth goes with it, so right
        after the deletion it may still be listed. The caller still asserts the list is empty: a veth
        that outlives the timeout is a failure, not a delay.
        """
        deadline = time.monotonic() + timeout
        while True:
            left = self.host_veths()
            if not left or time.monotonic() >= deadline:
                return left
            time.sleep(0.05)


def address_of(result: dict[str, Any]) -> str:
    return str(result["ips"][0]["address"]).split("/")[0]


@contextlib.contextmanager
def make_node(workdir: Path) -> Iterator[Node]:
    need_host_prerequisites()
    tag = f"dcni{uuid.uuid4().hex[:6]}"
    index = next(_subnets) % 250 + 1
    built = Node(
        netns=f"{tag}-node",
        workdir=workdir,
        subnet=f"10.244.{index}.0/24",
        bridge=f"{tag}br",
        network=f"net-{tag}",
        tag=tag,
    )
    netns_add(built.netns)
    try:
        built.write_state()
        yield built
    finally:
        for pod in built.pods:
            netns_del(pod)
        netns_del(built.netns)
