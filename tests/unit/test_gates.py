"""TrainingRun metric gates: inclusive bounds, missing and NaN metrics, the failure message, the headline."""

from __future__ import annotations

import math

import pytest

from slipway.api.trainingrun import Gate
from slipway.reconcilers.gates import check_gate, evaluate_gates, headline

METRICS = {"accuracy": 0.97, "loss": 0.12, "f1_macro": 0.968}


@pytest.mark.parametrize(
    ("gate", "passed", "why"),
    [
        (Gate(metric="accuracy", min=0.95), True, ""),
        (Gate(metric="accuracy", min=0.97), True, ""),  # inclusive
        (Gate(metric="accuracy", min=0.99), False, "accuracy=0.97 < min 0.99"),
        (Gate(metric="loss", max=0.12), True, ""),  # inclusive
        (Gate(metric="loss", max=0.1), False, "loss=0.12 > max 0.1"),
        (Gate(metric="accuracy", min=0.9, max=0.96), False, "accuracy=0.97 > max 0.96"),
        (Gate(metric="auc", min=0.5), False, "auc was not logged by the run"),
    ],
)
def test_check_gate(gate, passed, why):
    result, reason = check_gate(gate, METRICS)
    assert result.passed is passed
    assert reason == why
    assert result.metric == gate.metric


def test_nan_fails_its_gate():
    result, reason = check_gate(Gate(metric="loss", max=1.0), {"loss": math.nan})
    assert not result.passed and result.value is None and reason == "loss is nan"


def test_evaluate_gates_keeps_spec_order_and_collects_failures():
    gates = [Gate(metric="accuracy", min=0.99), Gate(metric="loss", max=0.2), Gate(metric="auc", min=0.5)]
    results, failures = evaluate_gates(gates, METRICS)
    assert [(r.metric, r.passed) for r in results] == [("accuracy", False), ("loss", True), ("auc", False)]
    assert failures == ["accuracy=0.97 < min 0.99", "auc was not logged by the run"]


def test_no_gates_always_pass():
    assert evaluate_gates([], METRICS) == ([], [])


def test_headline():
    assert headline([Gate(metric="loss", max=0.2)], METRICS) == "loss=0.12"
    assert headline([], METRICS) == "accuracy=0.97"
    assert headline([], {}) is None
