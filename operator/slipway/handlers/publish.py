"""Write a reconcile outcome back through kopf: status once (only when changed), then the events."""

from __future__ import annotations

from typing import Any

import kopf

from slipway.reconcilers.notifier import notify
from slipway.reconcilers.status import Outcome, status_changed


def publish(outcome: Outcome, body: kopf.Body, patch: kopf.Patch) -> None:
    """Put the new status into kopf's single patch if it differs, and post the outcome's events."""
    current: dict[str, Any] = dict(body.get("status") or {})
    if status_changed(current, outcome.status):
        patch["status"] = outcome.status
    notify(body, outcome.events, outcome.status)
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
