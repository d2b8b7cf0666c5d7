"""kopf glue for TrainingRuns: an in-memory index of their Jobs; changes and Job news put the run in a work queue.

No timer: kopf puts no finalizer on a TrainingRun, so deleting one (finished or not, or its
namespace) never waits for the operator; its Job and Service go by their owner references.
"""

from __future__ import annotations

import copy
from typing import Any

import kopf

from slipway.api.names import GROUP, VERSION
from slipway.builders.job import LABEL_TRAININGRUN
from slipway.clients.mlflow_runs import MlflowRuns
from slipway.reconcilers.trainingrun import Key, TrainingRunReconciler
from slipway.reconcilers.workqueue import WorkQueue

WORKERS = 2


@kopf.index("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
def trainingrun_jobs(
    namespace: str | None, name: str, labels: kopf.Labels, meta: kopf.Meta, status: kopf.Status, **_: Any
) -> dict[tuple[str | None, str], dict[str, Any]]:
    """Jobs by (namespace, TrainingRun), as the watch last saw them: a pass reads its Job from memory."""
    refs = copy.deepcopy(list(meta.get("ownerReferences") or []))
    job = {"metadata": {"name": name, "ownerReferences": refs}, "status": copy.deepcopy(dict(status))}
    return {(namespace, labels[LABEL_TRAININGRUN]): job}


@kopf.on.startup()
async def start_trainingruns(memo: Any, **kwargs: Any) -> None:
    """The reconciler and its work queue (workers started), after startup.configure."""
    if "kube" not in memo or "settings" not in memo:
        raise kopf.TemporaryError("waiting for startup.configure", delay=0.1)
    uri = memo.settings.mlflow_uri
    runs = MlflowRuns(uri, connection=getattr(memo, "mlflow", None)) if uri else None
    reconciler = TrainingRunReconciler(memo.kube, runs, uri, tenancy=memo.settings.tenancy)
    index: kopf.Index[tuple[str | None, str], dict[str, Any]] = kwargs["trainingrun_jobs"]  # live: the watch fills it

    async def work(key: Key) -> float | None:
        return await reconciler.drive(key, lambda k: list(index.get(k, [])))

    memo.tr_reconciler = reconciler
    memo.tr_queue = WorkQueue[Key]("trainingrun", work, workers=WORKERS)
    memo.tr_queue.start()


@kopf.on.event(GROUP, VERSION, "trainingruns")
async def trainingrun_changed(type: str | None, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Any news of a TrainingRun: a pass soon (one that finds it finished does nothing); gone: no more passes."""
    queue: WorkQueue[Key] | None = getattr(memo, "tr_queue", None)
    if queue is None:
        return
    if type == "DELETED":
        queue.discard((namespace or "", name))
    else:
        queue.add((namespace or "", name))


@kopf.on.event("batch", "v1", "jobs", labels={LABEL_TRAININGRUN: kopf.PRESENT})
async def job_changed(labels: kopf.Labels, namespace: str | None, memo: Any, **_: Any) -> None:
    """A TrainingRun's Job changed (started, finished): a pass on the run now."""
    queue: WorkQueue[Key] | None = getattr(memo, "tr_queue", None)
    if queue is not None:
        queue.add((namespace or "", labels[LABEL_TRAININGRUN]))


@kopf.on.cleanup()
async def close_mlflow_runs(memo: Any, **_: Any) -> None:
    """Stop the queue's workers and the MLflow client's threads."""
    queue: WorkQueue[Key] | None = getattr(memo, "tr_queue", None)
    if queue is not None:
        await queue.stop()
    reconciler: TrainingRunReconciler | None = getattr(memo, "tr_reconciler", None)
    if reconciler is not None and reconciler.runs is not None:
        reconciler.runs.close()
