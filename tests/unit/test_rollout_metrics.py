"""Operator metrics of rollouts: phase gauge, canary weight, rollouts and rollbacks counted."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import REGISTRY

from slipway.api.modeldeployment import ModelDeploymentSpec
from slipway.reconcilers import rollout_metrics
from slipway.rollout.machine import next
from slipway.rollout.state import Observations, RolloutState

NOW = datetime(2026, 11, 22, tzinfo=UTC)
SPEC = ModelDeploymentSpec.model_validate({"model": {"name": "m", "track": {"alias": "a"}}})


def value(metric: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(metric, labels)


def test_rollout_start_and_rollback_are_counted():
    start = next(RolloutState(phase="Succeeded", stable_version="1"), Observations(NOW, "2"), SPEC)
    rollout_metrics.record("ns-m", "md", "canary", start)
    assert value("slipway_rollouts_total", namespace="ns-m", name="md", strategy="canary") == 1
    assert value("slipway_rollout_phase", namespace="ns-m", name="md", phase="Progressing") == 1
    assert value("slipway_rollout_phase", namespace="ns-m", name="md", phase="Succeeded") == 0
    abort = next(start.state, Observations(NOW, "2", action="abort"), SPEC)
    rollout_metrics.record("ns-m", "md", "canary", abort)
    assert value("slipway_rollbacks_total", namespace="ns-m", name="md", reason="Aborted") == 1
    assert value("slipway_canary_weight", namespace="ns-m", name="md") == 0


def test_one_strategy_label_for_passes_and_alerts():
    from slipway.reconcilers.rollout_metrics import strategy_of

    assert strategy_of({"strategy": {"canary": {"steps": []}}}) == "canary"
    assert strategy_of({"strategy": {"blueGreen": {}}}) == "blueGreen", "all defaults"
    assert strategy_of({"strategy": {"blueGreen": {"autoPromotionSeconds": 5}}}) == "blueGreen"
    assert strategy_of({"strategy": {"abTest": {"variants": []}}}) == "abTest"
    assert strategy_of({}) == "canary"
