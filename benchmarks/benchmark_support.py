"""What the benchmark scripts share: the project root, and running the real CLI quietly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_tuner(*args: str) -> None:
    """Runs ``python -m tuner ARGS`` from the project root, output discarded; raises if it fails."""
    subprocess.run(
        [sys.executable, "-m", "tuner", "--log-level", "warning", *args],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
