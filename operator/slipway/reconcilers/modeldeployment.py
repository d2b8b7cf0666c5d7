"""ModelDeployment reconciler: resolve the tracked version, observe children, decide, apply, write status once."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeployment
from slipway.builders.hpa import build_hpa
from slipway.builders.httproute import build_http_route
from slipway.builders.inferenceservice import build_inference_service
from slipway.builders.knative import build_knative_inference_service
from slipway.builders.names import (
    ACTION_ANNOTATION,
    LABEL_DEPLOYMENT,
    LABEL_MODEL,
    LABEL_VERSION,
    isvc_name,
    predictor_name,
    sanitise_model_name,
)
from slipway.clients.kube import KUBE_ERRORS, Kube, NotOwned, error_message, off_loop
from slipway.clients.prometheus import NoData, Prometheus, PrometheusError
from slipway.rollout import abtest, machine
from slipway.rollout.analysis import AnalysisConfig, Measurement, judge, render_query
from slipway.rollout.budget import Split, replica_budget, unsplittable
from slipway.rollout.phases import conditions_for
from slipway.rollout.state import ACTIONS, Action, Decision, Observations, RolloutState
from slipway.storage_uris import DEFAULT_PREFIXES, refusal
from slipway.tenancy import Tenancy

from . import budget, requirements, rollout_metrics
from .ab_comparison import compare
from .gateway_support import mirror_refusal
from .rollout_status import state_from_status, state_to_status
from .status import Event, Outcome, set_condition, status_changed
from .writeback import PENDING, WriteBack, with_pending

log = logging.getLogger(__name__)
GROUP_VERSION = "ml.slipway.dev/v1alpha1"
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
ROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")
RESYNC_SECONDS = 30.0
RETRY_SECONDS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
"""After a failed pass, the wait before the next (then the next delay, up to the last); reset by a pass that works."""
MESSAGE_LIMIT = 1024
T = TypeVar("T")


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
    mvs = kube.list(GROUP_VERSION, "ModelVersion", md.metadata.namespace, f"{LABEL_MODEL}={model}")
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
    if md.spec.router == "kserve-knative" and strategy.blue_green is not None:
        return "strategy.blueGreen with router kserve-knative is not supported: use canary or router gateway-api"
    if md.spec.router == "kserve-knative" and strategy.canary is not None and strategy.canary.budget is not None:
        return "strategy.canary.budget needs router gateway-api (one HPA per version)"
    return unsplittable(md.spec)


def observe_children(kube: Kube, md: ModelDeployment) -> tuple[frozenset[str], frozenset[str]]:
    """Versions with an InferenceService, and those whose predictor is ready.

    Router gateway-api (KServe Standard mode): ready when the predictor Deployment has
    ``minReplicas`` available pods. KServe's own ``Ready`` is not enough there: with
    ``autoscalerClass: external`` KServe never sets the Deployment's replicas (it starts at 1, our
    HPA raises it), and ``Ready`` follows the Deployment's ``Available`` condition, True with one
    pod of three. Router kserve-knative: KServe's ``Ready``.
    """
    ns, name = md.metadata.namespace, md.metadata.name or ""
    live, ready = set(), set()
    for isvc in kube.list(*ISVC, ns, f"{LABEL_DEPLOYMENT}={name}"):
        version = (isvc["metadata"].get("labels") or {}).get(LABEL_VERSION)
        if not version:
            continue
        live.add(version)
        if md.spec.router == "gateway-api":
            dep = kube.get("apps/v1", "Deployment", predictor_name(name, version), ns)
            available = int(((dep or {}).get("status") or {}).get("availableReplicas") or 0)
            # Within a budget a version may be held to fewer replicas than minReplicas: one serves.
            if available >= (1 if replica_budget(md.spec) is not None else md.spec.autoscaling.min_replicas):
                ready.add(version)
            continue
        conditions = (isvc.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.add(version)
    return frozenset(live), frozenset(ready)


def measure(
    prom: Prometheus, md: ModelDeployment, config: AnalysisConfig, version: str, now: datetime
) -> tuple[Measurement, ...]:
    """One analysis round: each metric's query, filled in and judged (no data or errors are inconclusive)."""
    out = []
    for metric in config.metrics:
        query = render_query(
            metric.query, namespace=md.metadata.namespace or "", name=md.metadata.name or "", version=version
        )
        try:
            out.append(judge(metric, version, prom.query(query), now))
        except NoData as exc:
            out.append(replace(judge(metric, version, None, now), message=str(exc)))
        except PrometheusError as exc:
            out.append(judge(metric, version, None, now, error=str(exc)))
    return tuple(out)


