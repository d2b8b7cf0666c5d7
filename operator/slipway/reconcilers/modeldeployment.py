"""ModelDeployment reconciler: the one pass for every reason (a change, a resync, an alert): observe, decide, write.

Observe (the tracked version, the children and their readiness, the analysis; a firing alert
is one more observation) → ``machine.next`` → write, in this order (:func:`.routing.carry_out`):

1. status, once, only if it changed: the decision (a rollback, a step) is recorded before
   anything moves, so an operator killed at any later point finds it and finishes it on restart,
   and never re-exposes a version it blocked;
2. the backends (InferenceService, HPA): a route never names a version whose children could not
   all be written; a rollback (all traffic back to the version that was serving) writes here only
   the backends of versions that have none yet;
3. the traffic, in one write (:func:`.routing.set_traffic`: the HTTPRoute, or the Knative
   InferenceService): an alert's rollback is this write, right after the status write;
4. a rollback's other backends (those that exist), then the removals of the versions not kept,
   which the traffic no longer names.

A kill between any two writes leaves status ahead of the children, never behind: the next pass
observes the children and writes what is missing.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import ACTION_ANNOTATION, API_VERSION, LABEL_MODEL, LABEL_VERSION, sanitise_model_name
from slipway.builders.router import router_for
from slipway.clients.kube import Kube, NotOwned, error_message
from slipway.clients.prometheus import Prometheus
from slipway.rollout import machine
from slipway.rollout.alerts import Alert
from slipway.rollout.analysis import AnalysisConfig, Measurement
from slipway.rollout.budget import Split, unsplittable
from slipway.rollout.phases import conditions_for
from slipway.rollout.state import ACTIONS, Action, Decision, Observations, RolloutState
from slipway.rollout.templates import TemplateError
from slipway.storage_uris import refusal
from slipway.tenancy import Tenancy

from . import alert_rollback, analysis_providers, analysis_templates, budget, requirements, rollout_metrics, routing
from .ab_comparison import compare
from .gateway_support import mirror_refusal
from .rollout_status import state_from_status, state_to_status
from .status import Event, Outcome, set_condition, status_changed
from .writeback import with_pending

log = logging.getLogger(__name__)
GROUP_VERSION = API_VERSION
MESSAGE_LIMIT = 1024


@dataclass(frozen=True)
class Resolved:
    """The tracked version and the storage URIs of the versions the registry mirror knows."""

    version: str | None
    message: str
    storage_uris: dict[str, str]
    statuses: dict[str, dict[str, Any]] = field(default_factory=dict)
    """version → its ModelVersion's status (tags, metrics, registration time) for the requirements."""


def resolve(kube: Kube, md: ModelDeployment, prefixes: tuple[str, ...] | None = None) -> Resolved:
    """Find the tracked version among the ModelVersion objects (alias, highest in stage, or pinned).

    With ``prefixes``, a storage URI outside them (or with a ``..``) is no URI: never applied.
    """
    model = sanitise_model_name(md.spec.model.name)
    mvs = kube.observed_list(GROUP_VERSION, "ModelVersion", md.metadata.namespace or "", f"{LABEL_MODEL}={model}")
    uris: dict[str, str] = {}
    refused: dict[str, str] = {}
    by_version: dict[str, dict[str, Any]] = {}
    for mv in mvs:
        version = str((mv.get("spec") or {}).get("version") or mv["metadata"]["labels"].get(LABEL_VERSION, ""))
        status = mv.get("status") or {}
        by_version[version] = status
        if status.get("storageUri"):
            why = refusal(status["storageUri"], prefixes) if prefixes is not None else None
            if why is None:
                uris[version] = status["storageUri"]
            else:
                refused[version] = why
    track = md.spec.model.track
    if track.alias is not None:
        hits = [v for v, s in by_version.items() if track.alias in (s.get("aliases") or [])]
        want, what = (max(hits, key=int) if hits else None), f"alias {track.alias}"
    elif track.stage is not None:
        hits = [v for v, s in by_version.items() if s.get("stage") == track.stage]
        want, what = (max(hits, key=int) if hits else None), f"stage {track.stage}"
    else:
        pinned = str(track.version)
        want, what = (pinned if pinned in by_version else None), f"version {pinned}"
    if want is None:
        return Resolved(None, f"no ModelVersion of model {md.spec.model.name} has {what}", uris, by_version)
    if want in refused:
        message = f"ModelVersion {md.spec.model.name} v{want} ({what}): {refused[want]}"
        return Resolved(None, message, uris, by_version)
    if want not in uris:
        message = f"ModelVersion {md.spec.model.name} v{want} ({what}) has no storageUri yet"
        return Resolved(None, message, uris, by_version)
    return Resolved(want, "", uris, by_version)


