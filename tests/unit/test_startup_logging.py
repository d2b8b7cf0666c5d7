"""kopf's per-object logger keeps handler failures but drops the per-event handler and timer successes."""

from __future__ import annotations

import logging

import pytest

from slipway.handlers.startup import QuietSuccesses


def test_successes_are_dropped_and_failures_kept(caplog: pytest.LogCaptureFixture) -> None:
    objects = logging.getLogger("kopf.objects")
    quiet = QuietSuccesses()
    objects.addFilter(quiet)
    try:
        with caplog.at_level(logging.DEBUG, logger="kopf.objects"):
            objects.info("Timer 'tick' succeeded.")
            objects.info("Handler 'deployment_event' succeeded.")
            objects.error("Handler 'deployment_event' failed with an exception. Will ignore.")
            objects.error("Timer 'tick' failed with an exception. Will retry.")
    finally:
        objects.removeFilter(quiet)
    assert [r.getMessage() for r in caplog.records] == [
        "Handler 'deployment_event' failed with an exception. Will ignore.",
        "Timer 'tick' failed with an exception. Will retry.",
    ]
