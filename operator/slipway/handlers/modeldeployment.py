"""kopf glue for ModelDeployments: changes, child news and ModelVersion moves put the object in the Driver's work queue.

No timer and no deletion handler: kopf puts no finalizer on a ModelDeployment, so deleting one
(or its namespace) never waits for the operator; its children go by their owner references.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import kopf

from slipway.api.names import GROUP, VERSION
from slipway.builders.names import LABEL_DEPLOYMENT, LABEL_MODEL, sanitise_model_name
from slipway.handlers.watch_cache import complete
from slipway.reconcilers.driver import Driver

ModelKey = tuple[str, str]
"""(namespace, sanitised model name): how ModelVersions and the ModelDeployments tracking them meet."""


@kopf.on.startup()
async def start_driver(memo: Any, **_: Any) -> None:
    """One Driver in the operator-wide memo (per-object memos are copies of it), its queue's workers started."""
    if "kube" not in memo or "settings" not in memo:
        raise kopf.TemporaryError("waiting for startup.configure", delay=0.1)
    settings = memo.settings
    memo.md_driver = Driver(
        memo.kube, settings.prometheus_url, settings.tenancy, settings.storage_uri_prefixes, workers=settings.workers
    )
    memo.md_driver.queue.start()


@kopf.on.cleanup()
async def stop_driver(memo: Any, **_: Any) -> None:
    """Stop the queue's workers."""
    driver: Driver | None = getattr(memo, "md_driver", None)
    if driver is not None:
        await driver.queue.stop()


def _driver(memo: Any) -> Driver:
    return memo.md_driver  # type: ignore[no-any-return]


NOT_OURS_TO_ACT_ON = ("kopf.zalando.org/", "slipway.dev/")
"""Annotation prefixes of bookkeeping (kopf's, and an earlier Slipway's kopf state): no pass when only they change."""


def acted_on(body: kopf.Body) -> str:
    """A digest of what a pass acts on: the spec (its generation), labels and annotations, not the status."""
    meta = body.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if not k.startswith(NOT_OURS_TO_ACT_ON)}
    seen = {"generation": meta.get("generation"), "labels": meta.get("labels") or {}, "annotations": annotations}
    return hashlib.sha256(json.dumps(seen, sort_keys=True).encode()).hexdigest()


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def deployment_event(
    type: str | None, body: kopf.Body, name: str, namespace: str | None, memo: Any, **_: Any
) -> None:
    """First sight (a new object, or the operator started), a spec, label or annotation change: a pass soon.

    An event handler, not kopf's create/update/resume handlers: those write kopf's bookkeeping
    annotation on every object after every change (a write per change, and its watch event).
    Gone: the Driver stops tracking it.
    """
    if "md_driver" not in memo:
        return
    complete(memo)
    if type == "DELETED":
        _driver(memo).forget(namespace or "", name)
    elif _driver(memo).noticed(namespace or "", name, acted_on(body)):
        _driver(memo).enqueue(namespace or "", name)


@kopf.index(GROUP, VERSION, "modeldeployments")
def deployments_by_model(name: str, namespace: str | None, spec: kopf.Spec, **_: Any) -> dict[ModelKey, str]:
    """ModelDeployments by the model they track, kept in memory from the watch (no list per ModelVersion event)."""
    model = sanitise_model_name(str((spec.get("model") or {}).get("name") or ""))
    return {(namespace or "", model): name}


@kopf.on.event(GROUP, VERSION, "modelversions")
async def version_moved(
    body: kopf.Body,
    namespace: str | None,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **kwargs: Any,
) -> None:
    """A ModelVersion changed (an alias or stage moved): a pass on the deployments of its model."""
    if "md_driver" not in memo:
        return
    complete(memo)
    index: kopf.Index[ModelKey, str] = kwargs["deployments_by_model"]  # kopf passes each index by its name
    model = (body.get("metadata", {}).get("labels") or {}).get(LABEL_MODEL)
    for name in sorted(set(index.get((namespace or "", model), ()))) if model else []:
        logger.info("model %s changed: a pass on ModelDeployment %s", model, name)
        _driver(memo).enqueue(namespace or "", name)


def _ready(status: Any) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (status or {}).get("conditions") or [])


Logger = logging.Logger | logging.LoggerAdapter[Any]


def _deployment_due(memo: Any, labels: kopf.Labels, namespace: str | None, logger: Logger, news: str) -> None:
    """News of a child puts its ModelDeployment in the queue (if this operator drives it)."""
    deployment = labels.get(LABEL_DEPLOYMENT)
    if deployment and _driver(memo).watches(namespace or "", deployment):
        logger.info("%s: a pass on ModelDeployment %s", news, deployment)
        _driver(memo).enqueue(namespace or "", deployment)


async def _child_event(
    *,
    event: kopf.RawEvent,
    body: kopf.Body,
    name: str,
    labels: kopf.Labels,
    namespace: str | None,
    memo: Any,
    logger: logging.Logger | logging.LoggerAdapter[Any],
    **_: Any,
) -> None:
    """News of a child puts its deployment in the queue now (not at the next resync).

    The news: the child was deleted, or its spec changed, since the operator applied it (apply it
    again); or an InferenceService is Ready (a rollout waiting for it can move on).
    """
    if "md_driver" not in memo:
        return
    complete(memo)
    deleted = event.get("type") == "DELETED"
    key = (str(body.get("apiVersion")), str(body.get("kind")), namespace or "", name)
    live = event.get("object")
    if memo.kube.applied.observed(key, None if deleted or not isinstance(live, dict) else live):
        generation = body.metadata.get("generation")
        what = "deleted" if deleted else "changed" if generation is None else f"changed (generation {generation})"
        _deployment_due(memo, labels, namespace, logger, f"{key[1]} {name} {what} outside the operator")
    elif not deleted and key[1] == "InferenceService" and _ready(body.get("status")):
        _deployment_due(memo, labels, namespace, logger, f"InferenceService {name} is Ready")


CHILDREN = (
    ("serving.kserve.io", "v1beta1", "inferenceservices"),
    ("autoscaling", "v2", "horizontalpodautoscalers"),
    ("gateway.networking.k8s.io", "v1", "httproutes"),
)
for _group, _version, _plural in CHILDREN:
    kopf.on.event(_group, _version, _plural, labels={LABEL_DEPLOYMENT: kopf.PRESENT}, id="child_changed")(_child_event)
