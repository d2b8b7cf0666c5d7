"""kopf glue of the registry sync: start it with the operator, feed it watch events, stop it."""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

import kopf

from slipway.api import GROUP, VERSION
from slipway.clients.mlflow import MlflowRegistry
from slipway.receivers import mlflow_webhook
from slipway.reconcilers.registry import RegistrySync, referenced_model


@kopf.on.startup()
async def start_registry_sync(memo: Any, logger: logging.Logger | logging.LoggerAdapter[Any], **_: Any) -> None:
    """Start the sync loop (after `startup.configure` put the settings and the kube client in the memo)."""
    if "settings" not in memo or "kube" not in memo:
        raise kopf.TemporaryError("waiting for startup.configure", delay=0.1)
    settings = memo.settings
    if not settings.mlflow_uri:
        logger.warning("no MLflow URI (SLIPWAY_MLFLOW_URI): ModelVersions will not be synced")
        return
    registry = MlflowRegistry(
        settings.mlflow_uri,
        artifacts_destination=settings.mlflow_artifacts_destination,
        connection=getattr(memo, "mlflow", None),
    )
    sync = RegistrySync(
        memo.kube,
        registry,
        poll_seconds=settings.mlflow_poll_seconds,
        resync_seconds=settings.mlflow_resync_seconds,
        max_backoff_seconds=settings.mlflow_max_backoff_seconds,
        gc_grace_seconds=settings.registry_gc_grace_seconds,
    )
    mlflow_webhook.receiver.configure(settings.mlflow_webhook_secret, sync.trigger)
    memo.registry_sync = sync
    memo.registry_sync_task = asyncio.create_task(sync.run(), name="registry sync")


@kopf.on.cleanup()
async def stop_registry_sync(memo: Any, **_: Any) -> None:
    """Stop the loop and the MLflow thread pool."""
    sync: RegistrySync | None = getattr(memo, "registry_sync", None)
    if sync is not None:
        await sync.stop()
        memo.registry_sync_task.cancel()
        sync.registry.close()


def _feed(memo: Any, kind: str, event_type: str | None, body: kopf.Body) -> None:
    """Feed the sync; a reference the tenancy policy forbids is fed as no reference (nothing is mirrored for it)."""
    sync: RegistrySync | None = getattr(memo, "registry_sync", None)
    if sync is None:
        return
    seen = copy.deepcopy(dict(body))
    model = referenced_model(kind, seen) if kind != "ModelVersion" else (seen.get("spec") or {}).get("model")
    namespace = (seen.get("metadata") or {}).get("namespace") or ""
    if model and not memo.settings.tenancy.allows_model(namespace, str(model)):
        if kind == "ModelVersion":
            return
        seen["spec"] = {}
    sync.observe(kind, event_type, seen)


@kopf.on.event(GROUP, VERSION, "modelversions")
def modelversion_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A ModelVersion changed: keep the sync's view of the mirrors current."""
    _feed(memo, "ModelVersion", type, body)


@kopf.on.event(GROUP, VERSION, "modeldeployments")
def modeldeployment_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A ModelDeployment changed: the model it names is referenced in its namespace."""
    _feed(memo, "ModelDeployment", type, body)


@kopf.on.event(GROUP, VERSION, "trainingruns")
def trainingrun_event(type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:
    """A TrainingRun changed: the model it registers into is referenced in its namespace."""
    _feed(memo, "TrainingRun", type, body)
