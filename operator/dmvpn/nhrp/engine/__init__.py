"""Sans-IO NHRP state machines: an NHC (spoke), an NHS (hub), or both (a hub of a region).

>>> engine = Engine(EngineConfig(protocol_address=..., nbma_address=..., nhs=(NHSConfig(nbma=...),)))
>>> actions = engine.start(now)          # then: receive(), tick() at next_deadline(), resolve(), hairpin()

See ``docs/nhrp.md``.
"""

from dmvpn.nhrp.engine.actions import (
    Action,
    CacheChanged,
    NATAddressChanged,
    NHSStateChanged,
    ResolutionDone,
    ResolutionFailed,
    Send,
)
from dmvpn.nhrp.engine.client import NHSRegistration
from dmvpn.nhrp.engine.config import EngineConfig, NhsAnswers, NHSConfig, StaticMapping
from dmvpn.nhrp.engine.core import Engine

__all__ = [
    "Action",
    "CacheChanged",
    "Engine",
    "EngineConfig",
    "NATAddressChanged",
    "NHSConfig",
    "NHSRegistration",
    "NHSStateChanged",
    "NhsAnswers",
    "ResolutionDone",
    "ResolutionFailed",
    "Send",
    "StaticMapping",
]
