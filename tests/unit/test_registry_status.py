"""ModelVersion status mapping: registry record → status, conditions and StageChanged/AliasMoved events."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from slipway.api import ModelVersionStatus
from slipway.clients.mlflow import RunData, VersionInfo, VersionRecord
from slipway.reconcilers.modelversion import failed, found, missing, reconcile
from slipway.reconcilers.status import get_condition, status_changed

NOW = datetime(2026, 11, 22, 12, 0, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=5)


def record(stage: str = "None", aliases: tuple[str, ...] = (), storage: str | None = "s3://b/1/m") -> VersionRecord:
    info = VersionInfo(
        name="digits",
        version="2",
        stage=stage,
        aliases=aliases,
        tags={"team": "ml"},
        run_id="r1",
        source="models:/m-abc",
        status="READY",
        description=None,
        created_ms=1_790_000_000_000,
        updated_ms=1_790_000_100_000,
    )
    run = RunData("r1", "FINISHED", "mlflow-artifacts:/1/r1/artifacts", {"accuracy": 0.97}, {"epochs": "5"})
    return VersionRecord(info, run, "mlflow-artifacts:/1/models/m-abc/artifacts", storage, ("pytorch",))


def body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "digits-v2", "namespace": "ns", "generation": 1},
        "spec": {"model": "digits", "version": "2"},
        "status": status or {},
    }


def cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    found_ = get_condition(status["conditions"], type_)
    assert found_ is not None
    return found_


def test_first_copy_mirrors_everything_without_events() -> None:
    out = reconcile(body(), found(record("Staging", ("champion",)), {"champion": "2"}), NOW)
    s = out.status
    assert s["stage"] == "Staging" and s["aliases"] == ["champion"] and s["tags"] == {"team": "ml"}
    assert s["metrics"] == {"accuracy": 0.97} and s["params"] == {"epochs": "5"} and s["runId"] == "r1"
    assert s["source"] == "models:/m-abc" and s["storageUri"] == "s3://b/1/m" and s["flavors"] == ["pytorch"]
    assert s["registeredAt"] == "2026-09-21T14:13:20Z" and s["registryStatus"] == "READY"
    assert s["syncedAt"] == "2026-11-22T12:00:00Z" and s["observedGeneration"] == 1
    assert cond(s, "Synced")["status"] == "True" and cond(s, "Ready")["reason"] == "StorageResolved"
    assert out.events == []
    ModelVersionStatus.model_validate(s)  # what we write fits the API


def test_unchanged_registry_changes_nothing() -> None:
    first = reconcile(body(), found(record(), {}), NOW).status
    again = reconcile(body(first), found(record(), {}), LATER)
    assert "syncedAt" not in again.status  # nothing moved: syncedAt stays, and there is nothing to write
    assert not status_changed(first, again.status)
    assert again.events == []


def test_stage_change_and_alias_move_post_events() -> None:
    old = reconcile(body(), found(record("Staging", ("candidate",)), {"candidate": "2"}), NOW).status
    out = reconcile(body(old), found(record("Production", ("champion",)), {"champion": "2", "candidate": "3"}), LATER)
    assert out.status["stage"] == "Production" and out.status["aliases"] == ["champion"]
    assert out.status["syncedAt"] == "2026-11-22T12:05:00Z"
    assert [(e.reason, e.message) for e in out.events] == [
        ("StageChanged", "stage Staging → Production"),
        ("AliasMoved", "alias champion now points at version 2"),
        ("AliasMoved", "alias candidate left version 2: moved to version 3"),
    ]


def test_deleted_alias() -> None:
    old = reconcile(body(), found(record(aliases=("champion",)), {"champion": "2"}), NOW).status
    out = reconcile(body(old), found(record(), {}), LATER)
    assert [e.message for e in out.events] == ["alias champion left version 2: deleted"]
    assert out.status["aliases"] == []


def test_missing_version_keeps_the_mirror_and_warns_once() -> None:
    old = reconcile(body(), found(record("Production"), {}), NOW).status
    out = reconcile(body(old), missing("version 2 of digits is not in MLflow"), LATER)
    synced = cond(out.status, "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "NotFound")
    assert synced["lastTransitionTime"] == "2026-11-22T12:05:00Z"
    assert "stage" not in out.status and "storageUri" not in out.status  # nothing deleted
    assert [(e.reason, e.type) for e in out.events] == [("NotFound", "Warning")]
    merged = {**old, **out.status}
    again = reconcile(body(merged), missing("version 2 of digits is not in MLflow"), LATER + timedelta(minutes=1))
    assert again.events == [] and not status_changed(merged, again.status)


def test_registry_unavailable_says_so_and_keeps_fields() -> None:
    old = reconcile(body(), found(record("Production", ("champion",)), {"champion": "2"}), NOW).status
    out = reconcile(body(old), failed("RegistryUnavailable", "MLflow unavailable: refused; retrying in 20s"), LATER)
    synced = cond(out.status, "Synced")
    assert (synced["status"], synced["reason"]) == ("False", "RegistryUnavailable")
    assert out.status["message"].startswith("MLflow unavailable")
    assert set(out.status) == {"conditions", "message", "observedGeneration", "syncedAt"}
    assert out.events == []
    back = reconcile(body({**old, **out.status}), found(record("Production", ("champion",)), {"champion": "2"}), LATER)
    assert cond(back.status, "Synced")["status"] == "True" and back.status["message"] is None and back.events == []


def test_slow_registry_is_synced_but_says_so() -> None:
    out = reconcile(body(), found(record(), {}, slow="MLflow took 4.0s to answer"), NOW)
    assert (cond(out.status, "Synced")["status"], cond(out.status, "Synced")["reason"]) == ("True", "RegistrySlow")


def test_unresolved_storage_is_not_ready() -> None:
    out = reconcile(body(), found(record(storage=None), {}), NOW)
    ready = cond(out.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "StorageUnresolved")
    assert "mlflow-artifacts:/1/models/m-abc/artifacts" in ready["message"]
    pending = replace(record(), info=replace(record().info, status="PENDING_REGISTRATION"))
    assert cond(reconcile(body(), found(pending, {}), NOW).status, "Ready")["reason"] == "PendingRegistration"


def test_only_fields_of_the_schema_are_written() -> None:
    out = reconcile(body(), found(record(), {}), NOW)
    fields = {info.alias or name for name, info in ModelVersionStatus.model_fields.items()}
    assert set(out.status) <= fields