def candidate_tags(resolved: Resolved, version: str | None) -> dict[str, str] | None:
    """The MLflow tags the registry mirror copied into the candidate's ModelVersion (None: no such version)."""
    status = resolved.statuses.get(version) if version is not None else None
    if status is None:
        return None
    return {str(k): str(v) for k, v in (status.get("tags") or {}).items()}


def unhonourable(md: ModelDeployment) -> str | None:
    """Why a spec that passed the schema cannot be carried out (None: it can)."""
    strategy = md.spec.strategy
    if strategy.blue_green is not None and strategy.blue_green.post_promotion_analysis is not None:
        return (
            "strategy.blueGreen.postPromotionAnalysis is not implemented by this operator version: "
            "use rollback.alerts with a window for checks after the switch"
        )
    return router_for(md.spec).refusal(md) or unsplittable(md.spec)


def observe_children(kube: Kube, md: ModelDeployment) -> tuple[frozenset[str], frozenset[str]]:
    """Versions with an InferenceService, and those whose predictor is ready (the router's readiness read)."""
    return routing.observe(kube, md, router_for(md.spec))


def measure(
    prom: Prometheus,
    md: ModelDeployment,
    config: AnalysisConfig,
    version: str,
    now: datetime,
    kube: Kube | None = None,
) -> tuple[Measurement, ...]:
    """One analysis round: each metric measured by its provider and judged (no data or errors are inconclusive).

    ``kube`` reads the Secrets web metrics take headers from. The round is exported as metrics
    (``slipway_analysis_*``, dry-run ones labelled so).
    """
    ns, name = md.metadata.namespace or "", md.metadata.name or ""
    out = tuple(analysis_providers.measure_one(prom, kube, m, ns, name, version, now) for m in config.metrics)
    rollout_metrics.record_measurements(ns, name, out)
    return out


def children_to_apply(
    md: ModelDeployment, decision: Decision, uris: dict[str, str], shares: Split | None = None
) -> list[dict[str, Any]]:
    """The manifests a decision asks for, in apply order: backends (InferenceService, HPA), then the route.

    ``shares``, with a canary budget, bounds each version's replicas; a version whose bound is 0
    waits (its children are not created, or left as they are) until the other gives replicas back.
    """
    return router_for(md.spec).children(md, decision, uris, shares)


def _action(md: ModelDeployment) -> tuple[Action | None, str | None]:
    raw = (md.metadata.annotations or {}).get(ACTION_ANNOTATION)
    if raw is None:
        return None, None
    return (raw, None) if raw in ACTIONS else (None, raw)  # type: ignore[return-value]


def status_of(
    md: ModelDeployment, old: dict[str, Any], state: RolloutState, tracked: str | None, *, stable_ready: bool = True
) -> dict[str, Any]:
    """The status to write for a rollout state: the rollout fields, the tracked version and the conditions."""
    status = state_to_status(state)
    status["trackedVersion"] = tracked
    status["observedGeneration"] = md.metadata.generation
    conditions = old.get("conditions")
    cause = state.history[-1].reason if state.history else None
    has_stable = state.stable_version is not None
    for c in conditions_for(state.phase, state.reason, state.message, has_stable, cause, stable_ready=stable_ready):
        conditions = set_condition(conditions, c.type, c.status, c.reason, c.message, generation=md.metadata.generation)
    if any(c.get("type") == "InvalidSpec" for c in conditions or []):
        conditions = set_condition(conditions, "InvalidSpec", False, "Valid", "", generation=md.metadata.generation)
    status["conditions"] = conditions  # a ReconcileError stays until the pass's writes have all worked
    gateway = md.spec.gateway
    if gateway is not None and gateway.hostnames:
        status["url"] = f"http://{gateway.hostnames[0]}"
    return status


