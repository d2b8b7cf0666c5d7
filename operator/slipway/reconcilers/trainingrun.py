"""TrainingRun reconciler: the MLflow run first, then the Job; follow it; on success gate, register, alias and stage.

A pass looks at the TrainingRun and its Job and does the next step, one at a time, so that
progress lives in ``status`` and a pass can be repeated after a crash at any point:

1. no ``mlflowRunId`` in status: find or create the MLflow run (tagged with the TrainingRun's
   uid, so a run created just before a crash is found again) and record it — the Job is only
   created on a later pass, once the run id is in status; event ``RunCreated``;
2. no Job: apply the headless Service (several workers) and the Job, built with that run id;
   event ``JobCreated`` (a Job of ours that status does not name yet — its pass stopped before
   the status write — is recorded the same way, its event posted then). A Job of the same name
   that belongs to another object (an earlier TrainingRun of that name being garbage-collected)
   is waited for, never adopted; so is a Service of the Job's name that is not this run's
   (``ChildNotOwned``, nothing applied);
3. the Job runs: phase ``Running`` with its start time;
4. the Job failed (or is bound to: ``FailureTarget``): phase ``Failed`` with the Job's reason
   and message, plus the failed container's exit code; the MLflow run, if nobody ended it, is
   marked FAILED; event ``JobFailed``;
5. the Job completed (or ``SuccessCriteriaMet``: the leader succeeded): read the run's final
   metrics (ending the run FINISHED if the training left it open); event ``Trained``. Without
   ``spec.register`` the phase is ``Succeeded``. With it, the gates are evaluated
   (:mod:`slipway.reconcilers.gates`): a failing gate gives ``Rejected`` naming the metric
   (event ``GateFailed``) and nothing is registered; otherwise the run's model is registered
   (idempotent), the alias and stage are set, and the ModelVersion that mirrors it
   (``<model-sanitised>-v<version>``, created by the registry sync) is named in
   ``status.modelVersionRef``; event ``Registered``, phase ``Succeeded``.

MLflow being unreachable keeps the phase and says so in the ``Ready`` condition; the next pass
tries again. Conditions: ``Ready`` (True once Succeeded), ``Trained`` (the Job's outcome),
``Registered`` (only with ``spec.register``) and ``InvalidSpec`` (a spec the models refuse, which
the CRD schema should already have refused, or reason ``Forbidden``: an experiment or model the
operator's tenancy policy does not allow this namespace; the run is Failed and nothing is created).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from slipway.api.names import API_VERSION, modelversion_name
from slipway.api.trainingrun import TrainingRun
from slipway.builders.job import (
    CONTAINER,
    DEFAULT_IMAGE,
    LABEL_TRAININGRUN,
    RunTarget,
    build_children,
    experiment_name,
    job_name,
)
from slipway.clients.kube import KUBE_ERRORS, Kube, NotOwned, error_message, off_loop
from slipway.clients.mlflow_runs import MlflowError, MlflowRuns, MlflowUnavailable, RunOutcome
from slipway.reconcilers.events import post_events
from slipway.reconcilers.gates import evaluate_gates, headline
from slipway.reconcilers.status import Event, Outcome, get_condition, now_iso, set_condition, status_changed
from slipway.tenancy import Tenancy

log = logging.getLogger(__name__)

TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Rejected"})
GROUP_VERSION = API_VERSION
FOLLOW_SECONDS = 2.0
"""While a run is unfinished, the wait before its next pass (its Job's news brings one sooner)."""
Key = tuple[str, str]
JobsOf = Callable[[Key], Sequence[Mapping[str, Any]]]
JobPhase = Literal["pending", "running", "succeeded", "failed"]
MAX_STATUS_METRICS = 64


@dataclass(frozen=True)
class JobState:
    """What a Job's status says about the training."""

    phase: JobPhase
    reason: str = ""
    message: str = ""
    start_time: str | None = None
    completion_time: str | None = None


def _true(job: Mapping[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return None


def observe_job(job: Mapping[str, Any]) -> JobState:
    """The Job's state from its conditions and counters (terminal as soon as the controller has decided)."""
    status = job.get("status") or {}
    start, end = status.get("startTime"), status.get("completionTime")
    for type_ in ("Failed", "FailureTarget"):
        cond = _true(job, type_)
        if cond is not None:
            reason, message = str(cond.get("reason") or "Failed"), str(cond.get("message") or "")
            return JobState("failed", reason, message, start, end or cond.get("lastTransitionTime"))
    for type_ in ("Complete", "SuccessCriteriaMet"):
        cond = _true(job, type_)
        if cond is not None:
            done = end or cond.get("lastTransitionTime")
            return JobState("succeeded", type_, str(cond.get("message") or ""), start, done)
    if int(status.get("active") or 0) > 0:
        return JobState("running", "Running", "", start)
    return JobState("pending", "Pending", "", start)


def exit_code_note(pods: Sequence[Mapping[str, Any]]) -> str:
    """`` (exit code N in pod P)`` for the last trainer container that failed, or ""."""
    failed: list[tuple[str, str, int]] = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == CONTAINER and term.get("exitCode"):
                failed.append((str(term.get("finishedAt") or ""), str(pod["metadata"]["name"]), int(term["exitCode"])))
    if not failed:
        return ""
    _, pod_name, code = max(failed)
    return f" (exit code {code} in pod {pod_name})"


def _seconds(start: str | None, end: str | None) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds()
    except ValueError:
        return None


def _owned_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Pass:
    """The status being built by one reconcile pass, with the conditions and events that go with it."""

    def __init__(self, body: Mapping[str, Any], now: datetime) -> None:
        self.old: dict[str, Any] = dict(body.get("status") or {})
        self.status: dict[str, Any] = dict(self.old)
        self.generation = (body.get("metadata") or {}).get("generation")
        self.now = now
        self.events: list[Event] = []
        self.status["observedGeneration"] = self.generation

    def condition(self, type_: str, ok: bool, reason: str, message: str) -> None:
        self.status["conditions"] = set_condition(
            self.status.get("conditions"), type_, ok, reason, message, generation=self.generation, now=self.now
        )

    def phase(self, phase: str, reason: str, message: str, *, ready: bool = False) -> None:
        self.status["phase"] = phase
        self.status["message"] = message
        self.condition("Ready", ready, reason, message)

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event(reason, message, "Warning" if warning else "Normal"))

    def waiting(self, reason: str, message: str) -> None:
        """Keep the phase; say why nothing moved (event only when the reason is new)."""
        before = get_condition(self.old.get("conditions"), "Ready")
        self.status.setdefault("phase", "Pending")
        self.status["message"] = message
        self.condition("Ready", False, reason, message)
        if before is None or before.get("reason") != reason:
            self.event(reason, message, warning=True)

    def outcome(self) -> Outcome:
        return Outcome(status=self.status, events=self.events)


class TrainingRunReconciler:
    """Runs passes for TrainingRuns; holds the clients (Kubernetes, MLflow) and the operator's defaults."""

    def __init__(
        self,
        kube: Kube,
        runs: MlflowRuns | None,
        tracking_uri: str,
        *,
        default_image: str = DEFAULT_IMAGE,
        tenancy: Tenancy | None = None,
    ) -> None:
        self.kube = kube
        self.tenancy = tenancy or Tenancy()
        self.runs = runs
        self.tracking_uri = tracking_uri
        self.default_image = default_image

    async def reconcile(
        self, body: Mapping[str, Any], jobs: Sequence[Mapping[str, Any]] = (), now: datetime | None = None
    ) -> Outcome:
        """One pass: the status the TrainingRun should have now and the events to post.

        ``jobs`` are the Jobs labelled with this TrainingRun that the operator's watch has seen
        (its in-memory index); a Job missing from it is looked up once in the API.
        """
        p = Pass(body, now or datetime.now(UTC))
        if p.status.get("phase") in TERMINAL_PHASES:
            return Outcome(status=p.old)
        try:
            tr = TrainingRun.model_validate({k: body.get(k) for k in ("apiVersion", "kind", "metadata", "spec")})
        except ValidationError as exc:
            message = f"invalid spec: {exc.errors()[0].get('msg', exc)}"
            p.condition("InvalidSpec", True, "InvalidSpec", message)
            p.phase("Failed", "InvalidSpec", message)
            p.event("InvalidSpec", message, warning=True)
            return p.outcome()
        forbidden = self.forbidden(tr)
        if forbidden is not None:
            p.condition("InvalidSpec", True, "Forbidden", forbidden)
            p.phase("Failed", "Forbidden", forbidden)
            p.event("Forbidden", forbidden, warning=True)
            return p.outcome()
        if self.runs is None:
            p.waiting("MlflowNotConfigured", "the operator has no MLflow URI (SLIPWAY_MLFLOW_URI)")
            return p.outcome()
        try:
            await self._step(tr, p, jobs)
        except MlflowUnavailable as exc:
            p.waiting("MlflowUnavailable", f"MLflow is unavailable, will retry: {exc}")
        except MlflowError as exc:
            p.phase("Failed", "MlflowError", f"MLflow refused: {exc}")
            p.event("MlflowError", str(exc), warning=True)
        except KUBE_ERRORS as exc:  # a quota or an admission policy refused the Job, or no answer: retried
            p.waiting("ReconcileFailed", f"Kubernetes refused or did not answer, will retry: {error_message(exc)}")
        return p.outcome()

    async def drive(self, key: Key, jobs_of: JobsOf) -> float | None:
        """One pass on the TrainingRun read now (its work queue's work): status written if it changed, events posted.

        Returns the seconds until the next pass, None once the run is finished (or gone).
        ``jobs_of`` gives the Jobs the watch has seen for the run.
        """
        namespace, name = key
        body = await off_loop(self.kube.get, GROUP_VERSION, "TrainingRun", name, namespace)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        if (body.get("status") or {}).get("phase") in TERMINAL_PHASES:
            return None
        outcome = await self.reconcile(body, jobs_of(key))
        if status_changed(body.get("status"), outcome.status):
            await off_loop(self.kube.patch_status, GROUP_VERSION, "TrainingRun", name, namespace, outcome.status)
        await post_events(self.kube, body, outcome.events, outcome.status)
        return None if outcome.status.get("phase") in TERMINAL_PHASES else FOLLOW_SECONDS

    def forbidden(self, tr: TrainingRun) -> str | None:
        """Why the tenancy policy refuses this run's experiment or model (None: allowed)."""
        ns = tr.metadata.namespace or ""
        why = self.tenancy.forbids_experiment(ns, experiment_name(tr), "spec.experiment")
        if why is None and tr.spec.registration is not None:
            why = self.tenancy.forbids_model(ns, tr.spec.registration.model, "spec.register.model")
        return why

    async def _step(self, tr: TrainingRun, p: Pass, jobs: Sequence[Mapping[str, Any]]) -> None:
        run_id = p.status.get("mlflowRunId")
        if not run_id:
            await self._create_run(tr, p)
            return
        job = await self._find_job(tr, jobs)
        if job is None:
            if p.status.get("jobName"):
                message = f"Job {p.status['jobName']} was deleted before the training finished"
                p.condition("Trained", False, "JobDeleted", message)
                p.phase("Failed", "JobDeleted", message)
                p.status["completionTime"] = now_iso(p.now)
                p.event("JobDeleted", message, warning=True)
                await self._close_run(str(run_id), "KILLED")
                return
            await self._create_job(tr, p, str(run_id))
            return
        if not _owned_by(job, tr.metadata.uid):
            p.waiting("JobConflict", f"a Job named {job_name(tr)} that is not this TrainingRun's still exists")
            return
        if not p.status.get("jobName"):  # created by a pass stopped before its status write (and event): record it
            message = f"found Job {job_name(tr)} training into MLflow run {run_id} (created before a restart)"
            p.condition("Trained", False, "JobCreated", message)
            p.phase("Pending", "JobCreated", message)
            p.event("JobCreated", message)
        p.status["jobName"] = job_name(tr)
        state = observe_job(job)
        if state.start_time:
            p.status["startTime"] = state.start_time
        if state.phase == "running":  # pending: as recorded (JobCreated) until a pod starts
            message = f"training in Job {job_name(tr)}, logging to MLflow run {run_id}"
            p.condition("Trained", False, "Running", message)
            p.phase("Running", "Running", message)
        elif state.phase == "failed":
            await self._job_failed(tr, p, str(run_id), state)
        elif state.phase == "succeeded":
            await self._job_succeeded(tr, p, str(run_id), state)

    async def _create_run(self, tr: TrainingRun, p: Pass) -> None:
        assert self.runs is not None
        name, ns = tr.metadata.name or "", tr.metadata.namespace or ""
        experiment = experiment_name(tr)
        ref = await self.runs.ensure_run(
            experiment,
            tr.metadata.uid or f"{ns}/{name}",
            name,
            {"slipway.trainingrun": f"{ns}/{name}", "slipway.namespace": ns},
        )
        p.status.update(mlflowRunId=ref.run_id, experimentId=ref.experiment_id)
        message = f"MLflow run {ref.run_id} in experiment {experiment}"
        p.phase("Pending", "RunCreated", message)
        p.event("RunCreated", message + ("" if ref.created else " (found again)"))

    async def _find_job(self, tr: TrainingRun, jobs: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        name = job_name(tr)
        for job in jobs:
            if (job.get("metadata") or {}).get("name") == name:
                return job
        return await off_loop(self.kube.get, "batch/v1", "Job", name, tr.metadata.namespace)

    async def _create_job(self, tr: TrainingRun, p: Pass, run_id: str) -> None:
        target = RunTarget(self.tracking_uri, run_id, experiment_name(tr))
        manifests = build_children(tr, target, default_image=self.default_image)
        try:
            await off_loop(self.kube.check_owned, manifests, tr.metadata.uid)
        except NotOwned as exc:
            p.waiting("ChildNotOwned", str(exc))
            return
        for manifest in manifests:
            await off_loop(self.kube.apply, manifest)
        name = job_name(tr)
        p.status["jobName"] = name
        kind = f"an Indexed Job of {tr.spec.workers} workers" if tr.spec.workers > 1 else "a Job"
        message = f"created {kind} {name} to train into MLflow run {run_id}"
        p.condition("Trained", False, "JobCreated", message)
        p.phase("Pending", "JobCreated", message)
        p.event("JobCreated", message)

    async def _job_failed(self, tr: TrainingRun, p: Pass, run_id: str, state: JobState) -> None:
        assert self.runs is not None
        pods = await off_loop(
            self.kube.list, "v1", "Pod", tr.metadata.namespace, f"{LABEL_TRAININGRUN}={tr.metadata.name}"
        )
        detail = f": {state.message}" if state.message else ""
        message = f"Job {job_name(tr)} failed: {state.reason}{detail}{exit_code_note(pods)}"
        await self._close_run(run_id, "FAILED")
        p.status["completionTime"] = state.completion_time or now_iso(p.now)
        p.condition("Trained", False, state.reason, message)
        if tr.spec.registration is not None:
            p.condition("Registered", False, "JobFailed", "nothing registered: the training failed")
        p.phase("Failed", state.reason, message)
        p.event("JobFailed", message, warning=True)

    async def _close_run(self, run_id: str, status: str) -> None:
        """End the run if nobody did (best effort: the TrainingRun's outcome is reported all the same)."""
        assert self.runs is not None
        try:
            if (await self.runs.outcome(run_id)).open:
                await self.runs.end_run(run_id, status)
        except MlflowError as exc:
            log.warning("could not mark MLflow run %s %s: %s", run_id, status, exc)

    async def _job_succeeded(self, tr: TrainingRun, p: Pass, run_id: str, state: JobState) -> None:
        assert self.runs is not None
        run = await self.runs.outcome(run_id)
        if run.open:  # the command exited 0 without ending the run (e.g. a custom image)
            await self.runs.end_run(run_id, "FINISHED")
        elif run.status != "FINISHED":
            message = f"Job {job_name(tr)} completed but MLflow run {run_id} ended {run.status}"
            p.status["completionTime"] = state.completion_time or now_iso(p.now)
            p.condition("Trained", False, "RunFailed", message)
            p.phase("Failed", "RunFailed", message)
            p.event("RunFailed", message, warning=True)
            return
        p.status["completionTime"] = state.completion_time or now_iso(p.now)
        gates = tr.spec.registration.gates if tr.spec.registration is not None else []
        p.status["metrics"] = _status_metrics(run, [g.metric for g in gates])
        p.status["headlineMetric"] = headline(gates, run.metrics)
        took = _seconds(p.status.get("startTime"), p.status["completionTime"])
        trained = f"Job {job_name(tr)} completed{f' in {took:.0f}s' if took is not None else ''}; " + (
            p.status["headlineMetric"] or "no accuracy logged"
        )
        p.condition("Trained", True, "Trained", trained)
        p.event("Trained", trained)
        reg = tr.spec.registration
        if reg is None:
            p.phase("Succeeded", "Succeeded", trained, ready=True)
            return
        results, failures = evaluate_gates(reg.gates, run.metrics)
        p.status["gates"] = [r.to_dict() for r in results]
        if failures:
            message = f"gate failed: {'; '.join(failures)}; {reg.model} not registered"
            p.condition("Registered", False, "GateFailed", message)
            p.phase("Rejected", "GateFailed", message)
            p.event("GateFailed", message, warning=True)
            return
        ns_name = f"{tr.metadata.namespace}/{tr.metadata.name}"
        version = await self.runs.register(
            reg.model, run_id, tags={**(reg.tags or {}), "slipway.trainingrun": ns_name}, description=reg.description
        )
        if reg.alias:
            await self.runs.set_alias(reg.model, reg.alias, version.version)
        if reg.stage:
            await self.runs.transition_stage(reg.model, version.version, reg.stage)
        p.status["modelVersion"] = version.version
        p.status["modelVersionRef"] = modelversion_name(reg.model, version.version)
        moved = ", ".join([f"alias {reg.alias}"] * bool(reg.alias) + [f"stage {reg.stage}"] * bool(reg.stage))
        message = f"registered {reg.model} version {version.version}{f' ({moved})' if moved else ''}"
        p.condition("Registered", True, "Registered", message)
        p.phase("Succeeded", "Succeeded", message, ready=True)
        p.event("Registered", message)


def _status_metrics(run: RunOutcome, first: Sequence[str]) -> dict[str, float]:
    """The run's final metrics for status: the gated ones, then the rest by name, at most MAX_STATUS_METRICS."""
    names = [m for m in first if m in run.metrics] + sorted(m for m in run.metrics if m not in first)
    return {m: run.metrics[m] for m in names[:MAX_STATUS_METRICS]}
