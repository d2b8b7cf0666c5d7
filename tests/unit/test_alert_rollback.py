"""Alert-driven rollback, pure and in-process parts: the watch window, the alert pass (status before the route),
idempotence, the intake, the Prometheus poller, the registry write-back and the webhook's retry on failure."""

from __future__ import annotations

import asyncio
import copy
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY

from slipway.api.modeldeployment import ModelDeployment, ModelDeploymentSpec
from slipway.api.names import LABEL_MODEL, LABEL_VERSION
from slipway.builders.router import router_for, traffic_version
from slipway.clients.alerts import AlertsUnavailable
from slipway.clients.applied import AppliedCache
from slipway.clients.mlflow import ModelSnapshot, RegistryUnavailable
from slipway.clients.watch_cache import KINDS, WatchCache
from slipway.receivers.alertmanager import PATH, AlertmanagerReceiver
from slipway.receivers.http import HttpServer
from slipway.reconcilers import alert_poller
from slipway.reconcilers.alert_intake import AlertDeferred, AlertIntake
from slipway.reconcilers.alert_poller import AlertPoller
from slipway.reconcilers.driver import Driver
from slipway.reconcilers.modeldeployment import entered_rollback, reconcile
from slipway.reconcilers.rollout_status import state_to_status
from slipway.reconcilers.status import Outcome
from slipway.reconcilers.writeback import TAG, RolledBack, WriteBack, rolled_back, with_pending
from slipway.rollout.alerts import Alert, matches, promoted_within_window, watched_versions
from slipway.rollout.machine import next
from slipway.rollout.state import Blocked, Decision, Finished, Observations, RolloutState

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
NS, MD = "ml", "digits"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(window: str = "30m", registry: str = "revertAlias", **extra: Any) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {
            "model": {"name": "digits", "track": {"alias": "champion"}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}, {"pause": {}}]}},
            "rollback": {
                "alerts": {"alertNames": ["SlipwayModelDrift"], "matchLabels": {"severity": "critical"}},
                "window": window,
                "registry": registry,
            },
            **extra,
        }
    )


def canary(**kw: Any) -> RolloutState:
    base: dict[str, Any] = {
        "phase": "Paused",
        "reason": "PausedByStep",
        "stable_version": "1",
        "canary_version": "2",
        "canary_weight": 50,
        "current_step": 1,
        "step_started_at": T0,
        "rollout_started_at": T0,
    }
    return RolloutState(**{**base, **kw})


def promoted(phase: str = "Succeeded", seconds_ago: float = 0) -> RolloutState:
    entry = Finished(
        version="2",
        previous_version="1",
        outcome="Promoted",
        reason="StepsCompleted",
        started_at=T0,
        finished_at=at(-seconds_ago),
    )
    return RolloutState(phase=phase, stable_version="2", promoted_at=at(-seconds_ago), history=(entry,))  # type: ignore[arg-type]


def obs(now: float = 0, **kw: Any) -> Observations:
    kw.setdefault("tracked_version", "2")
    return Observations(now=at(now), **kw)


def alert(version: str | None = "2", name: str = "SlipwayModelDrift", md: str = MD, **labels: str) -> Alert:
    merged = {"alertname": name, "namespace": NS, "modeldeployment": md, "severity": "critical", **labels}
    if version is not None:
        merged["model_version"] = version
    return Alert(name=name, labels=merged, fingerprint=f"fp-{name}-{version}", starts_at=T0)


# --- the watch window ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "window", "now", "want"),
    [
        (canary(), "30m", 0, {"2"}),
        (canary(phase="Progressing", reason="StepCompleted"), "30m", 0, {"2"}),
        (promoted("Promoting"), "30m", 10, {"2"}),
        (promoted("Succeeded"), "30m", 29 * 60, {"2"}),
        (promoted("Succeeded"), "30m", 31 * 60, set()),
        (promoted("Promoting"), "1m", 120, set()),
        (promoted("Succeeded"), "0s", 1, set()),
        (RolloutState(phase="Succeeded", stable_version="1"), "30m", 0, set()),  # first version: nothing to go back to
        (RolloutState(phase="RollingBack", stable_version="1", canary_version="2"), "30m", 0, set()),
        (RolloutState(phase="RolledBack", stable_version="1"), "30m", 0, set()),
    ],
)
def test_versions_under_watch(state, window, now, want):
    assert watched_versions(state, spec(window), at(now)) == want


