"""The kernel lab: network-namespace topologies and a virtme-ng guest for a real kernel data plane.

Used by the kernel tests (``tests/``), by ``make lab`` and by ``bench/``. It drives ``ip``, ``tc``
and friends through subprocess on purpose: the lab builds the world the product runs in, it is not
the product, so it must not share code paths (pyroute2) with what it is testing.
"""