def apply_children(
    kube: Kube,
    md: ModelDeployment,
    decision: Decision,
    uris: dict[str, str],
    live: frozenset[str],
    shares: Split | None = None,
) -> None:
    """New backends first, then the route (one write carries the weights), then remove the live versions not kept.

    Children already applied as they are and unchanged since are not applied again (``Kube.ensure``).
    Before any apply, each child about to be applied is looked up: one of that name that this
    deployment does not own stops the pass with :class:`NotOwned` before anything is written.

    ``live`` is the versions with an InferenceService as this pass observed them (no second list).
    ``shares``: see :func:`children_to_apply`.
    """
    ns, name, uid = md.metadata.namespace, md.metadata.name or "", md.metadata.uid
    manifests = children_to_apply(md, decision, uris, shares)
    kube.check_owned(manifests, uid)
    for manifest in manifests:
        kube.ensure(manifest)
    if md.spec.router == "kserve-knative":
        return
    for version in sorted(live - decision.keep):
        kube.delete_owned(*HPA, isvc_name(name, version), ns, uid)
        kube.delete_owned(*ISVC, isvc_name(name, version), ns, uid)


def children_to_apply(
    md: ModelDeployment, decision: Decision, uris: dict[str, str], shares: Split | None = None
) -> list[dict[str, Any]]:
    """The manifests a decision asks for, in apply order: backends (InferenceService, HPA), then the route.

    ``shares``, with a canary budget, bounds each version's replicas; a version whose bound is 0
    waits (its children are not created, or left as they are) until the other gives replicas back.
    """
    state = decision.state
    if md.spec.router == "kserve-knative":
        version = state.canary_version if state.phase in ("Progressing", "Paused") else state.stable_version
        if version and version in uris:
            percent = state.canary_weight if version == state.canary_version else None
            return [build_knative_inference_service(md, version, uris[version], percent)]
        return []
    out: list[dict[str, Any]] = []
    for version in sorted(decision.keep, key=int):
        if version in uris:
            bounds = shares.bounds.get(version) if shares is not None else None
            if bounds is not None and bounds.max < 1:
                continue
            replicas = (bounds.min, bounds.max) if bounds is not None else None
            out += [build_inference_service(md, version, uris[version], replicas), build_hpa(md, version, replicas)]
    weights = dict(decision.weights)
    if weights:
        mirror = (state.canary_version, state.mirror_percent) if state.canary_version and state.mirror_percent else None
        ab = md.spec.strategy.ab_test
        matches = abtest.route_matches(state, ab) if ab is not None else None
        out.append(build_http_route(md, weights, mirror, matches))
    return out


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
    if any(c.get("type") == "ReconcileError" for c in conditions or []):
        conditions = set_condition(
            conditions, "ReconcileError", False, "Reconciled", "", generation=md.metadata.generation
        )
    status["conditions"] = conditions
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
) -> Outcome:
    """One pass: observe, decide, apply children, and return the status to write and the events to post."""
    now = now or datetime.now(UTC)
    old: dict[str, Any] = dict(body.get("status") or {})
    try:
        md = ModelDeployment.model_validate(body)
    except ValidationError as exc:
        return _invalid(old, body, f"spec does not validate: {exc.errors()[0].get('msg')}")
    why = unhonourable(md) or mirror_refusal(kube, md)
    if why is not None:
        return _invalid(old, body, why)
    if tenancy is not None:
        forbidden = tenancy.forbids_model(md.metadata.namespace or "", md.spec.model.name, "spec.model.name")
        if forbidden is not None:
            return _invalid(old, body, forbidden, reason="Forbidden")
    resolved = resolve(kube, md, storage_prefixes)
    live, ready = observe_children(kube, md)
    action, bad_action = _action(md)
    state = state_from_status(old)
    verdict = requirements.check(kube, md, resolved.version, resolved.statuses, now)
    tracked, tracked_message = resolved.version, resolved.message
    if verdict is not None and not verdict.met:  # whoever moved the alias, this version does not roll out
        tracked, tracked_message = requirements.held_version(state), verdict.message
    config = machine.measurement_due(state, md.spec, now)
    measurements = None
    if config is not None and state.canary_version is not None:
        measurements = measure(prom, md, config, state.canary_version, now)
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
    )
    decision = machine.next(state, obs, md.spec)
    shares = budget.plan(kube, md, decision.state)
    apply_children(kube, md, decision, resolved.storage_uris, live, shares)
    strategy = "blueGreen" if md.spec.strategy.blue_green else "abTest" if md.spec.strategy.ab_test else "canary"
    rollout_metrics.record(md.metadata.namespace or "", md.metadata.name or "", strategy, decision)
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
    events += requirements.record(old, status, verdict, md.metadata.generation)
    if entered_rollback(old, status):
        with_pending(body.get("spec") or {}, old, status, now)
    return Outcome(status, events, requeue)


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