def test_matching_with_the_window():
    s = spec("10m")
    inside = watched_versions(promoted(), s, at(300))
    assert matches(alert("2"), NS, MD, s.rollback.alerts, set(inside))
    assert not matches(alert("1"), NS, MD, s.rollback.alerts, set(inside)), "about the old version, not the new one"
    assert not watched_versions(promoted(), s, at(601)), "after the window nothing is under watch"


def test_a_rollback_closes_the_window():
    rolled = RolloutState(
        phase="Succeeded",
        stable_version="1",
        promoted_at=T0,
        history=(
            Finished(
                version="2",
                previous_version="1",
                outcome="Promoted",
                reason="StepsCompleted",
                started_at=T0,
                finished_at=T0,
            ),
            Finished(
                version="2",
                previous_version="1",
                outcome="RolledBack",
                reason="AlertFiring",
                started_at=T0,
                finished_at=T0,
            ),
        ),
    )
    assert promoted_within_window(rolled, spec(), at(1)) is None


# --- the machine --------------------------------------------------------------------------------


def test_alert_after_promotion_within_the_window_goes_back_to_the_previous_version_once_it_is_ready():
    d = next(promoted(), obs(600, alert="SlipwayModelDrift"), spec())
    assert d.transition is not None and (d.transition.source, d.transition.target) == ("Succeeded", "RollingBack")
    s = d.state
    assert (s.stable_version, s.canary_version) == ("1", "2") and s.blocked[0].version == "2"
    assert "within the 30m window" in s.message
    assert dict(d.weights) == {"1": 0, "2": 100}, "v1 was removed: v2 serves until v1 is back"
    assert d.keep == {"1", "2"}
    waiting = next(s, obs(601, ready_versions=frozenset({"2"}), live_versions=frozenset({"1", "2"})), spec())
    assert waiting.transition is None and dict(waiting.weights) == {"1": 0, "2": 100}
    switch = next(s, obs(602, ready_versions=frozenset({"1", "2"}), live_versions=frozenset({"1", "2"})), spec())
    assert switch.transition is None and dict(switch.weights) == {"1": 100} and switch.keep == {"1"}
    done = next(switch.state, obs(603, live_versions=frozenset({"1"})), spec())
    assert done.state.phase == "RolledBack" and "SlipwayModelDrift" in done.state.message


def test_alert_after_promotion_with_the_previous_version_ready_switches_at_once():
    d = next(promoted(), obs(600, alert="SlipwayModelDrift", ready_versions=frozenset({"1", "2"})), spec())
    assert dict(d.weights) == {"1": 100} and d.keep == {"1"}


def test_alert_while_promoting_goes_back_in_the_same_write():
    d = next(promoted("Promoting"), obs(5, alert="SlipwayModelDrift"), spec())
    assert d.state.phase == "RollingBack" and dict(d.weights) == {"1": 100}


@pytest.mark.parametrize(
    ("state", "window", "now"),
    [
        (promoted(), "30m", 31 * 60),
        (promoted(), "0s", 1),
        (promoted("Promoting"), "10s", 20),
        (RolloutState(phase="RollingBack", reason="AlertFiring", stable_version="1", canary_version="2"), "30m", 0),
        (
            RolloutState(
                phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AlertFiring", at=T0),)
            ),
            "30m",
            0,
        ),
        (RolloutState(phase="Idle"), "30m", 0),
    ],
)
def test_alert_outside_a_rollout_and_the_window_changes_nothing(state, window, now):
    d = next(state, obs(now, alert="SlipwayModelDrift", tracked_version=state.stable_version), spec(window))
    assert d.transition is None or d.transition.reason != "AlertFiring"
    assert d.state.blocked == state.blocked


def test_alias_moved_back_by_the_write_back_is_neither_a_rollout_nor_an_unblock():
    d = next(canary(), obs(alert="SlipwayModelDrift"), spec())
    rolled = next(d.state, obs(1, live_versions=frozenset({"1"})), spec()).state
    assert rolled.phase == "RolledBack"
    after_revert = next(rolled, obs(2, tracked_version="1"), spec())
    assert after_revert.transition is None and after_revert.state.blocked == rolled.blocked
    alias_on_2_again = next(rolled, obs(3, tracked_version="2"), spec())
    assert alias_on_2_again.transition is None and "blocked" in alias_on_2_again.state.message
    assert next(rolled, obs(4, tracked_version="2", action="retry"), spec()).state.phase == "Progressing"
    assert next(rolled, obs(4, tracked_version="2", spec_changed=True), spec()).state.phase == "Progressing"


