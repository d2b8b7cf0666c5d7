"""kopf glue for ModelDeployments: changes, a timer that drives steps, and ModelVersion moves, all into one Driver."""

from __future__ import annotations

import logging
from typing import Any, cast

import kopf

from slipway.builders.names import LABEL_DEPLOYMENT, LABEL_MODEL, sanitise_model_name
from slipway.reconcilers.modeldeployment import Driver
from slipway.reconcilers.notifier import notify
from slipway.reconcilers.status import Outcome

GROUP, VERSION = "ml.slipway.dev", "v1alpha1"
TICK_SECONDS = 1.0
ModelKey = tuple[str, str]
"""(namespace, sanitised model name): how ModelVersions and the ModelDeployments tracking them meet."""


@kopf.on.startup()
async def start_driver(memo: Any, **_: Any) -> None:
    """One Driver in the operator-wide memo (per-object memos are copies of it), after startup.configure."""
    if "kube" not in memo or "settings" not in memo:
        raise kopf.TemporaryError("waiting for startup.configure", delay=0.1)
    memo.md_driver = Driver(
        memo.kube, memo.settings.prometheus_url, memo.settings.tenancy, memo.settings.storage_uri_prefixes
    )


def _driver(memo: Any) -> Driver:
    return memo.md_driver  # type: ignore[no-any-return]


def _post(body: dict[str, Any] | None, outcome: Outcome | None) -> None:
    if body is None or outcome is None:
        return
    notify(body, outcome.events, outcome.status)
    for event in outcome.events:
        kopf.event(kopf.Body(cast(Any, body)), type=event.type, reason=event.reason, message=event.message)


@kopf.on.resume(GROUP, VERSION, "modeldeployments")
@kopf.on.create(GROUP, VERSION, "modeldeployments")
@kopf.on.update(GROUP, VERSION, "modeldeployments")
async def changed(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Spec or annotations (a manual action) changed: run a pass now."""
    _driver(memo).watch(namespace or "", name)
    _post(*await _driver(memo).drive(namespace or "", name))


@kopf.timer(GROUP, VERSION, "modeldeployments", interval=TICK_SECONDS)
async def tick(name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """Drive steps: run a pass when the last one asked to be looked at again by now."""
    _driver(memo).watch(namespace or "", name)
    if _driver(memo).is_due(namespace or "", name):
        _post(*await _driver(memo).drive(namespace or "", name))


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
    """A ModelVersion changed (an alias or stage moved): run a pass on the deployments of its model."""
    index: kopf.Index[ModelKey, str] = kwargs["deployments_by_model"]  # kopf passes each index by its name
    model = (body.get("metadata", {}).get("labels") or {}).get(LABEL_MODEL)
    for name in sorted(set(index.get((namespace or "", model), ()))) if model else []:
        logger.info("model %s changed: a pass on ModelDeployment %s", model, name)
        _post(*await _driver(memo).drive(namespace or "", name))


def _ready(status: Any) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (status or {}).get("conditions") or [])


Logger = logging.Logger | logging.LoggerAdapter[Any]


def _deployment_due(memo: Any, labels: kopf.Labels, namespace: str | None, logger: Logger, news: str) -> None:
    """News of a child makes its ModelDeployment due on the next tick (if this operator drives it)."""
    deployment = labels.get(LABEL_DEPLOYMENT)
    if deployment and _driver(memo).watches(namespace or "", deployment):
        logger.info("%s: ModelDeployment %s is due", news, deployment)
        _driver(memo).expedite(namespace or "", deployment)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
async def deployment_deleted(type: str | None, name: str, namespace: str | None, memo: Any, **_: Any) -> None:
    """A ModelDeployment is gone: the Driver stops tracking it."""
    if type == "DELETED" and "md_driver" in memo:
        _driver(memo).forget(namespace or "", name)


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
    """News of a child makes its deployment due on the next tick (not the next resync).

    The news: the child was deleted, or its spec changed, since the operator applied it (apply it
    again); or an InferenceService is Ready (a rollout waiting for it can move on).
    """
    if "md_driver" not in memo:
        return
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
