"""Fixtures of the CNI plugin tests; the harness itself is in ``cnitest``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from cnitest import Node, make_node


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A simulated node (netns, node state, plugin dirs), removed afterwards whatever happens."""
    with make_node(tmp_path) as built:
        yield built
