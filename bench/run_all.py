"""Run every ``bench/*_bench.py`` in sequence and print their outputs (``make bench`` runs this in a guest).

Each benchmark is a separate process with its own time bound; one failing does not stop the others, but
the exit status is non-zero when any failed.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
TIMEOUT_S = 1800.0


def main() -> int:
    failed: list[str] = []
    for script in sorted(BENCH_DIR.glob("*_bench.py")):
        print(f"\n######## {script.name}", flush=True)
        start = time.monotonic()
        try:
            code = subprocess.run([sys.executable, str(script)], check=False, timeout=TIMEOUT_S).returncode
        except subprocess.TimeoutExpired:
            code = -1
            print(f"{script.name}: timed out after {TIMEOUT_S:.0f} s", flush=True)
        print(f"######## {script.name}: exit {code} in {time.monotonic() - start:.0f} s", flush=True)
        if code != 0:
            failed.append(script.name)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
