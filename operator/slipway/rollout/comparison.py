"""A/B comparison: the per-version PromQL it measures, the verdict of a criterion, and its summary."""

from __future__ import annotations

import math
from datetime import timedelta

from slipway.api.modeldeployment import AbCriterion
from slipway.api.rollout import Comparison as Comparison
from slipway.api.rollout import Variant as Variant
from slipway.api.rollout import VariantResult as VariantResult

MAX_CLASSES = 20
"""Classes kept per version in status (the most frequent)."""

_SEL = 'namespace="{{namespace}}",modeldeployment="{{name}}",version="{{version}}"'
REQUESTS_QUERY = f"sum(increase(slipway_requests_total{{{_SEL}}}[{{{{window}}}}]))"
ERROR_RATE_QUERY = (
    f'(sum(increase(slipway_requests_total{{{_SEL},code=~"5.."}}[{{{{window}}}}])) or vector(0))'
    f" / sum(increase(slipway_requests_total{{{_SEL}}}[{{{{window}}}}]))"
)
LATENCY_QUERY = (
    "histogram_quantile({q}, sum by (le) "
    f"(increase(slipway_request_duration_seconds_bucket{{{_SEL}}}[{{{{window}}}}])))"
)
PREDICTIONS_QUERY = f"sum by (class) (increase(slipway_predictions_total{{{_SEL}}}[{{{{window}}}}]))"
DRIFT_QUERY = f"avg(avg_over_time(slipway_model_drift_score{{{_SEL}}}[{{{{window}}}}]))"
FEEDBACK_QUERY = f"sum(increase(slipway_feedback_total{{{_SEL}}}[{{{{window}}}}]))"
ACCURACY_QUERY = (
    f"sum(increase(slipway_feedback_correct_total{{{_SEL}}}[{{{{window}}}}]))"
    f" / sum(increase(slipway_feedback_total{{{_SEL}}}[{{{{window}}}}]))"
)
"""Live accuracy of one version from the ground truth fed back to the runtime (a ready-made criterion)."""
ESTIMATED_ACCURACY_QUERY = f"avg(avg_over_time(slipway_estimated_accuracy{{{_SEL}}}[{{{{window}}}}]))"
"""Label-free accuracy estimate of one version from its confidence (no labels needed; a ready-made criterion)."""

SCALAR_QUERIES: dict[str, str] = {
    "requests": REQUESTS_QUERY,
    "error_rate": ERROR_RATE_QUERY,
    "p50_latency_seconds": LATENCY_QUERY.replace("{q}", "0.5"),
    "p99_latency_seconds": LATENCY_QUERY.replace("{q}", "0.99"),
    "drift": DRIFT_QUERY,
    "feedback": FEEDBACK_QUERY,
    "accuracy": ACCURACY_QUERY,
    "estimated_accuracy": ESTIMATED_ACCURACY_QUERY,
}
"""Field of VariantResult → PromQL template (``{{window}}`` is the test's length, e.g. ``600s``)."""


def window_of(length: timedelta) -> str:
    """A PromQL range covering ``length`` (whole seconds, at least 1s)."""
    return f"{max(1, math.ceil(length.total_seconds()))}s"


def shares(counts: dict[str, float]) -> tuple[tuple[str, float], ...]:
    """Per-class counts to shares of the total, the MAX_CLASSES most frequent, rounded."""
    total = sum(v for v in counts.values() if v > 0)
    if total <= 0:
        return ()
    top = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_CLASSES]
    return tuple((k, round(v / total, 4)) for k, v in top if v > 0)


def verdict(criterion: AbCriterion | None, a: float | None, b: float | None) -> tuple[Variant | None, str]:
    """Who wins on the criterion: B only if strictly better by at least minImprovement (relative to A).

    No criterion: no winner (a person decides). A value missing or NaN on either side: no
    winner yet (never promote, nor roll back, without evidence).
    """
    if criterion is None:
        return None, "no criterion declared: waiting for promote (B) or abort (keep A)"
    name = criterion.metric
    if a is None or b is None or math.isnan(a) or math.isnan(b):
        missing = " and ".join(v for v, x in (("A", a), ("B", b)) if x is None or math.isnan(x))
        return None, f"{name}: no data for {missing} yet"
    better = b > a if criterion.goal == "maximize" else b < a
    gain = (b - a) if criterion.goal == "maximize" else (a - b)
    relative = gain / abs(a) if a != 0 else (math.inf if better else 0.0)
    detail = (
        f"{name} A {a:.4g}, B {b:.4g} ({criterion.goal}; {relative:+.2%} vs "
        f"minImprovement {criterion.min_improvement:.2%})"
    )
    if better and relative >= criterion.min_improvement:
        return "B", f"B wins: {detail}"
    return "A", f"A wins: {detail}"


def summary(c: Comparison) -> str:
    """One line for the event and status.message: per version requests, errors, latency, accuracy; the verdict."""

    def part(r: VariantResult) -> str:
        bits = [f"{r.variant}=v{r.version}: {_num(r.requests, '.0f')} requests"]
        bits.append(f"errors {_pct(r.error_rate)}")
        bits.append(f"p50 {_ms(r.p50_latency_seconds)}")
        bits.append(f"p99 {_ms(r.p99_latency_seconds)}")
        if r.accuracy is not None:
            bits.append(f"accuracy {_pct(r.accuracy)} of {_num(r.feedback, '.0f')}")
        if r.estimated_accuracy is not None:
            bits.append(f"estimated accuracy {_pct(r.estimated_accuracy)}")
        if r.drift is not None:
            bits.append(f"drift {r.drift:.3g}")
        return ", ".join(bits)

    return f"A/B over {c.window}: {part(c.a)}; {part(c.b)}. {c.message}"


def _num(v: float | None, fmt: str) -> str:
    return "n/a" if v is None else format(v, fmt)


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2%}"


def _ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 1000:.1f}ms"
