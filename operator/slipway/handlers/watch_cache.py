"""kopf glue of the watch cache: every object kopf's watches deliver for a pass's reads goes into it.

Indexing handlers (not event handlers) fill it, because kopf runs no other handler before every
indexed kind has delivered its initial listing: the first event handler to run marks the cache
complete (``primed``). Deletions come through event handlers (kopf calls no indexing handler for
them). The handlers return nothing, so kopf's own indices stay empty.
"""

from __future__ import annotations

from typing import Any

import kopf

from slipway.api.names import GROUP, VERSION

PREDICTOR_SUFFIX = "-predictor"
"""KServe names a version's predictor Deployment ``<InferenceService>-predictor``."""


def _put(memo: Any, body: kopf.Body, keep: bool) -> None:
    cache = getattr(getattr(memo, "kube", None), "cache", None)
    if cache is not None:
        cache.observe(body, deleted=not keep)  # it keeps its JSON (trimmed for the children's kinds)


def complete(memo: Any) -> None:
    """Called by every event handler that queues a pass, first: kopf runs none before every indexed kind is listed.

    So the cache is known complete before the pass it queues observes, whichever handler of the
    event kopf runs first.
    """
    cache = getattr(getattr(memo, "kube", None), "cache", None)
    if cache is not None:
        cache.primed = True


def _gone(memo: Any, event: kopf.RawEvent) -> None:
    cache = getattr(getattr(memo, "kube", None), "cache", None)
    if cache is None:
        return
    cache.primed = True  # an event handler runs: kopf has every indexed kind's initial listing in
    obj = event.get("object")
    if event.get("type") == "DELETED" and isinstance(obj, dict):
        cache.observe(obj, deleted=True)


@kopf.index(GROUP, VERSION, "modeldeployments")
async def cache_modeldeployment(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A ModelDeployment, whole."""
    _put(memo, body, True)


@kopf.index(GROUP, VERSION, "modelversions")
async def cache_modelversion(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A ModelVersion, whole (they are small)."""
    _put(memo, body, True)


@kopf.index("serving.kserve.io", "v1beta1", "inferenceservices")
async def cache_inferenceservice(body: kopf.Body, memo: Any, **_: Any) -> None:
    """An InferenceService, a ModelDeployment's or not (the ownership check asks about any name)."""
    _put(memo, body, True)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers")
async def cache_hpa(body: kopf.Body, memo: Any, **_: Any) -> None:
    """A HorizontalPodAutoscaler, its metadata (for the ownership check)."""
    _put(memo, body, True)


@kopf.index("gateway.networking.k8s.io", "v1", "httproutes")
async def cache_httproute(body: kopf.Body, memo: Any, **_: Any) -> None:
    """An HTTPRoute, its metadata (for the ownership check)."""
    _put(memo, body, True)


@kopf.index("apps", "v1", "deployments")
async def cache_predictor(body: kopf.Body, name: str, memo: Any, **_: Any) -> None:
    """A predictor Deployment (named by KServe after its InferenceService); other Deployments are not kept."""
    if name.endswith(PREDICTOR_SUFFIX):
        _put(memo, body, True)


@kopf.on.event(GROUP, VERSION, "modeldeployments", id="cache_modeldeployment_gone")
@kopf.on.event(GROUP, VERSION, "modelversions", id="cache_modelversion_gone")
@kopf.on.event("serving.kserve.io", "v1beta1", "inferenceservices", id="cache_inferenceservice_gone")
@kopf.on.event("apps", "v1", "deployments", id="cache_predictor_gone")
@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", id="cache_hpa_gone")
@kopf.on.event("gateway.networking.k8s.io", "v1", "httproutes", id="cache_httproute_gone")
async def cache_gone(event: kopf.RawEvent, memo: Any, **_: Any) -> None:
    """A deletion leaves the cache; the first event marks the cache complete."""
    _gone(memo, event)