def test_entered_rollback_ignores_a_users_revert_and_repeats():
    d = next(canary(), obs(alert="SlipwayModelDrift"), spec())
    old, new = state_to_status(canary()), state_to_status(d.state)
    assert entered_rollback(old, new) and not entered_rollback(new, new)
    reverted = next(canary(), obs(tracked_version="1"), spec())
    assert not entered_rollback(old, state_to_status(reverted.state))
    assert rolled_back(new) == RolledBack("2", "1", "AlertFiring")


# --- the alert pass on a fake API server ------------------------------------------------------------


class FakeKube:
    """Just enough of slipway.clients.kube.Kube: objects in a dict, every call recorded in order."""

    def __init__(self, md: dict[str, Any]) -> None:
        self.md = md
        self.calls: list[tuple[str, Any]] = []
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self.applied = AppliedCache()
        self.cache: WatchCache | None = None

    def observed_get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Any:
        if self.cache is not None and self.cache.covers(api_version, kind):
            self.calls.append(("cached", kind))
            return self.cache.get(api_version, kind, name, namespace)
        return self.get(api_version, kind, name, namespace)

    def observed_list(self, api_version: str, kind: str, namespace: str, label_selector: str | None = None) -> Any:
        return self.list(api_version, kind, namespace, label_selector)

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        self.calls.append(("get", kind))
        if kind == "ModelDeployment":
            return copy.deepcopy(self.md) if name == self.md["metadata"]["name"] else None
        return self.objects.get((kind, name))

    def list(self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None):
        self.calls.append(("list", kind))
        return [o for (k, _), o in self.objects.items() if k == kind]

    def patch_status(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        status: dict[str, Any],
        resource_version: str | None = None,
    ):
        self.calls.append(("patch_status", copy.deepcopy(status)))
        merged = {**(self.md.get("status") or {}), **status}
        self.md["status"] = {k: v for k, v in merged.items() if v is not None}
        return self.md

    def apply(self, manifest: dict[str, Any], *, force: bool = True) -> dict[str, Any]:
        self.calls.append(("apply", manifest["kind"]))
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = manifest
        return manifest

    def ensure(self, manifest: dict[str, Any]) -> bool:
        if self.objects.get((manifest["kind"], manifest["metadata"]["name"])) == manifest:
            return False  # applied as it is and unchanged since: Kube.ensure's cache skips it
        self.apply(manifest)
        return True

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        self.calls.append(("delete", kind))
        return self.objects.pop((kind, name), None) is not None

    def check_owned(self, manifests: list[dict[str, Any]], uid: str | None) -> None:
        return None  # every object here is the deployment's own

    def delete_owned(self, api_version: str, kind: str, name: str, namespace: str | None, uid: str | None) -> bool:
        return self.delete(api_version, kind, name, namespace)

    def merge_patch(self, *args: Any) -> dict[str, Any]:
        self.calls.append(("merge_patch", None))
        return self.md

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.events.append(manifest)
        return manifest

    def writes(self) -> list[str]:
        reads = ("get", "list", "cached")
        return [c[0] if c[0] != "apply" else f"apply {c[1]}" for c in self.calls if c[0] not in reads]


def md_body(state: RolloutState, **spec_extra: Any) -> dict[str, Any]:
    s = spec(**spec_extra)
    status = state_to_status(state)
    status["observedGeneration"] = 1
    status["trackedVersion"] = "2"
    return {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MD, "namespace": NS, "generation": 1, "uid": "u1"},
        "spec": s.to_dict(),
        "status": {k: v for k, v in status.items() if v is not None},
    }


def world(state: RolloutState, live: tuple[str, ...] = ("1", "2"), **spec_extra: Any) -> FakeKube:
    """The deployment in ``state``, ModelVersions 1 and 2 (v2 the champion), and the children of ``live`` applied."""
    kube = FakeKube(md_body(state, **spec_extra))
    for v in ("1", "2"):
        labels = {LABEL_MODEL: "digits", LABEL_VERSION: v}
        kube.objects[("ModelVersion", f"digits-v{v}")] = {
            "apiVersion": "ml.slipway.dev/v1alpha1",
            "kind": "ModelVersion",
            "metadata": {"name": f"digits-v{v}", "namespace": NS, "labels": labels},
            "spec": {"model": "digits", "version": v},
            "status": {"storageUri": f"s3://models/{v}", "aliases": ["champion"] if v == "2" else []},
        }
    md = ModelDeployment.model_validate(kube.md)
    decision = Decision(state)
    for manifest in router_for(md.spec).children(md, decision, {v: f"s3://models/{v}" for v in live}):
        kube.apply(manifest)
    for v in live:
        ready = {
            "kind": "Deployment",
            "metadata": {"name": f"digits-v{v}-predictor"},
            "status": {"availableReplicas": 9},
        }
        kube.objects[("Deployment", f"digits-v{v}-predictor")] = ready
    kube.calls.clear()
    return kube


