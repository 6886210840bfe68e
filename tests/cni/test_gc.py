"""GC (spec 1.1): attachments the runtime no longer lists are released, valid ones are kept."""

from __future__ import annotations

import os
import time
from typing import Any

from cnitest import Node, in_netns, netns_del

GC_INCOMPLETE = 102
INVALID_CONFIG = 7


def gc(node: Node, valid: list[tuple[str, str]], grace: float = 0, **conf: Any) -> Any:
    body = node.conf(gcGraceSeconds=grace, **conf)
    body["cni.dev/valid-attachments"] = [{"containerID": cid, "ifname": ifname} for cid, ifname in valid]
    return node.run("GC", body)


def test_gc_frees_a_leaked_allocation_nobody_recorded(node: Node) -> None:
    kept, leaked = node.pod(), node.pod()
    node.add(kept)
    node.add(leaked)
    # The leak: a crash lost our record and the runtime forgot the sandbox; host-local still holds the IP.
    (node.data_dir / node.network / f"{leaked}@eth0.json").unlink()
    assert len(node.allocations()) == 2

    done = gc(node, [(kept, "eth0")])
    assert (done.returncode, done.stdout) == (0, ""), done.stdout + done.stderr
    assert len(node.allocations()) == 1
    assert node.records() == [f"{kept}@eth0.json"]


def test_gc_releases_recorded_attachments_that_are_no_longer_valid(node: Node) -> None:
    kept, stale = node.pod(), node.pod()
    kept_address = node.add(kept)["ips"][0]["address"].split("/")[0]
    node.add(stale)

    done = gc(node, [(kept, "eth0")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.allocations() == [kept_address]
    assert node.records() == [f"{kept}@eth0.json"]
    # The stale pod's netns still existed, so its veth was removed too; the kept pod still works.
    assert "eth0" not in [line.split()[0] for line in in_netns(stale, "ip", "-br", "link").stdout.splitlines()]
    assert len(node.host_veths()) == 1


def test_gc_of_a_stale_attachment_whose_netns_is_gone(node: Node) -> None:
    stale = node.pod()
    node.add(stale)
    netns_del(stale)

    done = gc(node, [])
    assert done.returncode == 0, done.stdout + done.stderr
    assert node.allocations() == [] and node.records() == []


def test_gc_keeps_everything_valid(node: Node) -> None:
    pods = [node.pod(), node.pod()]
    for pod in pods:
        node.add(pod)
    before = node.allocations()

    done = gc(node, [(pod, "eth0") for pod in pods])
    assert done.returncode == 0
    assert node.allocations() == before
    assert len(node.records()) == 2


def test_gc_leaves_young_entries_alone_as_their_add_may_still_be_running(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    done = gc(node, [], grace=3600)
    assert done.returncode == 0
    assert len(node.allocations()) == 1 and len(node.records()) == 1


def test_gc_removes_torn_temporaries_of_a_crashed_add(node: Node) -> None:
    directory = node.data_dir / node.network
    directory.mkdir(parents=True)
    torn = directory / "c1@eth0.json.4242.tmp"
    torn.write_text('{"version": 1, "contai')
    old = time.time() - 7200
    os.utime(torn, (old, old))

    done = gc(node, [])
    assert done.returncode == 0
    assert not torn.exists()


def test_gc_works_without_node_state_when_a_record_names_the_ipam_config(node: Node) -> None:
    kept, leaked = node.pod(), node.pod()
    node.add(kept)
    node.add(leaked)
    (node.data_dir / node.network / f"{leaked}@eth0.json").unlink()
    node.state_file.unlink()

    done = gc(node, [(kept, "eth0")])
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(node.allocations()) == 1


def test_gc_without_the_valid_attachments_list_refuses_rather_than_deleting_everything(node: Node) -> None:
    node.add(node.pod())
    done = node.run("GC", node.conf(gcGraceSeconds=0))
    assert done.error_code == INVALID_CONFIG
    assert len(node.allocations()) == 1


def test_gc_accepts_the_older_attachments_key_libcni_also_sends(node: Node) -> None:
    pod = node.pod()
    node.add(pod)
    body = node.conf(gcGraceSeconds=0)
    body["cni.dev/attachments"] = [{"containerID": pod, "ifname": "eth0"}]
    done = node.run("GC", body)
    assert done.returncode == 0
    assert len(node.allocations()) == 1


def test_gc_with_malformed_attachments_is_code_7(node: Node) -> None:
    body = node.conf()
    body["cni.dev/valid-attachments"] = [{"containerID": 5}]
    done = node.run("GC", body)
    assert done.error_code == INVALID_CONFIG
