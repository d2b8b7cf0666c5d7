"""Registry sync logic with fakes: naming contract, discovery, writes only on change, backoff, garbage collection."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest

from slipway.clients.mlflow import (
    Heads,
    ModelHead,
    ModelSnapshot,
    RegistryUnavailable,
    RunData,
    VersionInfo,
    VersionRecord,
)
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
    """The two batched reads of the sync over an in-memory registry: {model: (last_updated_ms, snapshot)}."""

    def __init__(self) -> None:
        self.models: dict[str, tuple[int, ModelSnapshot]] = {}
        self.down = False
        self.seconds = 0.0
        self.head_reads: list[set[str]] = []
        self.version_reads: list[set[str]] = []

    def put(self, snap: ModelSnapshot, updated: int = 1) -> None:
        self.models[snap.name] = (updated, snap)

    async def heads(self, names: Any) -> Heads:
        self.head_reads.append(set(names))
        if self.down:
            raise RegistryUnavailable("connection refused")
        out = {n: ModelHead(n, self.models[n][0], dict(self.models[n][1].aliases)) for n in names if n in self.models}
        return Heads(out, self.seconds, 1)

    async def snapshots(self, heads: Any) -> dict[str, ModelSnapshot]:
        self.version_reads.append(set(heads))
        if self.down:
            raise RegistryUnavailable("connection refused")
        return {n: self.models[n][1] for n in heads}


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

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.events.append((manifest["involvedObject"]["name"], manifest["reason"], manifest["message"]))
        return manifest


def snapshot(stage: str = "None", aliases: dict[str, str] | None = None, name: str = "m") -> ModelSnapshot:
    aliases = aliases or {}
    versions = {}
    for v in ("1", "2"):
        info = VersionInfo(
            name,
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
    return ModelSnapshot(name, True, aliases, versions)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world() -> tuple[RegistrySync, FakeKube, FakeRegistry, Clock]:
    kube, registry, clock = FakeKube(), FakeRegistry(), Clock()
    sync = RegistrySync(kube, registry, poll_seconds=10, resync_seconds=60, gc_grace_seconds=60, clock=clock)  # type: ignore[arg-type]
    return sync, kube, registry, clock


async def poll(sync: RegistrySync, clock: Clock, advance: float = 10) -> None:
    """Let the clock reach the next poll and run the loop's pass."""
    clock.now = max(clock.now, sync.next_poll) if advance else clock.now
    await sync.step()


