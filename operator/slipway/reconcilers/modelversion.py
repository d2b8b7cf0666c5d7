"""ModelVersion status from the registry: a pure mapping from what MLflow reports to status, conditions and events.

The registry sync (``reconcilers/registry.py``) observes MLflow and calls :func:`reconcile` for
each ModelVersion object; this module only decides. Conditions:

- ``Synced`` — True (reason ``Synced``, or ``RegistrySlow`` when MLflow answered but slowly
  and the poll is backing off); False with reason ``NotFound`` (the model or version is not in
  MLflow: the last mirrored fields are kept, nothing is deleted), ``RegistryUnavailable`` (MLflow
  unreachable, timing out or failing: fields kept, the sync backs off) or ``RegistryError``.
- ``Ready`` — the version's artifacts resolved to a ``storageUri`` KServe can load.

Events: ``StageChanged`` and ``AliasMoved`` when a change is observed on an object that was
already mirrored (not on the first copy), and a ``NotFound`` warning when a version disappears.
``syncedAt`` moves only when something else in the status changed, so a steady poll writes
nothing to the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from slipway.api import ModelVersionStatus
from slipway.clients.mlflow import VersionRecord
from slipway.reconcilers.status import Event, Outcome, get_condition, now_iso, set_condition, status_changed

Problem = Literal["NotFound", "RegistryUnavailable", "RegistryError"]
STATUS_FIELDS = frozenset(info.alias or name for name, info in ModelVersionStatus.model_fields.items())
"""Keys the CRD's status schema keeps; anything else would be pruned and look changed on every poll."""
REGISTRY_STATES = frozenset({"PENDING_REGISTRATION", "FAILED_REGISTRATION", "READY"})
STAGES = frozenset({"None", "Staging", "Production", "Archived"})


@dataclass(frozen=True)
class Observation:
    """What one sync learned about one version: its record, or why there is none."""

    record: VersionRecord | None = None
    model_aliases: Mapping[str, str] = field(default_factory=dict)
    """Every alias of the model → its version, to say where a moved alias went."""
    problem: Problem | None = None
    message: str = ""
    slow: str = ""
    """Set (to a human explanation) when MLflow answered but slowly and the poll backs off."""


def found(record: VersionRecord, model_aliases: Mapping[str, str], slow: str = "") -> Observation:
    """The version exists in MLflow."""
    return Observation(record=record, model_aliases=model_aliases, slow=slow)


def missing(message: str) -> Observation:
    """The model or the version is not in MLflow."""
    return Observation(problem="NotFound", message=message)


def failed(problem: Problem, message: str) -> Observation:
    """MLflow could not be read (unavailable or refusing)."""
    return Observation(problem=problem, message=message)


def spec_of(body: Mapping[str, Any]) -> tuple[str, str]:
    """(model, version) named by a ModelVersion object, version as MLflow spells it."""
    spec = body.get("spec") or {}
    return str(spec.get("model", "")), str(spec.get("version", ""))


def reconcile(body: Mapping[str, Any], obs: Observation, now: datetime | None = None) -> Outcome:
    """The status a ModelVersion should have given the observation, and the events to post."""
    now = now or datetime.now(UTC)
    old: dict[str, Any] = dict(body.get("status") or {})
    generation = (body.get("metadata") or {}).get("generation")
    conditions = list(old.get("conditions") or [])
    events: list[Event] = []
    status: dict[str, Any] = {}
    if obs.record is not None:
        status.update(_mirror(obs.record))
        reason, message = ("RegistrySlow", obs.slow) if obs.slow else ("Synced", "in step with the MLflow registry")
        conditions = set_condition(conditions, "Synced", True, reason, message, generation=generation, now=now)
        ready, why, text = _readiness(obs.record)
        conditions = set_condition(conditions, "Ready", ready, why, text, generation=generation, now=now)
        status["message"] = None
        events += _changes(old, status, obs.model_aliases, spec_of(body)[1])
    else:
        problem = obs.problem or "RegistryError"
        was = get_condition(conditions, "Synced") or {}
        conditions = set_condition(conditions, "Synced", False, problem, obs.message, generation=generation, now=now)
        status["message"] = obs.message
        if problem == "NotFound" and was.get("reason") != "NotFound":
            events.append(Event("NotFound", obs.message, "Warning"))
    status["conditions"] = conditions
    status["observedGeneration"] = generation
    status = {k: v for k, v in status.items() if k in STATUS_FIELDS}
    if status_changed(old, status):
        status["syncedAt"] = now_iso(now)
    return Outcome(status=status, events=events)


def _mirror(record: VersionRecord) -> dict[str, Any]:
    info, run = record.info, record.run
    aliases = sorted(info.aliases)
    return {
        "stage": info.stage if info.stage in STAGES else "None",
        "aliases": aliases,
        "tags": dict(info.tags),
        "metrics": dict(run.metrics) if run else {},
        "params": dict(run.params) if run else {},
        "runId": info.run_id,
        "source": info.source,
        "storageUri": record.storage_uri,
        "flavors": list(record.flavors),
        "description": info.description,
        "registryStatus": info.status if info.status in REGISTRY_STATES else None,
        "registeredAt": _iso_ms(info.created_ms),
        "updatedAt": _iso_ms(info.updated_ms),
    }


def _readiness(record: VersionRecord) -> tuple[bool, str, str]:
    state = record.info.status
    if state == "PENDING_REGISTRATION":
        return False, "PendingRegistration", "MLflow is still registering the version"
    if state == "FAILED_REGISTRATION":
        return False, "FailedRegistration", "MLflow failed to register the version"
    if record.storage_uri:
        return True, "StorageResolved", f"artifacts at {record.storage_uri}"
    where = record.artifact_uri or record.info.source or "nothing"
    return (
        False,
        "StorageUnresolved",
        f"cannot map {where} to a URI KServe can load (mlflow-artifacts:/ needs the server's artifacts destination)",
    )


def _changes(
    old: Mapping[str, Any], new: Mapping[str, Any], model_aliases: Mapping[str, str], version: str
) -> list[Event]:
    """StageChanged / AliasMoved events between the mirrored status and the new one."""
    if "stage" not in old:
        return []  # first copy: nothing moved, it was just seen
    events: list[Event] = []
    if old.get("stage") != new["stage"]:
        events.append(Event("StageChanged", f"stage {old.get('stage')} → {new['stage']}"))
    before, after = set(old.get("aliases") or []), set(new["aliases"])
    for alias in sorted(after - before):
        events.append(Event("AliasMoved", f"alias {alias} now points at version {version}"))
    for alias in sorted(before - after):
        target = model_aliases.get(alias)
        where = f"moved to version {target}" if target else "deleted"
        events.append(Event("AliasMoved", f"alias {alias} left version {version}: {where}"))
    return events


def _iso_ms(ms: int | None) -> str | None:
    return now_iso(datetime.fromtimestamp(ms / 1000, UTC)) if ms else None
