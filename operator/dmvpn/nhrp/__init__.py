"""NHRP (RFC 2332 + DMVPN Phase 3 extensions) for kube-dmvpn.

* :mod:`dmvpn.nhrp.codec` - pure wire codec (bytes <-> frozen dataclasses).
* :mod:`dmvpn.nhrp.cache` - pure NHRP cache with longest-prefix lookup and change events.
* :mod:`dmvpn.nhrp.counters` - pure packet/drop counters.
* :mod:`dmvpn.nhrp.engine` - sans-IO client (NHC) and server (NHS) state machines.
* :mod:`dmvpn.nhrp.transport` - the only I/O here: an asyncio AF_PACKET socket on the mGRE device.

See ``docs/nhrp.md``.
"""
