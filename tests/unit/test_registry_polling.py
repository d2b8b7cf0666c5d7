"""Registry sync logic with fakes: naming contract, discovery, writes only on change, backoff, garbage collection."""

from __future__ import annotations

import copy
import re
from dataclasses import replace
from typing import Any

import pytest

from slipway.clients.mlflow import ModelSnapshot, RegistryUnavailable, RunData, VersionInfo, VersionRecord
from slipway.reconcilers.registry import (
    ClusterView,
    RegistrySync,
    backoff,
    model_slug,
    modelversion_labels,
    modelversion_name,
    referenced_model,
)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


@pytest.mark.parametrize(
    ("model", "slug"),
    [("digits-cnn", "digits-cnn"), ("fraud2", "fraud2"), ("Digits_CNN", "digits-cnn"), ("x" * 70, "x" * 63)],
)
def test_model_slug_is_dns_and_label_safe(model: str, slug: str) -> None:
    assert model_slug(model) == slug and DNS_LABEL.match(slug)


def test_names_and_labels_are_the_shared_contract() -> None:
    assert modelversion_name("digits-cnn", 7) == "digits-cnn-v7"
    assert modelversion_labels("digits-cnn", "7") == {
        "ml.slipway.dev/model": "digits-cnn",
        "ml.slipway.dev/version": "7",
        "app.kubernetes.io/managed-by": "slipway",
    }


def test_referenced_model() -> None:
    assert referenced_model("ModelDeployment", {"spec": {"model": {"name": "m", "track": {}}}}) == "m"
    assert referenced_model("TrainingRun", {"spec": {"register": {"model": "m"}}}) == "m"
    assert referenced_model("TrainingRun", {"spec": {}}) is None


def test_backoff_grows_and_caps() -> None:
    assert [backoff(10, n, 120) for n in range(6)] == [10, 20, 40, 80, 120, 120]
    assert backoff(300, 3, 120) == 300  # never faster than the poll


def md(ns: str, name: str, model: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns, "name": name}, "spec": {"model": {"name": model}}}


def mv(ns: str, model: str, version: str, rv: int = 1, managed: bool = True) -> dict[str, Any]:
    labels = modelversion_labels(model, version) if managed else {}
    meta = {"namespace": ns, "name": f"{model}-v{version}", "labels": labels, "resourceVersion": str(rv), "uid": "u"}
    return {"metadata": meta, "spec": {"model": model, "version": version}, "status": {}}


def test_cluster_view_tracks_uses_per_namespace() -> None:
    view = ClusterView()
    assert view.observe("ModelDeployment", None, md("a", "d1", "m")) == ("m", True)
    assert view.observe(
        "TrainingRun", "ADDED", {"metadata": {"namespace": "a", "name": "t"}, "spec": {"register": {"model": "m"}}}
    ) == ("m", False)
    assert view.observe("ModelDeployment", "ADDED", md("b", "d1", "m")) == ("m", True)  # new namespace: sync now
    assert view.namespaces("m") == ["a", "b"]
    view.observe("ModelDeployment", "DELETED", md("b", "d1", "m"))
    assert view.namespaces("m") == ["a"]
    view.observe("ModelVersion", None, mv("c", "n", "1", managed=False))  # a user's own mirror is tracked too
    assert view.tracked() == {"m", "n"} and view.namespaces("n") == ["c"]
    view.observe("ModelVersion", "MODIFIED", mv("c", "n", "1", rv=5, managed=False))
    view.observe("ModelVersion", "MODIFIED", mv("c", "n", "1", rv=3, managed=False))  # stale event ignored
    assert view.mirrors("c", "n")[0]["metadata"]["resourceVersion"] == "5"
    view.observe("ModelVersion", "DELETED", mv("c", "n", "1"))
    assert view.tracked() == {"m"}


class FakeRegistry:
    def __init__(self) -> None:
        self.snapshots: dict[str, ModelSnapshot] = {}
        self.down = False
        self.reads = 0

    async def snapshot(self, name: str) -> ModelSnapshot:
        self.reads += 1
        if self.down:
            raise RegistryUnavailable("connection refused")
        return self.snapshots.get(name, ModelSnapshot(name, False, {}, {}))


class FakeResource:
    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube

    def create(self, body: dict[str, Any], namespace: str) -> None:
        self.kube.events.append((body["involvedObject"]["name"], body["reason"], body["message"]))


