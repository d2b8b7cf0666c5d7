"""Metric gates of a TrainingRun: does each final metric lie within its bounds? A pure function and its message."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from slipway.api.trainingrun import Gate, GateResult


def check_gate(gate: Gate, metrics: Mapping[str, float]) -> tuple[GateResult, str]:
    """How one gate fares against the run's final metrics, and why it failed ("" when it passed).

    Bounds are inclusive. A metric the run did not log, or logged as NaN, fails its gate.
    """
    value = metrics.get(gate.metric)
    if value is None or not math.isfinite(value):
        why = f"{gate.metric} was not logged by the run" if value is None else f"{gate.metric} is {value}"
        return GateResult(metric=gate.metric, value=None, passed=False), why
    why = ""
    if gate.min is not None and value < gate.min:
        why = f"{gate.metric}={value:.4g} < min {gate.min:g}"
    elif gate.max is not None and value > gate.max:
        why = f"{gate.metric}={value:.4g} > max {gate.max:g}"
    return GateResult(metric=gate.metric, value=value, passed=not why), why


def evaluate_gates(gates: Sequence[Gate], metrics: Mapping[str, float]) -> tuple[list[GateResult], list[str]]:
    """Every gate's result, in spec order, and the reasons of those that failed (empty: all passed)."""
    results: list[GateResult] = []
    failures: list[str] = []
    for gate in gates:
        result, why = check_gate(gate, metrics)
        results.append(result)
        if why:
            failures.append(why)
    return results, failures


def headline(gates: Sequence[Gate], metrics: Mapping[str, float]) -> str | None:
    """``name=value`` of the first gate's metric, else of ``accuracy``, for ``kubectl get`` (None if not logged)."""
    name = gates[0].metric if gates else "accuracy"
    value = metrics.get(name)
    return f"{name}={value:.4g}" if value is not None and math.isfinite(value) else None