def fire(kube: FakeKube, a: Alert, now: datetime) -> Outcome:
    """The one reconcile pass, with ``a`` observed, on the object as it is now (read first, not recorded)."""
    body = copy.deepcopy(kube.md)
    return reconcile(kube, None, body, now, alert=a)  # type: ignore[arg-type]


def test_alert_pass_writes_status_then_the_route_then_the_other_children():
    kube = world(canary())
    r = fire(kube, alert(), at(1))
    assert r.ignored is None and r.status_written is not None and r.traffic_written is not None
    assert r.started is not None and r.started <= r.status_written <= r.traffic_written
    writes = kube.writes()
    assert writes[:2] == ["patch_status", "apply HTTPRoute"], "status first, then the traffic, before any other write"
    assert writes.count("apply HTTPRoute") == 1 and "apply InferenceService" not in writes
    assert writes[2:] == ["delete", "delete"], "then the failed version's HPA and InferenceService go"
    route = kube.objects[("HTTPRoute", MD)]
    backends = route["spec"]["rules"][0]["backendRefs"]
    assert [(b["name"], b["weight"]) for b in backends] == [("digits-v1-predictor", 100)]
    status = kube.md["status"]
    assert status["phase"] == "RollingBack" and status["blockedVersions"][0]["version"] == "2"
    assert status["lastAlert"]["name"] == "SlipwayModelDrift" and status["lastAlert"]["labels"]["model_version"] == "2"
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert degraded["status"] == "True" and degraded["reason"] == "AlertFiring"
    assert "SlipwayModelDrift" in degraded["message"] and "SlipwayModelDrift" in status["history"][-1]["message"]
    assert status["pendingWriteBacks"][0]["reason"].startswith("AlertFiring: SlipwayModelDrift")


def test_alert_pass_is_idempotent():
    kube = world(canary())
    assert fire(kube, alert(), at(1)).ignored is None
    kube.calls.clear()
    again = fire(kube, alert(), at(2))
    other = fire(kube, alert(name="SlipwayModelDrift", version=None), at(2))
    assert again.ignored is not None and other.ignored is not None and kube.writes() == []
    assert "RollingBack" in again.ignored


@pytest.mark.parametrize(
    "a",
    [
        alert("1"),  # about the stable version
        alert("2", name="HighCPU"),  # not selected
        alert("2", severity="warning"),  # matchLabels differ
        alert("2", md="other"),  # another deployment
    ],
)
def test_alert_pass_ignores_what_does_not_match(a):
    kube = world(canary())
    r = fire(kube, a, at(1))
    assert r.ignored is not None and kube.writes() == [] and kube.calls == [], "not even a read"


def test_alert_pass_after_the_window_scale_down_recreates_the_old_backend_before_the_route_names_it():
    kube = world(promoted(seconds_ago=120), live=("2",))
    r = fire(kube, alert("2"), T0)
    assert r.ignored is None and r.decision is not None and traffic_version(r.decision) is None
    writes = kube.writes()
    assert writes[0] == "patch_status", "progress in status before anything moves"
    assert writes.index("apply InferenceService") < writes.index("apply HTTPRoute"), "no route to a missing backend"
    backends = kube.objects[("HTTPRoute", MD)]["spec"]["rules"][0]["backendRefs"]
    assert {b["name"]: b["weight"] for b in backends} == {"digits-v1-predictor": 0, "digits-v2-predictor": 100}
    assert kube.md["status"]["stableVersion"] == "1" and kube.md["status"]["canaryWeight"] == 100


def test_a_pass_without_an_alert_writes_in_the_same_order():
    """A new version: status first, then its backends, then the route that names them."""
    kube = world(RolloutState(phase="Succeeded", stable_version="1"), live=("1",))
    r = reconcile(kube, None, kube.get("", "ModelDeployment", MD), at(1))  # type: ignore[arg-type]
    assert r.decision is not None and r.decision.state.canary_version == "2"
    writes = kube.writes()
    assert writes[0] == "patch_status", "the new rollout is in status before any child moves"
    assert writes.index("apply InferenceService") < writes.index("apply HTTPRoute")
    assert writes.index("apply HorizontalPodAutoscaler") < writes.index("apply HTTPRoute")
    assert r.status_written is not None and r.traffic_written is not None and r.status_written <= r.traffic_written