class FakeKube:
    """The Kube methods the sync uses, storing objects in memory and counting writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[str] = []
        self.events: list[tuple[str, str, str]] = []
        self.rv = 100

    def _bump(self, obj: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        return copy.deepcopy(obj)

    def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        self.writes.append(f"apply {meta['name']}")
        obj = self.objects.setdefault((meta["namespace"], meta["name"]), copy.deepcopy(manifest))
        return self._bump(obj)

    def patch_status(self, api_version: str, kind: str, name: str, ns: str | None, status: dict[str, Any]) -> Any:
        self.writes.append(f"status {name}")
        obj = self.objects[(str(ns), name)]
        merged = {**obj.get("status", {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        return self._bump(obj)

    def delete(self, api_version: str, kind: str, name: str, ns: str | None) -> bool:
        self.writes.append(f"delete {name}")
        return self.objects.pop((str(ns), name), None) is not None

    def resource(self, api_version: str, kind: str) -> FakeResource:
        return FakeResource(self)


def snapshot(stage: str = "None", aliases: dict[str, str] | None = None) -> ModelSnapshot:
    aliases = aliases or {}
    versions = {}
    for v in ("1", "2"):
        info = VersionInfo(
            "m",
            v,
            stage if v == "2" else "None",
            tuple(a for a, t in aliases.items() if t == v),
            {},
            "r",
            "models:/m-1",
            "READY",
            None,
            1_790_000_000_000,
            None,
        )
        run = RunData("r", "FINISHED", "", {"accuracy": 0.9}, {})
        versions[v] = VersionRecord(info, run, "s3://b/m", "s3://b/m", ())
    return ModelSnapshot("m", True, aliases, versions)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> tuple[RegistrySync, FakeKube, FakeRegistry, Clock]:
    kube, registry, clock = FakeKube(), FakeRegistry(), Clock()
    sync = RegistrySync(kube, registry, poll_seconds=10, gc_grace_seconds=60, clock=clock)  # type: ignore[arg-type]
    return sync, kube, registry, clock


async def test_discovery_creates_mirrors_and_writes_only_changes(world: Any) -> None:
    sync, kube, registry, _clock = world
    registry.snapshots["m"] = snapshot()
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    await sync.sync_model("m")
    assert kube.writes == ["apply m-v1", "apply m-v2", "status m-v1", "status m-v2"]
    assert kube.objects[("a", "m-v2")]["status"]["storageUri"] == "s3://b/m"
    kube.writes.clear()
    await sync.sync_model("m")
    assert kube.writes == [] and registry.reads == 2  # a steady poll writes nothing
    registry.snapshots["m"] = snapshot("Production", {"champion": "2"})
    await sync.sync_model("m")
    assert kube.writes == ["status m-v2"]
    assert [(n, r) for n, r, _ in kube.events] == [("m-v2", "StageChanged"), ("m-v2", "AliasMoved")]


async def test_outage_backs_off_says_so_and_recovers(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.snapshots["m"] = snapshot()
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    sync.observe("ModelDeployment", None, md("a", "d2", "other"))
    await sync.sync_model("m")
    registry.down = True
    dues = []
    for _ in range(3):
        await sync.sync_model("m")
        dues.append(sync._schedules["m"].due - clock.now)
    assert dues == [20, 40, 60]  # capped at max_backoff_seconds (60)
    await sync.sync_model("other")
    assert sync._schedules["other"].due - clock.now == 20
    status = kube.objects[("a", "m-v1")]["status"]
    assert status["conditions"][0]["reason"] == "RegistryUnavailable" and status["stage"] == "None"
    assert len(kube.objects) == 2  # nothing deleted or created during the outage
    registry.down = False
    assert sync.trigger("m") and sync._schedules["m"].due == 0  # a webhook means it is back: read now
    await sync.sync_model("m")
    assert sync._schedules["m"].due - clock.now == 10
    assert sync._schedules["other"].due == 0  # MLflow is back: models still backing off are read at once
    assert kube.objects[("a", "m-v1")]["status"]["conditions"][0]["reason"] == "Synced"


async def test_missing_version_is_kept_as_not_found(world: Any) -> None:
    sync, kube, registry, _clock = world
    registry.snapshots["m"] = snapshot()
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    await sync.sync_model("m")
    registry.snapshots["m"] = ModelSnapshot("m", True, {}, {"1": snapshot().versions["1"]})
    await sync.sync_model("m")
    synced = kube.objects[("a", "m-v2")]["status"]["conditions"][0]
    assert (synced["status"], synced["reason"]) == ("False", "NotFound")


async def test_unreferenced_managed_mirrors_are_collected_after_the_grace(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.snapshots["m"] = snapshot()
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    sync.observe("ModelVersion", None, mv("a", "other", "1", managed=False))
    await sync.sync_model("m")
    for body in list(kube.objects.values()):
        sync.observe("ModelVersion", "MODIFIED", body)
    sync.observe("ModelDeployment", "DELETED", md("a", "d", "m"))
    await sync._collect_garbage(clock.now)
    assert not any(w.startswith("delete") for w in kube.writes)
    clock.now += 61
    await sync._collect_garbage(clock.now)
    assert sorted(w for w in kube.writes if w.startswith("delete")) == ["delete m-v1", "delete m-v2"]
    assert sync.view.tracked() == {"other"}  # the user's own ModelVersion stays


def test_trigger_ignores_untracked_models(world: Any) -> None:
    sync, *_ = world
    assert sync.trigger("nobody-uses-this") is False


async def test_models_sharing_a_slug_are_not_mixed(world: Any) -> None:
    sync, kube, registry, _clock = world
    registry.snapshots["digits-cnn"] = replace(snapshot(), name="digits-cnn")
    registry.snapshots["Digits_CNN"] = replace(snapshot(), name="Digits_CNN")
    sync.observe("ModelDeployment", None, md("a", "d1", "digits-cnn"))
    sync.observe("ModelDeployment", None, md("a", "d2", "Digits_CNN"))
    await sync.sync_model("digits-cnn")
    await sync.sync_model("Digits_CNN")  # its names are taken: skipped with a warning, nothing overwritten
    assert sorted(kube.objects) == [("a", "digits-cnn-v1"), ("a", "digits-cnn-v2")]
    assert {o["spec"]["model"] for o in kube.objects.values()} == {"digits-cnn"}
