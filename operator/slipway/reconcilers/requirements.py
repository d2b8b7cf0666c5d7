"""Promotion requirements in a pass: gather the tracked version's facts, judge them, and say so in status and events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import API_VERSION
from slipway.clients.kube import Kube
from slipway.clients.model_signature import SignatureReader
from slipway.rollout.requirements import Verdict, VersionFacts, evaluate
from slipway.rollout.state import RolloutState

from .status import Event, set_condition

TRAININGRUN = (API_VERSION, "TrainingRun")
TRAININGRUN_TAG = "slipway.trainingrun"
CONDITION = "RequirementsMet"
SIGNATURES = SignatureReader()
"""One reader per operator process: MLmodel files do not change, their answers are cached."""


def _time(raw: Any) -> datetime | None:
    if not raw:
        return None
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))
    except ValueError:
        return None


def _training_gates(kube: Kube, ref: str | None, version: str) -> bool | None:
    """Whether the TrainingRun ``namespace/name`` passed all its gates and registered ``version`` (None: not found)."""
    if not ref or "/" not in ref:
        return None
    namespace, name = ref.split("/", 1)
    tr = kube.get(*TRAININGRUN, name, namespace)
    if tr is None:
        return None
    status = tr.get("status") or {}
    gates = status.get("gates") or []
    return str(status.get("modelVersion")) == version and all(g.get("passed") for g in gates)


def facts_of(
    kube: Kube, md: ModelDeployment, version: str, status: Mapping[str, Any], signatures: SignatureReader = SIGNATURES
) -> VersionFacts:
    """What the ModelVersion mirror, the logged model and the TrainingRun say of ``version`` (only what is required)."""
    req = md.spec.requirements
    tags = {str(k): str(v) for k, v in (status.get("tags") or {}).items()}
    metrics = {str(k): float(v) for k, v in (status.get("metrics") or {}).items()}
    storage = status.get("storageUri")
    signature = signatures.has_signature(str(storage)) if req is not None and req.signature and storage else None
    ref = tags.get(TRAININGRUN_TAG)
    gates = _training_gates(kube, ref, version) if req is not None and req.training_run_gate else None
    return VersionFacts(
        version=version,
        tags=tags,
        metrics=metrics,
        registered_at=_time(status.get("registeredAt")),
        has_signature=signature,
        training_run=ref,
        training_gates_passed=gates,
    )


def check(
    kube: Kube, md: ModelDeployment, version: str | None, statuses: Mapping[str, Mapping[str, Any]], now: datetime
) -> Verdict | None:
    """The verdict on the tracked version (None: no requirements, or no version to judge)."""
    if md.spec.requirements is None or version is None:
        return None
    return evaluate(md.spec.requirements, facts_of(kube, md, version, statuses.get(version) or {}), now)


def held_version(state: RolloutState) -> str | None:
    """What the deployment keeps following while the tracked version fails: the rollout under way, else stable."""
    if state.phase in ("Progressing", "Paused", "Promoting") and state.canary_version is not None:
        return state.canary_version
    return state.stable_version


def record(
    old: Mapping[str, Any], status: dict[str, Any], verdict: Verdict | None, generation: int | None
) -> list[Event]:
    """Set the RequirementsMet condition on ``status``; an event when the verdict changed."""
    if verdict is None:
        if any(c.get("type") == CONDITION for c in status.get("conditions") or []):
            status["conditions"] = [c for c in status["conditions"] if c.get("type") != CONDITION]
        return []
    if verdict.met:
        reason, message = "RequirementsMet", verdict.message
    else:
        reason, message = "RequirementNotMet", verdict.message
    before = next((c for c in old.get("conditions") or [] if c.get("type") == CONDITION), None)
    status["conditions"] = set_condition(
        status.get("conditions"), CONDITION, verdict.met, reason, message, generation=generation
    )
    if not verdict.met:
        status["message"] = message
    if before is not None and before.get("message") == message:
        return []
    if verdict.met:
        return [] if before is None else [Event("RequirementsMet", message, "Normal")]
    return [Event("RequirementsNotMet", message, "Warning")]
