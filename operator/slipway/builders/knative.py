"""Router kserve-knative: one InferenceService <md> in Knative mode; canaryTrafficPercent splits traffic."""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import LABEL_VERSION

from .inferenceservice import API_VERSION, KIND, predictor, scrape_annotations
from .names import child_metadata


def build_knative_inference_service(
    md: ModelDeployment, version: str, storage_uri: str, canary_percent: int | None
) -> dict[str, Any]:
    """The InferenceService ``<md>`` serving ``version``.

    KServe (Knative mode) sends ``canary_percent`` to the newest revision and the rest to the
    previous rolled-out one; 0 pins all traffic back; None (field absent) promotes the newest.
    Knative scales the revisions itself, so there is no HPA on this router.
    """
    name = md.metadata.name or ""
    meta = child_metadata(md, name, version)
    meta["annotations"] = {"serving.kserve.io/deploymentMode": "Knative", **scrape_annotations()}
    spec = predictor(md, version, storage_uri)
    spec["minReplicas"] = md.spec.autoscaling.min_replicas
    spec["maxReplicas"] = md.spec.autoscaling.max_replicas
    spec["labels"] = {LABEL_VERSION: version}
    if canary_percent is not None:
        spec["canaryTrafficPercent"] = canary_percent
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta, "spec": {"predictor": spec}}
