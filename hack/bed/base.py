"""What every part of the test bed shares: the repository's paths, its error type and its progress log."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HACK = REPO / "hack"


class TestbedError(RuntimeError):
    """The test bed could not be built, started or reached; the message says which part."""


def log(msg: str) -> None:
    """Print a progress line to stderr (stdout is kept for `export` lines)."""
    print(f"testbed: {msg}", file=sys.stderr, flush=True)