def _invalid(old: dict[str, Any], body: dict[str, Any], why: str, *, reason: str = "InvalidSpec") -> Outcome:
    generation = (body.get("metadata") or {}).get("generation")
    conditions = set_condition(old.get("conditions"), "InvalidSpec", True, reason, why, generation=generation)
    status = {"conditions": conditions, "observedGeneration": generation, "message": why}
    events = [] if status_changed(old, status) is False else [Event(reason, why, "Warning")]
    return Outcome(status, events, None)


def entered_rollback(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing ``new`` over ``old`` starts a rollback that blocks a version (not a user's revert)."""
    if new.get("phase") != "RollingBack" or (old or {}).get("phase") == "RollingBack":
        return False
    history = new.get("history") or []
    return bool(history) and history[-1].get("reason") != "TargetReverted"


class Driver:
    """Runs passes for each ModelDeployment one at a time (kopf's timer and change handlers, alerts may overlap).

    Each pass re-reads the object, so it always starts from the status the previous pass wrote,
    writes status once (only if it changed), then clears a handled action annotation.
    """

    def __init__(
        self,
        kube: Kube,
        prometheus_url: str,
        tenancy: Tenancy | None = None,
        storage_prefixes: tuple[str, ...] = DEFAULT_PREFIXES,
    ) -> None:
        self.kube = kube
        self.prom = Prometheus(prometheus_url)
        self.tenancy = tenancy or Tenancy()
        self.storage_prefixes = storage_prefixes
        self.write_back: WriteBack | None = None
        self._draining: set[tuple[str, str]] = set()
        self._urgent = ThreadPoolExecutor(max_workers=2, thread_name_prefix="urgent")
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._failures: dict[tuple[str, str], int] = {}
        self._watched: set[tuple[str, str]] = set()
        self._background: set[asyncio.Task[None]] = set()

    def watch(self, namespace: str, name: str) -> None:
        """Note an object kopf handed us (it is in a namespace this operator watches)."""
        self._watched.add((namespace, name))

    def watches(self, namespace: str, name: str) -> bool:
        """Whether kopf has handed us this object: alerts about any other are not ours to act on."""
        return (namespace, name) in self._watched

    def spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        """Run follow-up work (a write-back, a pass) in the background, keeping a reference until it ends."""
        task = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        """The object's lock: passes and alerts on one ModelDeployment run one at a time."""
        return self._locks.setdefault((namespace, name), asyncio.Lock())

    async def exclusive(
        self, namespace: str, name: str, work: Callable[[dict[str, Any]], T]
    ) -> tuple[dict[str, Any] | None, T | None]:
        """Under the object's lock, read it fresh and run ``work(body)`` on it, all in one worker thread.

        Returns the object as read and what ``work`` returned (None, None when the object is gone
        or being deleted). The alert path uses this: one thread hop for read, decide and write, on
        threads of its own, so that it never queues behind reconcile passes in the default pool
        (measured: a resync of 32 deployments at once held an alert up to 150 ms without this).
        """
        lock = self._locks.setdefault((namespace, name), asyncio.Lock())

        def read_and_work() -> tuple[dict[str, Any] | None, T | None]:
            body = self.kube.get(GROUP_VERSION, "ModelDeployment", name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return body, None
            return body, work(body)

        async with lock:
            return await asyncio.get_running_loop().run_in_executor(self._urgent, read_and_work)

    def is_due(self, namespace: str, name: str) -> bool:
        """Whether the timer should run a pass now: the last pass asked to be looked at again by now.

        Not while a pass (or alert work) on the object runs: that pass sets the next time, and a tick
        queued behind it would only repeat it (at start-up, a create and the first tick coincide).
        """
        lock = self._locks.get((namespace, name))
        if lock is not None and lock.locked():
            return False
        return time.monotonic() >= self._due.get((namespace, name), 0.0)

    def forget(self, namespace: str, name: str) -> None:
        """The object is gone: stop tracking it (its children's deletion by the garbage collector is no news).

        Its lock goes too (unless work holds it: the next forget takes it), and its metric series.
        """
        key = (namespace, name)
        self._due.pop(key, None)
        self._failures.pop(key, None)
        self._watched.discard(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        rollout_metrics.forget(namespace, name)

    def expedite(self, namespace: str, name: str) -> None:
        """Make the object due now: the next tick runs a pass (bursts of news coalesce into one pass)."""
        self._due[(namespace, name)] = 0.0

    async def drive(self, namespace: str, name: str) -> tuple[dict[str, Any] | None, Outcome | None]:
        """Run one pass on the current object; returns the object and the outcome (None if it is gone).

        A pass that raises does not reach kopf (whose retry would wait a minute): its error goes
        into a ``ReconcileError`` condition and the next pass comes after RETRY_SECONDS.
        """
        key = (namespace, name)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            body: dict[str, Any] | None = None
            try:
                body = await off_loop(self.kube.get, GROUP_VERSION, "ModelDeployment", name, namespace)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    self.forget(namespace, name)
                    return body, None
                outcome = await self._pass(namespace, name, body)
            except Exception as exc:
                return body, await self._failed(namespace, name, body, exc)
            self._failures.pop(key, None)
            delay = outcome.requeue_after if outcome.requeue_after is not None else RESYNC_SECONDS
            self._due[key] = time.monotonic() + delay
            return body, outcome

    async def _pass(self, namespace: str, name: str, body: dict[str, Any]) -> Outcome:
        outcome = await off_loop(
            reconcile, self.kube, self.prom, body, tenancy=self.tenancy, storage_prefixes=self.storage_prefixes
        )
        await self._write_status(namespace, name, body, outcome)
        pending = outcome.status.get(PENDING, (body.get("status") or {}).get(PENDING))
        if pending:
            self.drain_write_backs(namespace, name)
        if ACTION_ANNOTATION in ((body["metadata"].get("annotations")) or {}):
            patch = {"metadata": {"annotations": {ACTION_ANNOTATION: None}}}
            await off_loop(self.kube.merge_patch, GROUP_VERSION, "ModelDeployment", name, namespace, patch)
        return outcome

    def drain_write_backs(self, namespace: str, name: str) -> None:
        """Work off the object's pending MLflow write-backs in the background (one drain per object at a time)."""
        key = (namespace, name)
        if self.write_back is None or key in self._draining:
            return
        self._draining.add(key)
        self.spawn(self._drain(namespace, name), f"write-backs {namespace}/{name}")

    async def _drain(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        assert self.write_back is not None
        try:
            wait = await self.write_back.drain(functools.partial(self._locked_status_update, namespace, name))
        except Exception as exc:  # the next pass starts another drain
            log.warning("write-backs of %s/%s: %s", namespace, name, error_message(exc), exc_info=True)
            wait = RESYNC_SECONDS
        finally:
            self._draining.discard(key)
        if wait is not None and key in self._due:  # the next pass (which drains again) no later than the retry
            self._due[key] = min(self._due[key], time.monotonic() + max(wait, 0.5))

    async def _locked_status_update(
        self, namespace: str, name: str, update: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]
    ) -> None:
        """Under the object's lock: read it, and merge-patch its status with what ``update`` returns (if anything)."""
        async with self.lock(namespace, name):
            body = await off_loop(self.kube.get, GROUP_VERSION, "ModelDeployment", name, namespace)
            if body is None or body["metadata"].get("deletionTimestamp"):
                return
            patch = await update(body)
            if patch is not None:
                await off_loop(self.kube.patch_status, GROUP_VERSION, "ModelDeployment", name, namespace, patch)

    async def _failed(self, namespace: str, name: str, body: dict[str, Any] | None, exc: Exception) -> Outcome | None:
        """Back off, and record the error on the object when it can be written (the API server may be the trouble)."""
        key = (namespace, name)
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        rollout_metrics.PASS_ERRORS.inc()
        delay = RETRY_SECONDS[min(failures, len(RETRY_SECONDS)) - 1]
        self._due[key] = time.monotonic() + delay
        log.warning(
            "pass on ModelDeployment %s/%s failed (next in %.0fs): %s",
            namespace,
            name,
            delay,
            error_message(exc),
            exc_info=not isinstance(exc, KUBE_ERRORS),  # a bug of ours gets its traceback
        )
        if body is None:
            return None
        outcome = failed(dict(body.get("status") or {}), body, exc)
        outcome.requeue_after = delay
        try:
            await self._write_status(namespace, name, body, outcome)
        except Exception as write_exc:
            log.warning("could not record the error on %s/%s: %s", namespace, name, error_message(write_exc))
            return None
        return outcome

    async def _write_status(self, namespace: str, name: str, body: dict[str, Any], outcome: Outcome) -> bool:
        """Write the outcome's status if it changes the object's; True if it was written."""
        if not status_changed(body.get("status"), outcome.status):
            return False
        await off_loop(self.kube.patch_status, GROUP_VERSION, "ModelDeployment", name, namespace, outcome.status)
        return True
