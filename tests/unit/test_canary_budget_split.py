"""Canaries inside a budget: the split by weight, the guard on the pods held now, the builders, the schema."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeployment, ModelDeploymentSpec
from slipway.builders.hpa import build_hpa
from slipway.builders.inferenceservice import build_inference_service
from slipway.reconcilers.modeldeployment import unhonourable
from slipway.rollout.budget import Bounds, replica_budget, shares, split
from slipway.rollout.state import Finished, RolloutState


def spec(budget: dict[str, Any] | None, *, gpus: int | None = 1, min_replicas: int = 4, max_replicas: int = 4) -> Any:
    body: dict[str, Any] = {
        "model": {"name": "digits", "track": {"alias": "champion"}},
        "autoscaling": {"minReplicas": min_replicas, "maxReplicas": max_replicas},
        "strategy": {"canary": {"steps": [{"setWeight": 25}, {"setWeight": 50}, {"setWeight": 100}]}},
    }
    if budget is not None:
        body["strategy"]["canary"]["budget"] = budget
    if gpus is not None:
        body["serving"] = {"resources": {"limits": {"nvidia.com/gpu": gpus}}}
    return ModelDeploymentSpec.model_validate(body)


def canary(weight: int, phase: str = "Progressing") -> RolloutState:
    return RolloutState(phase=phase, stable_version="1", canary_version="2", canary_weight=weight)  # type: ignore[arg-type]


def test_the_budget_from_a_surge_or_gpus():
    assert replica_budget(spec(None)) is None
    assert replica_budget(spec({"maxSurgeReplicas": 0})) == 4
    assert replica_budget(spec({"maxSurgeReplicas": 2})) == 6
    assert replica_budget(spec({"gpus": 4})) == 4
    assert replica_budget(spec({"gpus": 8}, gpus=2)) == 4
    assert replica_budget(spec({"gpus": 100})) == 8  # at most twice maxReplicas


@pytest.mark.parametrize(
    ("weight", "stable", "canary_share"),
    [(0, 3, 1), (10, 3, 1), (25, 3, 1), (50, 2, 2), (75, 1, 3), (100, 1, 3)],
)
def test_shares_follow_the_weight_and_never_exceed_the_budget(weight: int, stable: int, canary_share: int):
    got = shares(4, canary(weight))
    assert got == {"1": stable, "2": canary_share}
    assert sum(got.values()) == 4


def test_at_rest_promoting_and_rolling_back():
    assert shares(4, RolloutState(phase="Succeeded", stable_version="1")) == {"1": 4}
    promoted = Finished(
        version="2",
        previous_version="1",
        outcome="Promoted",
        reason="Promoted",
        started_at=None,
        finished_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    promoting = RolloutState(phase="Promoting", stable_version="2", history=(promoted,))
    assert shares(4, promoting) == {"2": 3, "1": 1}  # the old version keeps one for the switch-back
    back = RolloutState(phase="RollingBack", stable_version="1", canary_version="2", canary_weight=0)
    assert shares(4, back)["1"] == 4  # stable's bounds come back first


def test_a_version_grows_only_into_what_the_other_gave_back():
    s = spec({"gpus": 4})
    # Weight 25 → 50: stable still holds 3 pods, so the canary stays at 1 while stable shrinks to 2.
    first = split(s, canary(50), {"1": 3, "2": 1})
    assert first is not None
    assert first.bounds == {"1": Bounds(2, 2), "2": Bounds(1, 1)} and not first.settled
    second = split(s, canary(50), {"1": 2, "2": 1})
    assert second is not None
    assert second.bounds == {"1": Bounds(2, 2), "2": Bounds(2, 2)} and second.settled


def test_a_new_canary_waits_until_stable_has_made_room():
    s = spec({"maxSurgeReplicas": 0})
    start = split(s, canary(0), {"1": 4})
    assert start is not None
    assert start.bounds["1"] == Bounds(3, 3)
    assert start.bounds["2"].max == 0  # not created yet: stable holds the whole budget
    later = split(s, canary(0), {"1": 3})
    assert later is not None and later.bounds["2"] == Bounds(1, 1)


def test_a_rollback_restores_stable_as_the_canary_goes():
    s = spec({"gpus": 4})
    back = RolloutState(phase="RollingBack", stable_version="1", canary_version="2", canary_weight=0)
    during = split(s, back, {"1": 2, "2": 2})
    assert during is not None
    assert during.bounds["1"] == Bounds(2, 2)  # restored as far as the canary's pods allow
    assert during.shares["1"] == 4
    done = split(s, RolloutState(phase="RolledBack", stable_version="1"), {"1": 2})
    assert done is not None and done.bounds == {"1": Bounds(4, 4)}


def test_every_step_keeps_the_pods_within_the_budget():
    """Simulate the HPAs reaching their bounds between passes, through 25/50/100, promotion and a rollback."""
    s = spec({"gpus": 4})
    pods = {"1": 4}
    states = [canary(0), canary(25), canary(50), canary(100)]
    states += [RolloutState(phase="RollingBack", stable_version="1", canary_version="2", canary_weight=0)]
    for state in states:
        for _ in range(4):  # passes until settled
            plan = split(s, state, pods)
            assert plan is not None
            for version, b in plan.bounds.items():  # an HPA shrinks at once, grows to its min
                if b.max >= 1 or version in pods:
                    pods[version] = min(max(pods.get(version, 0), b.min), max(b.max, 1))
                assert sum(pods.values()) <= 4, (state, pods)
    pods.pop("2")  # the canary is removed
    final = split(s, RolloutState(phase="RolledBack", stable_version="1"), pods)
    assert final is not None and final.bounds == {"1": Bounds(4, 4)}


def test_builders_take_the_bounds():
    md = ModelDeployment.model_validate(
        {"metadata": {"name": "digits", "namespace": "ml"}, "spec": spec({"gpus": 4}).model_dump(by_alias=True)}
    )
    assert build_hpa(md, "2")["spec"]["maxReplicas"] == 4
    hpa = build_hpa(md, "2", (1, 2))
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    isvc = build_inference_service(md, "2", "file:///m", (1, 2))["spec"]["predictor"]
    assert (isvc["minReplicas"], isvc["maxReplicas"]) == (1, 2)


def test_the_schema_and_invalid_budgets():
    with pytest.raises(ValidationError, match="exactly one"):
        spec({"maxSurgeReplicas": 0, "gpus": 4})
    with pytest.raises(ValidationError, match="exactly one"):
        spec({})

    def md(s: Any) -> ModelDeployment:
        return ModelDeployment.model_validate({"metadata": {"name": "d"}, "spec": s.model_dump(by_alias=True)})

    assert unhonourable(md(spec({"gpus": 4}))) is None
    why = unhonourable(md(spec({"gpus": 4}, gpus=None)))
    assert why is not None and "nvidia.com/gpu" in why
    why = unhonourable(md(spec({"gpus": 1})))
    assert why is not None and "at least 2" in why
