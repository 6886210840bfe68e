"""The kernel-lab plugin deals whole test files to guests, evenly."""

from __future__ import annotations

from dmvpn.lab.pytest_plugin import split_by_file


def test_files_are_never_split_and_load_is_balanced() -> None:
    ids = [f"a.py::t{i}" for i in range(4)] + [f"b.py::t{i}" for i in range(2)] + [f"c.py::t{i}" for i in range(2)]
    shards = split_by_file(ids, 2)
    assert sorted(len(shard) for shard in shards) == [4, 4]
    for shard in shards:
        assert len({nodeid.split("::")[0] for nodeid in shard}) in (1, 2)
    assert sorted(nodeid for shard in shards for nodeid in shard) == sorted(ids)


def test_never_more_shards_than_files() -> None:
    assert split_by_file(["a.py::t1", "a.py::t2"], 4) == [["a.py::t1", "a.py::t2"]]
