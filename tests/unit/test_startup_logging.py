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


def test_startup_handlers_run_in_dependency_order() -> None:
    """kopf runs start-up handlers once each, in registration order: none may come before what it waits for.

    Out of order, a handler raises "waiting for startup.configure" and kopf logs it at ERROR
    ("Activity … failed temporarily") before retrying — alarming in a pod's log.
    """
    import kopf
    from kopf._core.intents.causes import Activity

    import slipway.handlers  # noqa: F401  (registers the handlers)

    ids = [h.id for h in kopf.get_default_registry()._activities.get_handlers(activity=Activity.STARTUP)]
    waits_for = {
        "configure": ["check_rbac"],
        "start_driver": ["configure"],
        "start_registry_sync": ["configure"],
        "start_notifier": ["configure"],
        "start_trainingruns": ["configure"],
        "start_alert_intake": ["configure", "start_driver", "start_registry_sync"],
    }
    assert set(waits_for) <= set(ids)
    assert ids[-1] == "freeze_heap", f"the heap is frozen once everything start-up builds exists: {ids}"
    for handler, before in waits_for.items():
        for needed in before:
            assert ids.index(needed) < ids.index(handler), f"{needed} must be registered before {handler}: {ids}"
