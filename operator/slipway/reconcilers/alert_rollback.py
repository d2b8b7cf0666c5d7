"""The alert pass: a matching alert rolls a ModelDeployment back with status first, then one route write.

This is a reduced reconcile pass that runs the moment an alert reaches the operator, under the
Driver's per-object lock, on the object read fresh. It decides with the same pure machine
(``machine.next`` with ``Observations.alert``) and writes exactly two things, in this order:

1. status — phase ``RollingBack`` with the alert in the reason and message, the failed version
   in ``blockedVersions``, ``status.lastAlert``, conditions (``Degraded``) — so that progress is
   in status before anything moves: an operator killed right after still finishes the rollback
   on restart, and never re-exposes the canary;
2. the traffic — the HTTPRoute with all weight on the version rolled back to (one server-side
   apply), or for ``router: kserve-knative`` the InferenceService pinned back; nothing yet when
   that version must first be recreated (after the scale-down delay): the failed version keeps
   serving until it is ready, and the pass that sees it ready switches the route in one write.

It skips what a full pass does first (resolving the tracked version, listing children,
re-applying every InferenceService and HPA, measuring): none of it changes a rollback, and
each costs API round trips on the way to the route. The full pass that follows (the Driver's
``drive``) removes the failed version's children and moves to ``RolledBack``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.router import router_for, traffic_version
from slipway.clients.applied import key_of
from slipway.clients.kube import Kube, off_loop
from slipway.clients.kube_fast import FastKube, plural_path
from slipway.rollout import machine
from slipway.rollout.alerts import Alert, matches, watched_versions
from slipway.rollout.state import Decision, Observations

from . import routing
from .modeldeployment import GROUP_VERSION, entered_rollback, resolve, status_of, unhonourable
from .rollout_status import state_from_status
from .status import Event, Outcome
from .writeback import with_pending


@dataclass(frozen=True)
class Reaction:
    """What one alert did to one ModelDeployment (``why`` says why not, when it did nothing)."""

    rolled_back: bool
    why: str = ""
    outcome: Outcome | None = None
    decision: Decision | None = None
    read: float | None = None
    """time.monotonic() when the pass began (the object just read)."""
    status_written: float | None = None
    """time.monotonic() after the status write."""
    route_written: float | None = None
    """time.monotonic() after the traffic write (None: traffic stays until the version rolled back to is ready)."""


def last_alert(alert: Alert) -> dict[str, Any]:
    """status.lastAlert."""
    out: dict[str, Any] = {"name": alert.name, "labels": dict(alert.labels)}
    if alert.starts_at is not None:
        out["startsAt"] = alert.starts_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return out


@dataclass(frozen=True)
class Plan:
    """What a matching alert makes the pass write, in this order: ``status``, then the traffic."""

    md: ModelDeployment
    decision: Decision
    status: dict[str, Any]
    read: float
    """time.monotonic() when the pass began (the object just read)."""


def decide(body: dict[str, Any], alert: Alert, now: datetime) -> Plan | Reaction:
    """The rollback ``alert`` calls for on ``body`` now, or a Reaction saying why none (no I/O)."""
    read = time.monotonic()
    old: dict[str, Any] = dict(body.get("status") or {})
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError:
        return Reaction(False, "its spec does not validate")
    if unhonourable(md) is not None:
        return Reaction(False, "its spec cannot be carried out")
    ns, name = md.metadata.namespace or "", md.metadata.name or ""
    state = state_from_status(old)
    versions = watched_versions(state, md.spec, now)
    if not versions:
        return Reaction(False, f"no version is under watch in phase {state.phase}")
    if not matches(alert, ns, name, md.spec.rollback.alerts, set(versions)):
        return Reaction(False, f"it does not match spec.rollback.alerts for v{', v'.join(sorted(versions))}")
    obs = Observations(
        now=now,
        tracked_version=old.get("trackedVersion"),
        alert=alert.describe(),
        spec_changed=old.get("observedGeneration") not in (None, md.metadata.generation),
    )
    decision = machine.next(state, obs, md.spec)
    arrow = decision.transition
    if arrow is None or arrow.reason != "AlertFiring":
        return Reaction(False, f"the machine took no rollback in phase {state.phase}", decision=decision)
    status = status_of(md, old, decision.state, old.get("trackedVersion"))
    status["lastAlert"] = last_alert(alert)
    if entered_rollback(old, status):
        with_pending(body.get("spec") or {}, old, status, now, f"AlertFiring: {alert.describe()}")
    return Plan(md, decision, status, read)


def _done(plan: Plan, status_written: float, route_written: float | None) -> Reaction:
    events = [Event(n.reason, n.message, "Warning" if n.warning else "Normal") for n in plan.decision.events]
    outcome = Outcome(plan.status, events, plan.decision.requeue_after)
    return Reaction(True, "", outcome, plan.decision, plan.read, status_written, route_written)


def react(kube: Kube, body: dict[str, Any], alert: Alert, now: datetime) -> Reaction:
    """Roll ``body`` back if ``alert`` matches it now; write status, then the traffic. Blocking (run off the loop)."""
    plan = decide(body, alert, now)
    if isinstance(plan, Reaction):
        return plan
    md = plan.md
    kube.patch_status(GROUP_VERSION, "ModelDeployment", md.metadata.name or "", md.metadata.namespace, plan.status)
    status_written = time.monotonic()
    return _done(plan, status_written, _write_traffic(kube, md, plan.decision))


async def react_fast(
    fast: FastKube, kube: Kube, body: dict[str, Any], alert: Alert, now: datetime, *, unread: bool = False
) -> Reaction:
    """:func:`react` on the event loop: the status patch and the route apply as two awaited calls.

    Same order, same crash safety: the route is written only once the status write has been
    answered. ``unread``: ``body`` is the last one the watch delivered, not read now, so the
    status write is conditional on its resourceVersion (a newer object: 409, nothing written,
    and the caller reads it and tries again). Only a router whose traffic write needs a storage
    URI (``router: kserve-knative``) takes the blocking path, in a worker thread.
    """
    plan = decide(body, alert, now)
    if isinstance(plan, Reaction):
        return plan
    md = plan.md
    ns, name = md.metadata.namespace or "", md.metadata.name or ""
    version = body["metadata"].get("resourceVersion") if unread else None
    await fast.patch_status(plural_path(GROUP_VERSION, "modeldeployments", ns, name), plan.status, version)
    status_written = time.monotonic()
    if router_for(md.spec).traffic_needs_storage:
        return _done(plan, status_written, await off_loop(_write_traffic, kube, md, plan.decision))
    route = _route(md, plan.decision)
    if route is None:
        return _done(plan, status_written, None)
    path = plural_path(
        route["apiVersion"], "httproutes", route["metadata"].get("namespace") or ns, route["metadata"]["name"]
    )
    await fast.apply(path, route)
    kube.applied.forget(key_of(route))  # written past the Kube client: the next pass applies its own
    return _done(plan, status_written, time.monotonic())


def _route(md: ModelDeployment, decision: Decision) -> dict[str, Any] | None:
    """The HTTPRoute with all weight where the rollback goes; None while the failed version must keep it."""
    if traffic_version(decision) is None:
        return None
    return router_for(md.spec).traffic(md, decision, {})


def _write_traffic(kube: Kube, md: ModelDeployment, decision: Decision) -> float | None:
    """One write that moves the traffic; None when the failed version keeps it (its replacement is not up yet)."""
    if traffic_version(decision) is None:
        return None
    if not routing.set_traffic(kube, md, router_for(md.spec), decision, lambda: resolve(kube, md).storage_uris):
        return None
    return time.monotonic()
