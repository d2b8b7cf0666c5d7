"""kopf glue for TrainingRuns: an in-memory index of their Jobs, and a timer that runs passes until the run is done."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from slipway.builders.job import LABEL_TRAININGRUN
from slipway.clients.mlflow_runs import MlflowRuns
from slipway.handlers.publish import publish
from slipway.reconcilers.trainingrun import TERMINAL_PHASES, TrainingRunReconciler

GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
TICK_SECONDS = 2.0


def _reconciler(memo: Any) -> TrainingRunReconciler:
    if getattr(memo, "tr_reconciler", None) is None:
        uri = memo.settings.mlflow_uri
        memo.tr_reconciler = TrainingRunReconciler(
            memo.kube, MlflowRuns(uri) if uri else None, uri, tenancy=memo.settings.tenancy
        )
    return memo.tr_reconciler  # type: ignore[no-any-return]


def _unfinished(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") not in TERMINAL_PHASES


@kopf.index("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def trainingrun_jobs(
    namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Jobs by (namespace, TrainingRun), as the watch last saw them: a pass reads its Job from memory."""
    refs = copy.deepcopy(list(meta.get("ownerReferences") or []))
    job = {"metadata": {"name": name, "ownerReferences": refs}, "status": copy.deepcopy(dict(status))}
    return {(namespace, labels[LABEL_TRAININGRUN]): job}


@kopf.timer(GROUP, VERSION, "trainingruns", interval=TICK_SECONDS, when=_unfinished)
async def follow(
    body: kopf.Body, patch: kopf.Patch, name: str, namespace: str | None, memo: Any, **kwargs: Any
) -> None:
    """Run one pass (create the MLflow run, then the Job; follow it; gate and register) and publish it."""
    index: kopf.Index[tuple[str | None, str], dict[str, Any]] = kwargs["trainingrun_jobs"]
    jobs = list(index.get((namespace, name), []))
    publish(await _reconciler(memo).reconcile(body, jobs), body, patch)


@kopf.on.cleanup()
async def close_mlflow_runs(memo: Any, **_: Any) -> None:
    """Stop the MLflow client's threads."""
    reconciler: TrainingRunReconciler | None = getattr(memo, "tr_reconciler", None)
    if reconciler is not None and reconciler.runs is not None:
        reconciler.runs.close()