# --- the intake ---------------------------------------------------------------------------------


class FakeRegistry:
    def __init__(self, aliases: dict[str, str], unavailable: int = 0) -> None:
        self.aliases = dict(aliases)
        self.tags: dict[tuple[str, str], dict[str, str]] = {}
        self.unavailable = unavailable

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        if self.unavailable:
            self.unavailable -= 1
            raise RegistryUnavailable("MLflow down")
        self.tags.setdefault((name, version), {})[key] = value

    async def snapshot(self, name: str) -> ModelSnapshot:
        return ModelSnapshot(name, True, dict(self.aliases), {})

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        self.aliases[alias] = version


async def settle(driver: Driver) -> None:
    for _ in range(300):
        if not driver._background and not len(driver.queue) and not driver.queue._processing:
            return
        await asyncio.sleep(0.01)


async def test_intake_rolls_back_once_then_finishes_and_writes_back():
    kube = FakeKube(md_body(canary()))
    registry = FakeRegistry({"champion": "2"})
    driver = Driver(kube, "")  # type: ignore[arg-type]
    intake = AlertIntake()
    resynced: list[str] = []
    driver.write_back = WriteBack(kube, registry, resynced.append)  # type: ignore[arg-type]
    intake.bind(driver, driver.write_back)
    driver.watch(NS, MD)  # kopf handed it over
    driver.queue.start()  # the follow-up pass is queued
    assert await intake.handle(replace(alert(), received=None)) == "rolled_back"
    assert await intake.handle(alert()) == "ignored", "a repeated delivery changes nothing"
    await settle(driver)
    assert kube.md["status"]["phase"] == "RolledBack", "the follow-up pass finished the rollback"
    assert registry.tags[("digits", "2")][TAG].startswith("AlertFiring: SlipwayModelDrift")
    assert registry.aliases["champion"] == "1" and resynced == ["digits"]
    assert "pendingWriteBacks" not in kube.md["status"], "done, so no longer pending"
    reasons = [e["reason"] for e in kube.events]
    assert reasons[:1] == ["AlertFiring"] and "RolledBack" in reasons and "RegistryUpdated" in reasons
    assert "ms after the alert arrived" in kube.events[0]["message"]
    assert await intake.handle(Alert(name="x", labels={"alertname": "x"})) == "no_target"
    await driver.queue.stop()


async def test_intake_acts_only_on_deployments_kopf_handed_over():
    kube = FakeKube(md_body(canary()))
    driver = Driver(kube, "")  # type: ignore[arg-type]
    intake = AlertIntake()
    with pytest.raises(AlertDeferred):
        await intake.handle(alert())  # not bound yet
    intake.bind(driver, None)
    with pytest.raises(AlertDeferred):
        await intake.handle(alert())  # starting: kopf may not have listed it yet
    intake.bound_at -= 60
    assert await intake.handle(alert()) == "not_watched", "another namespace's, or another operator's"
    assert kube.calls == [] and kube.md["status"]["phase"] == "Paused", "not even read"
    driver.watch(NS, MD)
    kube.md["metadata"]["name"] = "renamed"  # watched, but gone from the API server
    assert await intake.handle(alert()) == "not_found"


def rolled_back_body(mode: str) -> dict[str, Any]:
    """A deployment whose status just entered the rollback of v2 (back to v1), with the write-back it owes."""
    body = md_body(canary(), registry=mode)
    status = {"history": [{"version": "2", "previousVersion": "1", "outcome": "RolledBack", "reason": "AlertFiring"}]}
    with_pending(body["spec"], {}, status, T0, "AlertFiring: SlipwayModelDrift")
    body["status"] = {**body["status"], **status}
    return body


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def drainer(kube: FakeKube, registry: FakeRegistry, clock: Clock) -> tuple[WriteBack, Any]:
    wb = WriteBack(kube, registry, clock=clock)  # type: ignore[arg-type]

    async def locked(update: Any) -> None:
        body = kube.get("", "ModelDeployment", MD, NS)
        if body is not None and (patch := await update(body)) is not None:
            kube.patch_status("", "ModelDeployment", MD, NS, patch)

    return wb, locked


