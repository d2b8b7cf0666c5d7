"""kopf's per-object logger keeps handler outcomes but drops the once-a-second timer successes."""

from __future__ import annotations

import logging

import pytest

from slipway.handlers.startup import QuietTimers


def test_timer_successes_are_dropped_and_the_rest_kept(caplog: pytest.LogCaptureFixture) -> None:
    objects = logging.getLogger("kopf.objects")
    quiet = QuietTimers()
    objects.addFilter(quiet)
    try:
        with caplog.at_level(logging.DEBUG, logger="kopf.objects"):
            objects.info("Timer 'tick' succeeded.")
            objects.info("Handler 'changed' succeeded.")
            objects.error("Timer 'tick' failed with an exception. Will retry.")
    finally:
        objects.removeFilter(quiet)
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'changed' succeeded.",
        "Timer 'tick' failed with an exception. Will retry.",
    ]