async def test_discovery_creates_mirrors_and_writes_only_changes(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.put(snapshot())
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    await poll(sync, clock)
    assert kube.writes == ["apply m-v1", "apply m-v2", "status m-v1", "status m-v2"]
    assert kube.objects[("a", "m-v2")]["status"]["storageUri"] == "s3://b/m"
    assert sync.next_poll == clock.now + 10
    kube.writes.clear()
    await poll(sync, clock)
    assert kube.writes == [] and len(registry.head_reads) == 2  # a steady poll writes nothing
    registry.put(snapshot("Production", {"champion": "2"}), updated=2)
    await poll(sync, clock)
    assert kube.writes == ["status m-v2"]
    assert [(n, r) for n, r, _ in kube.events] == [("m-v2", "StageChanged"), ("m-v2", "AliasMoved")]


async def test_unchanged_heads_cost_one_read_and_versions_rotate_within_the_resync(world: Any) -> None:
    sync, kube, registry, clock = world
    names = [f"m{i}" for i in range(12)]
    for i, name in enumerate(names):
        registry.put(snapshot(name=name))
        sync.observe("ModelDeployment", None, md("a", f"d{i}", name))
    await poll(sync, clock)
    assert registry.head_reads == [set(names)] and registry.version_reads == [set(names)]  # all read together
    registry.version_reads.clear()
    for _ in range(6):  # resync 60 s / poll 10 s: a sixth of the models each poll, the stalest first
        clock.now = sync.next_poll
        await sync.step()
    assert [len(r) for r in registry.version_reads] == [2] * 6
    assert set().union(*registry.version_reads) == set(names)
    registry.version_reads.clear()
    registry.put(snapshot(aliases={"champion": "1"}, name="m5"))  # an alias move: the head differs, same timestamp
    registry.put(snapshot("Staging", name="m7"), updated=5)  # a stage transition bumps the timestamp
    clock.now = sync.next_poll
    await sync.step()
    assert {"m5", "m7"} <= registry.version_reads[0] and len(registry.version_reads[0]) == 4
    assert kube.objects[("a", "m5-v1")]["status"]["aliases"] == ["champion"]
    assert kube.objects[("a", "m7-v2")]["status"]["stage"] == "Staging"
    del registry.models["m9"]  # the registered model is deleted: NotFound, mirrors kept
    clock.now = sync.next_poll
    await sync.step()
    assert kube.objects[("a", "m9-v1")]["status"]["conditions"][0]["reason"] == "NotFound"


async def test_a_webhook_reads_only_its_model_at_once(world: Any) -> None:
    sync, kube, registry, clock = world
    for name in ("m", "n"):
        registry.put(snapshot(name=name))
        sync.observe("ModelDeployment", None, md("a", f"d-{name}", name))
    await poll(sync, clock)
    registry.put(snapshot(aliases={"champion": "2"}))
    clock.now += 1  # well before the next poll
    assert sync.trigger("m")
    await sync.step()
    assert registry.head_reads[-1] == {"m"} and registry.version_reads[-1] == {"m"}
    assert kube.objects[("a", "m-v2")]["status"]["aliases"] == ["champion"]
    assert sync.next_poll == 1010  # the poll's rhythm is untouched


async def test_outage_backs_off_says_so_and_recovers(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.put(snapshot())
    registry.put(snapshot(name="other"))
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    sync.observe("ModelDeployment", None, md("a", "d2", "other"))
    await poll(sync, clock)
    registry.down = True
    delays = []
    for _ in range(4):
        clock.now = sync.next_poll
        await sync.step()
        delays.append(sync.next_poll - clock.now)
    assert delays == [20, 40, 60, 60]  # capped at max_backoff_seconds (60)
    status = kube.objects[("a", "m-v1")]["status"]
    assert status["conditions"][0]["reason"] == "RegistryUnavailable" and status["stage"] == "None"
    assert "retrying in" in status["message"]
    assert len(kube.objects) == 4 and not any(w.startswith(("delete", "apply")) for w in kube.writes[4:])
    registry.down = False
    registry.put(snapshot("Production"), updated=9)  # changed while nobody could see
    clock.now += 1
    assert sync.trigger("m") and sync.next_poll == 0  # a webhook means it is back: the full poll, now
    registry.version_reads.clear()
    await sync.step()
    assert registry.version_reads == [{"m", "other"}]  # recovery re-reads every model
    assert sync.failures == 0 and sync.next_poll == clock.now + 10
    assert kube.objects[("a", "m-v1")]["status"]["conditions"][0]["reason"] == "Synced"
    assert kube.objects[("a", "m-v2")]["status"]["stage"] == "Production"
    assert kube.objects[("a", "other-v1")]["status"]["conditions"][0]["reason"] == "Synced"


async def test_slow_answers_back_off_and_say_so(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.put(snapshot())
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    registry.seconds = 3.0
    await poll(sync, clock)
    assert sync.next_poll - clock.now == 20
    synced = kube.objects[("a", "m-v1")]["status"]["conditions"][0]
    assert (synced["status"], synced["reason"]) == ("True", "RegistrySlow")
    registry.seconds = 0.1
    await poll(sync, clock)
    assert sync.next_poll - clock.now == 10
    assert kube.objects[("a", "m-v1")]["status"]["conditions"][0]["reason"] == "Synced"


async def test_missing_version_is_kept_as_not_found(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.put(snapshot())
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    await poll(sync, clock)
    registry.put(ModelSnapshot("m", True, {}, {"1": snapshot().versions["1"]}), updated=2)
    await poll(sync, clock)
    synced = kube.objects[("a", "m-v2")]["status"]["conditions"][0]
    assert (synced["status"], synced["reason"]) == ("False", "NotFound")


async def test_unreferenced_managed_mirrors_are_collected_after_the_grace(world: Any) -> None:
    sync, kube, registry, clock = world
    registry.put(snapshot())
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    sync.observe("ModelVersion", None, mv("a", "other", "1", managed=False))
    await poll(sync, clock)
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
    sync, kube, registry, clock = world
    registry.put(snapshot(name="digits-cnn"))
    registry.put(snapshot(name="Digits_CNN"))
    sync.observe("ModelDeployment", None, md("a", "d1", "digits-cnn"))
    sync.observe("ModelDeployment", None, md("a", "d2", "Digits_CNN"))
    await poll(sync, clock)  # the second one's names are taken: skipped with a warning, nothing overwritten
    assert sorted(kube.objects) == [("a", "digits-cnn-v1"), ("a", "digits-cnn-v2")]
    assert len({o["spec"]["model"] for o in kube.objects.values()}) == 1
    assert kube.writes.count("apply digits-cnn-v1") == 1


async def test_a_single_unchanged_model_is_re_read_once_per_resync(world: Any) -> None:
    sync, _kube, registry, clock = world
    registry.put(snapshot())
    sync.observe("ModelDeployment", None, md("a", "d", "m"))
    await poll(sync, clock)
    registry.version_reads.clear()
    for _ in range(12):  # two minutes of 10 s polls, resync 60 s
        clock.now = sync.next_poll
        await sync.step()
    assert len(registry.head_reads) == 13 and registry.version_reads == [{"m"}, {"m"}]