@pytest.mark.parametrize(
    ("mode", "aliases", "tagged", "alias_after"),
    [
        ("none", {"champion": "2"}, False, "2"),
        ("tag", {"champion": "2"}, True, "2"),
        ("revertAlias", {"champion": "2"}, True, "1"),
        ("revertAlias", {"champion": "3"}, True, "3"),  # moved on by someone: left alone
    ],
)
async def test_write_back_modes(mode, aliases, tagged, alias_after):
    body = rolled_back_body(mode)
    assert ("pendingWriteBacks" in body["status"]) == (mode != "none")
    kube, registry, clock = FakeKube(body), FakeRegistry(aliases), Clock()
    wb, locked = drainer(kube, registry, clock)
    assert await wb.drain(locked) is None
    assert (("digits", "2") in registry.tags) == tagged and registry.aliases["champion"] == alias_after
    assert [e["reason"] for e in kube.events] == (["RegistryUpdated"] if tagged else [])
    assert "pendingWriteBacks" not in kube.md["status"]
    if tagged:
        assert registry.tags[("digits", "2")][TAG] == f"AlertFiring: SlipwayModelDrift in {NS}/{MD}"


async def test_a_write_back_mlflow_refuses_while_down_stays_in_status_with_back_off_until_done():
    """MLflow down: the entry stays in status (what a restarted operator reads), retried 2, 4, 8 … s apart."""
    kube, registry, clock = FakeKube(rolled_back_body("revertAlias")), FakeRegistry({"champion": "2"}, 3), Clock()
    wb, locked = drainer(kube, registry, clock)
    waits = []
    for _ in range(3):
        wait = await wb.drain(locked)
        assert wait is not None
        waits.append(round(wait))
        (entry,) = kube.md["status"]["pendingWriteBacks"]
        assert entry["lastError"] == "MLflow down" and registry.aliases["champion"] == "2"
        clock.now += timedelta(seconds=wait / 2)
        assert await wb.drain(locked) is not None and registry.unavailable == 3 - len(waits), "not before it is due"
        clock.now += timedelta(seconds=wait)
    assert waits == [2, 4, 8] and entry["attempts"] == 3
    assert [e["reason"] for e in kube.events] == ["RegistryWriteBackPending"], "one warning, not one per attempt"
    assert await wb.drain(locked) is None
    assert registry.aliases["champion"] == "1" and "pendingWriteBacks" not in kube.md["status"]
    assert [e["reason"] for e in kube.events][-1] == "RegistryUpdated"


# --- the poller and the webhook ----------------------------------------------------------------------


async def test_poller_outage_is_logged_and_exported_never_a_rollback(caplog):
    handed: list[Alert] = []

    async def handle(a: Alert) -> None:
        handed.append(a)

    async def down(url: str, timeout: float) -> list[Alert]:
        raise AlertsUnavailable("connection refused")

    poller = AlertPoller("http://prom", 1.0, handle, fetch=down)
    assert await poller.poll() == 0 and await poller.poll() == 0
    assert alert_poller.POLL_UP._value.get() == 0 and not handed
    assert sum("Prometheus unavailable" in r.message for r in caplog.records) == 1, "logged once per outage"

    async def up(url: str, timeout: float) -> list[Alert]:
        return [alert(), Alert(name="Unrelated", labels={"alertname": "Unrelated"})]

    poller.fetch = up
    assert await poller.poll() == 1 and alert_poller.POLL_UP._value.get() == 1
    assert handed[0].received is not None and handed[0].source == "alertmanager"


async def test_webhook_answers_503_and_forgets_the_alert_when_it_could_not_be_handled():
    calls: list[Alert] = []

    async def handle(a: Alert) -> None:
        calls.append(a)
        if len(calls) == 1:
            raise AlertDeferred("API server unreachable")

    server = HttpServer()
    server.route("POST", PATH, AlertmanagerReceiver("tok", handle))
    port = await server.start("127.0.0.1", 0)
    payload = {
        "version": "4",
        "status": "firing",
        "alerts": [
            {"status": "firing", "labels": dict(alert().labels), "fingerprint": "f", "startsAt": T0.isoformat()}
        ],
    }
    try:
        async with httpx.AsyncClient() as client:
            url, auth = f"http://127.0.0.1:{port}{PATH}", {"Authorization": "Bearer tok"}
            assert (await client.post(url, json=payload, headers=auth)).status_code == 503
            again = await client.post(url, json=payload, headers=auth)
            assert again.status_code == 200 and again.json()["new"] == 1, "Alertmanager's retry acts"
            assert calls[1].received is not None
    finally:
        await server.stop()


