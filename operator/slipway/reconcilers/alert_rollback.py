"""What an alert adds to a reconcile pass: whether it concerns the deployment now, and ``status.lastAlert``.

An alert is one more observation of the one pass (:func:`.modeldeployment.reconcile` with
``alert``): no second pipeline. These are the pure parts the pass asks about it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.rollout.alerts import Alert, matches, watched_versions
from slipway.rollout.state import RolloutState


def last_alert(alert: Alert) -> dict[str, Any]:
    """status.lastAlert."""
    out: dict[str, Any] = {"name": alert.name, "labels": dict(alert.labels)}
    if alert.starts_at is not None:
        out["startsAt"] = alert.starts_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


def why_not(md: ModelDeployment, state: RolloutState, alert: Alert, now: datetime) -> str | None:
    """Why ``alert`` concerns no version of ``md`` in ``state`` now (None: it matches a version under watch)."""
    versions = watched_versions(state, md.spec, now)
    if not versions:
        return f"no version is under watch in phase {state.phase}"
    ns, name = md.metadata.namespace or "", md.metadata.name or ""
    if not matches(alert, ns, name, md.spec.rollback.alerts, set(versions)):
        return f"it does not match spec.rollback.alerts for v{', v'.join(sorted(versions))}"
    return None
