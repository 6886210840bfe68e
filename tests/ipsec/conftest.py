"""Helpers of the IPsec tests (recorded VICI messages, a fake charon, a throw-away PKI) are plain modules
next to the tests; with ``--import-mode=importlib`` their folder must be on sys.path."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