async def test_a_pass_that_rolls_back_for_another_reason_writes_back_too():
    body = md_body(canary())
    body["metadata"]["annotations"] = {"ml.slipway.dev/action": "abort"}
    kube = FakeKube(body)
    registry = FakeRegistry({"champion": "2"})
    driver = Driver(kube, "")  # type: ignore[arg-type]
    driver.write_back = WriteBack(kube, registry)  # type: ignore[arg-type]
    await driver.drive(NS, MD)
    await settle(driver)
    written = [c[1] for c in kube.calls if c[0] == "patch_status"]
    assert written[0]["phase"] == "RollingBack" and written[0]["pendingWriteBacks"][0]["version"] == "2"
    assert rolled_back(written[0]) == RolledBack("2", "1", "Aborted")
    assert registry.tags[("digits", "2")][TAG].startswith("Aborted") and registry.aliases["champion"] == "1"
    await driver.drive(NS, MD)
    await settle(driver)
    written = [c[1] for c in kube.calls if c[0] == "patch_status"]
    assert sum(bool(w.get("pendingWriteBacks")) for w in written) == 1, "recorded once per rollback"
    assert [e["reason"] for e in kube.events].count("RegistryUpdated") == 1


async def test_a_deleted_deployment_leaves_no_pending_pass_and_no_metric_series():
    from slipway.reconcilers import rollout_metrics

    def series() -> list[tuple[str, ...]]:
        metrics = (rollout_metrics.ROLLOUT_PHASE, rollout_metrics.CANARY_WEIGHT)
        return [v for m in metrics for v in m._metrics if v[:2] == (NS, MD)]

    kube = FakeKube(md_body(canary()))
    driver = Driver(kube, "")  # type: ignore[arg-type]
    driver.watch(NS, MD)
    await driver.drive(NS, MD)
    driver.queue.add_after((NS, MD), 30)  # the next pass, as a worker would ask for it
    assert series() and driver.watches(NS, MD) and driver.queue.delayed((NS, MD)) is not None
    driver.forget(NS, MD)  # the watch saw it DELETED
    assert series() == [] and not driver.watches(NS, MD) and driver.queue.delayed((NS, MD)) is None


async def test_the_drivers_queue_work_requeues_backs_off_and_stops_for_a_gone_object():
    from slipway.reconcilers.driver import RESYNC_SECONDS, PassFailed

    kube = FakeKube(md_body(canary()))
    driver = Driver(kube, "")  # type: ignore[arg-type]
    after = await driver.run((NS, MD))
    assert after is not None and 0 < after <= RESYNC_SECONDS, "a paused canary asks to be looked at again"

    def refuse(*_: Any) -> dict[str, Any]:
        raise RuntimeError("the API server said no")

    kube.list = refuse  # type: ignore[method-assign]
    with pytest.raises(PassFailed):
        await driver.run((NS, MD))  # the queue backs off
    conditions = {c["type"]: c for c in kube.md["status"]["conditions"]}
    assert conditions["ReconcileError"]["status"] == "True", "the failure is on the object"
    assert [e["reason"] for e in kube.events][-1] == "ReconcileFailed"
    assert driver.queue.add_rate_limited((NS, MD)) == 1.0, "back-off starts at the first retry delay"

    assert await driver.run((NS, "gone")) is None, "a deleted object is not looked at again"


class CountingPrometheus:
    """Counts queries; answers each with a healthy value."""

    def __init__(self) -> None:
        self.queries = 0

    def query(self, q: str) -> float:
        self.queries += 1
        return 0.0


def test_an_alerts_pass_does_not_measure_but_the_same_pass_without_it_does():
    analysed = {
        "steps": [{"setWeight": 50}, {"analysis": {}}],
        "analysis": {"interval": "10s", "metrics": [{"name": "e", "query": "q", "max": 1}]},
    }
    state = canary(phase="Progressing", reason="Analysing", current_step=1)
    prom = CountingPrometheus()
    quiet = world(state, strategy={"canary": analysed})
    reconcile(quiet, prom, copy.deepcopy(quiet.md), at(60))  # type: ignore[arg-type]
    assert prom.queries == 1, "a pass without an alert measures the due round"
    alerted = world(state, strategy={"canary": analysed})
    r = reconcile(alerted, prom, copy.deepcopy(alerted.md), at(60), alert=alert())  # type: ignore[arg-type]
    assert r.ignored is None and alerted.md["status"]["phase"] == "RollingBack"
    assert prom.queries == 1, "the alert's pass waits for no Prometheus query"


