"""Canary budgets in a pass: count the pods each version holds, split the budget (rollout.budget) for the builders."""

from __future__ import annotations

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import version_of
from slipway.clients.kube import Kube
from slipway.rollout.budget import Split, replica_budget, split
from slipway.rollout.state import RolloutState

ISVC_LABEL = "serving.kserve.io/inferenceservice"
DONE_PHASES = ("Succeeded", "Failed")
SETTLE_SECONDS = 2.0
"""Look again this soon while a version waits for replicas the other is giving back."""


def pods_by_version(kube: Kube, md: ModelDeployment) -> dict[str, int]:
    """Pods (terminating ones included: they still hold their GPUs) of each version's predictor."""
    name = md.metadata.name or ""
    counts: dict[str, int] = {}
    for pod in kube.list("v1", "Pod", md.metadata.namespace, ISVC_LABEL):
        isvc = ((pod.get("metadata") or {}).get("labels") or {}).get(ISVC_LABEL, "")
        version = version_of(name, isvc)
        if version is None or ((pod.get("status") or {}).get("phase") in DONE_PHASES):
            continue
        counts[version] = counts.get(version, 0) + 1
    return counts


def plan(kube: Kube, md: ModelDeployment, state: RolloutState) -> Split | None:
    """The budget's split for this state and the pods running now (None: no budget, nothing read)."""
    if replica_budget(md.spec) is None:
        return None
    return split(md.spec, state, pods_by_version(kube, md))
