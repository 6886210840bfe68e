"""Interop tests share the helpers in ``interop_harness`` (our lab NHRP node, FRR cache polling)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