async def test_an_ignored_alert_leaves_the_users_action_for_the_pass_that_handles_it():
    kube = world(
        RolloutState(
            phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AlertFiring", at=T0),)
        )
    )
    kube.md["metadata"]["annotations"] = {"ml.slipway.dev/action": "retry"}
    driver = Driver(kube, "")  # type: ignore[arg-type]
    _, outcome = await driver.alerted(NS, MD, alert(), copy.deepcopy(kube.md))
    assert outcome is not None and outcome.ignored is not None
    assert kube.writes() == [], "the action annotation stays (nothing handled it)"
    await driver.drive(NS, MD)
    assert "merge_patch" in kube.writes() and kube.md["status"]["phase"] == "Progressing", "the next pass retries"


class Conflict(RuntimeError):
    status = 409


class VersionedKube(FakeKube):
    """A status write conditional on a resourceVersion the object has left is refused (409), as the API server does."""

    def patch_status(self, api_version, kind, name, namespace, status, resource_version=None):  # type: ignore[no-untyped-def]
        if resource_version is not None and resource_version != self.md["metadata"]["resourceVersion"]:
            self.calls.append(("refused", resource_version))
            raise Conflict("the object has been modified")
        return super().patch_status(api_version, kind, name, namespace, status)


def cached(kube: FakeKube, *objects: dict[str, Any]) -> WatchCache:
    """A watch cache holding ``objects`` (as kopf's watch would have delivered them), complete."""
    kube.cache = WatchCache(KINDS)
    for obj in objects:
        kube.cache.observe(obj)
    kube.cache.primed = True
    return kube.cache


async def test_the_watchs_stale_copy_writes_nothing_and_the_pass_runs_again_on_the_object_read():
    kube = VersionedKube(world(canary()).md)
    kube.objects = world(canary()).objects
    stale = copy.deepcopy(kube.md) | {"metadata": {**kube.md["metadata"], "resourceVersion": "4"}}
    kube.md["metadata"]["resourceVersion"] = "5"
    kube.md["status"]["blockedVersions"] = [{"version": "9", "reason": "Aborted", "at": "2026-11-22T11:00:00Z"}]
    driver = Driver(kube, "")  # type: ignore[arg-type]
    intake = AlertIntake()
    intake.bind(driver, None)
    driver.watch(NS, MD)
    cache = cached(kube, stale)
    labels = {"namespace": NS, "name": MD, "reason": "AlertFiring"}
    before = REGISTRY.get_sample_value("slipway_rollout_aborts_total", {**labels, "cause": "SlipwayModelDrift"}) or 0
    assert await intake.handle(alert()) == "rolled_back"
    writes = kube.writes()
    assert writes[:3] == ["refused", "patch_status", "apply HTTPRoute"], "nothing written from the stale copy"
    after = REGISTRY.get_sample_value("slipway_rollout_aborts_total", {**labels, "cause": "SlipwayModelDrift"})
    assert after == before + 1, "counted once: the refused attempt decided nothing"
    assert [b["version"] for b in kube.md["status"]["blockedVersions"]] == ["9", "2"], "written from the fresh one"
    kube.calls.clear()
    cache.observe(copy.deepcopy(kube.md) | {"metadata": {**kube.md["metadata"], "resourceVersion": "6"}})
    cache.observe(copy.deepcopy(stale) | {"metadata": {**kube.md["metadata"], "resourceVersion": "3"}})
    assert cache.get(*KIND_MD, MD, NS)["metadata"]["resourceVersion"] == "6", "an older event replaces nothing"
    kube.md["metadata"]["resourceVersion"] = "6"
    assert await intake.handle(alert()) == "ignored" and kube.writes() == [], "ignored only once read afresh"
    assert ("get", "ModelDeployment") in kube.calls


KIND_MD = ("ml.slipway.dev/v1alpha1", "ModelDeployment")


async def test_a_queued_pass_starts_from_the_cache_without_a_read():
    kube = VersionedKube(world(canary()).md)
    kube.objects = world(canary()).objects
    kube.md["metadata"]["resourceVersion"] = "5"
    kube.md["metadata"]["annotations"] = {"ml.slipway.dev/action": "abort"}  # the pass must write status
    driver = Driver(kube, "")  # type: ignore[arg-type]
    cached(kube, copy.deepcopy(kube.md))
    kube.md["metadata"]["resourceVersion"] = "6"  # e.g. kopf's own annotation, written since the watch's copy
    await driver.drive(NS, MD)
    assert ("cached", "ModelDeployment") in kube.calls and ("get", "ModelDeployment") not in kube.calls
    assert kube.writes()[0] == "patch_status", "not refused: a queued pass's status write is not conditional"
    assert kube.md["status"]["phase"] == "RollingBack"
