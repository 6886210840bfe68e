"""Data-plane tests share the helpers in ``dplab`` (site configs, kernel views, bounded waits)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