def reconcile(
    kube: Kube,
    prom: Prometheus,
    body: dict[str, Any],
    now: datetime | None = None,
    tenancy: Tenancy | None = None,
    storage_prefixes: tuple[str, ...] | None = None,
    *,
    alert: Alert | None = None,
    if_unchanged: bool = False,
) -> Outcome:
    """One pass, for every reason it runs: observe, decide, then write status, the traffic, the children.

    The writes (see :func:`.routing.carry_out`): status (only if it changed) before anything
    moves, then the backends a new version needs, the traffic, the other children. ``alert``: a
    firing alert is one more observation (``Observations.alert``); one that concerns no version
    under watch ends the pass with nothing written (``Outcome.ignored``), and the pass skips what
    cannot change a rollback (measuring, the A/B comparison). ``if_unchanged``: ``body`` is the
    watch's copy, not read now: the status write is conditional on its resourceVersion (a newer
    object: the API server answers 409, nothing is written).
    """
    started = time.monotonic()
    now = now or datetime.now(UTC)
    old: dict[str, Any] = dict(body.get("status") or {})
    name, namespace = body["metadata"].get("name", ""), body["metadata"].get("namespace")
    version = body["metadata"].get("resourceVersion") if if_unchanged else None

    def write_status(outcome: Outcome) -> None:
        if status_changed(old, outcome.status):
            patch = (GROUP_VERSION, "ModelDeployment", name, namespace, outcome.status)
            if version is None:
                kube.patch_status(*patch)
            else:
                kube.patch_status(*patch, resource_version=version)
            outcome.status_written = time.monotonic()

    planned = _plan(kube, prom, body, old, now, tenancy, storage_prefixes, alert)
    if isinstance(planned, Outcome):  # nothing to carry out: invalid, or the alert concerns no version
        planned.started = started
        if planned.ignored is None or alert is None:
            write_status(planned)
        return planned
    outcome = planned.outcome
    outcome.started = started
    if if_unchanged and outcome.ignored is not None:  # on a copy that may be stale: no write, the caller reads
        return outcome

    def commit() -> None:  # the decision is taken once its status is written: only then is it counted
        write_status(outcome)
        strategy = rollout_metrics.strategy_of(body.get("spec") or {})
        rollout_metrics.record(namespace or "", name, strategy, planned.decision, planned.alert_name)

    outcome.traffic_written = routing.carry_out(
        kube,
        planned.md,
        router_for(planned.md.spec),
        planned.decision,
        planned.uris,
        planned.live,
        commit,
        planned.shares,
    )
    cleared = cleared_error(outcome.status.get("conditions"), planned.md.metadata.generation)
    if cleared is not None:  # every write worked: the error a failed pass recorded is over (a second write)
        outcome.status["conditions"] = cleared
        kube.patch_status(GROUP_VERSION, "ModelDeployment", name, namespace, {"conditions": cleared})
    return outcome


def cleared_error(conditions: list[dict[str, Any]] | None, generation: int | None) -> list[dict[str, Any]] | None:
    """The conditions with a standing ReconcileError set back to False (None: there is none standing)."""
    if not any(c.get("type") == "ReconcileError" and c.get("status") == "True" for c in conditions or []):
        return None
    return set_condition(conditions, "ReconcileError", False, "Reconciled", "", generation=generation)


@dataclass(frozen=True)
class _Plan:
    """What a pass decided and must carry out."""

    md: ModelDeployment
    decision: Decision
    uris: dict[str, str]
    live: frozenset[str]
    shares: Split | None
    outcome: Outcome
    alert_name: str | None
    """The alert the decision rolled back for (None: no alert, or none acted on)."""


