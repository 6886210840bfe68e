"""Shared fixtures. Kernel tests (marker ``kernel``) run in a virtme-ng guest when this kernel lacks mGRE/ESP."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dmvpn.lab.topology import Lab

pytest_plugins = ["dmvpn.lab.pytest_plugin"]


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A fresh set of namespaces, removed after the test whatever its outcome."""
    with Lab() as built:
        yield built
