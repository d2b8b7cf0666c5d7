"""The suite's own layout: test modules collected by basename must not share one (pytest's rootdir-less import)."""

from __future__ import annotations

import collections
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_two_test_modules_share_a_basename():
    names = collections.Counter(p.name for p in TESTS.rglob("test_*.py"))
    assert [n for n, count in names.items() if count > 1] == [], "pytest imports them as one module: rename one"
