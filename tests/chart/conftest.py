"""The chart tests import their helpers from ``chartrender`` beside them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