def _plan(
    kube: Kube,
    prom: Prometheus,
    body: dict[str, Any],
    old: dict[str, Any],
    now: datetime,
    tenancy: Tenancy | None,
    storage_prefixes: tuple[str, ...] | None,
    alert: Alert | None,
) -> _Plan | Outcome:
    """Observe and decide (reads only); an Outcome when the pass stops before deciding."""
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError as exc:
        return _invalid(old, body, f"spec does not validate: {exc.errors()[0].get('msg')}", alerted=alert)
    state = state_from_status(old)
    if alert is not None and unhonourable(md) is None:  # before any read: an alert about nothing under watch
        ignored = alert_rollback.why_not(md, state, alert, now)  # costs no round trip
        if ignored is not None:
            return Outcome(old, ignored=ignored)
    why = unhonourable(md) or mirror_refusal(kube, md)
    if why is not None:
        return _invalid(old, body, why, alerted=alert)
    if tenancy is not None:
        forbidden = tenancy.forbids_model(md.metadata.namespace or "", md.spec.model.name, "spec.model.name")
        if forbidden is not None:
            return _invalid(old, body, forbidden, reason="Forbidden", alerted=alert)
    try:  # template metrics inline: as the running rollout froze them, else read now
        templated = analysis_templates.resolve(kube, md, old)
    except TemplateError as exc:
        return _invalid(old, body, str(exc), alerted=alert)
    md = templated.md
    resolved = resolve(kube, md, storage_prefixes)
    live, ready = observe_children(kube, md)
    action, bad_action = _action(md)
    verdict = requirements.check(kube, md, resolved.version, resolved.statuses, now)
    tracked, tracked_message = resolved.version, resolved.message
    if verdict is not None and not verdict.met:  # whoever moved the alias, this version does not roll out
        tracked, tracked_message = requirements.held_version(state), verdict.message
    measurements, comparison = None, None
    if alert is None:  # neither can change a rollback: an alert's pass does not wait for Prometheus
        config = machine.measurement_due(state, md.spec, now)
        if config is not None and state.canary_version is not None:
            measurements = measure(prom, md, config, state.canary_version, now, kube)
        comparison = compare(prom, md, state, now) if machine.comparison_due(state, md.spec, now) else None
    obs = Observations(
        now=now,
        tracked_version=tracked,
        tracked_message=tracked_message,
        ready_versions=ready,
        live_versions=live,
        action=action,
        measurements=measurements,
        spec_changed=old.get("observedGeneration") not in (None, md.metadata.generation),
        comparison=comparison,
        candidate_tags=candidate_tags(resolved, state.canary_version),
        alert=alert.describe() if alert is not None else None,
    )
    decision = machine.next(state, obs, md.spec)
    alerted = alert is not None and decision.transition is not None and decision.transition.reason == "AlertFiring"
    shares = budget.plan(kube, md, decision.state)
    events = [Event(n.reason, n.message, "Warning" if n.warning else "Normal") for n in decision.events]
    if action is not None and not decision.action_used:
        events.append(Event("ActionIgnored", f"action {action} does nothing in phase {state.phase}", "Warning"))
    if bad_action is not None:
        events.append(
            Event("ActionIgnored", f"unknown action {bad_action!r}: use one of {', '.join(ACTIONS)}", "Warning")
        )
    requeue = decision.requeue_after
    waiting = machine.seconds_until_measurement(decision.state, md.spec, now)
    if waiting is not None:
        requeue = min(requeue if requeue is not None else waiting, max(waiting, 0.5))
    if shares is not None and not shares.settled:
        requeue = min(requeue if requeue is not None else budget.SETTLE_SECONDS, budget.SETTLE_SECONDS)
    if verdict is not None and verdict.retry_after is not None:
        requeue = min(requeue if requeue is not None else verdict.retry_after, max(verdict.retry_after, 0.5))
    stable_ready = decision.state.stable_version in ready
    status = status_of(md, old, decision.state, resolved.version, stable_ready=stable_ready)
    status[analysis_templates.STATUS_FIELD] = analysis_templates.record(templated, old, status)
    events += requirements.record(old, status, verdict, md.metadata.generation)
    if alerted and alert is not None:
        status["lastAlert"] = alert_rollback.last_alert(alert)
    if entered_rollback(old, status):
        with_pending(
            body.get("spec") or {}, old, status, now, f"AlertFiring: {alert.describe()}" if alerted and alert else None
        )
    ignored = None
    if alert is not None and not alerted:
        ignored = f"the machine took no rollback in phase {state.phase}"
    outcome = Outcome(status, events, requeue, decision=decision, ignored=ignored)
    alert_name = alert.name if alerted and alert is not None else None
    return _Plan(md, decision, resolved.storage_uris, live, shares, outcome, alert_name)


def failed(old: dict[str, Any], body: dict[str, Any], exc: BaseException) -> Outcome:
    """A pass that raised (the API server refused a child, a call timed out): say so in a condition, keep the rest.

    The rollout's own fields stay as the last pass that worked wrote them; the event is posted
    when the condition first says this (not on every retry).
    """
    generation = (body.get("metadata") or {}).get("generation")
    why = error_message(exc)
    if len(why) > MESSAGE_LIMIT:
        why = why[: MESSAGE_LIMIT - 1] + "…"
    reason = "ChildNotOwned" if isinstance(exc, NotOwned) else "ReconcileFailed"
    conditions = set_condition(old.get("conditions"), "ReconcileError", True, reason, why, generation=generation)
    status = {"conditions": conditions}
    events = [Event(reason, why, "Warning")] if status_changed(old, status) else []
    return Outcome(status, events, None)


def _invalid(
    old: dict[str, Any], body: dict[str, Any], why: str, *, reason: str = "InvalidSpec", alerted: Alert | None = None
) -> Outcome:
    generation = (body.get("metadata") or {}).get("generation")
    conditions = set_condition(old.get("conditions"), "InvalidSpec", True, reason, why, generation=generation)
    status = {"conditions": conditions, "observedGeneration": generation, "message": why}
    events = [] if status_changed(old, status) is False else [Event(reason, why, "Warning")]
    return Outcome(status, events, None, ignored=f"its spec cannot be carried out: {why}" if alerted else None)


def entered_rollback(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` starts a rollback that blocks a version (not a user's revert)."""
    if new.get("phase") != "RollingBack" or (old or {}).get("phase") == "RollingBack":
        return False
    history = new.get("history") or []
    return bool(history) and history[-1].get("reason") != "TargetReverted"
