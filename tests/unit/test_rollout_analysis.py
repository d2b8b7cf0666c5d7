"""Analysis decisions: bounds, no data, errors, the round verdict, step settings and PromQL templates."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from slipway.api.modeldeployment import Analysis, AnalysisMetric, AnalysisStep
from slipway.rollout.analysis import (
    ERROR_RATE_QUERY,
    AnalysisConfig,
    AnalysisState,
    due,
    fold,
    judge,
    render_query,
    resolve,
)

T0 = datetime(2026, 11, 22, tzinfo=UTC)
BOTH = AnalysisMetric(name="acc", query="q", min=0.9, max=1.0)
CONFIG = AnalysisConfig((BOTH,), timedelta(seconds=30), failure_limit=1, count=2)


@pytest.mark.parametrize(
    ("value", "phase"),
    [(0.95, "Successful"), (0.9, "Successful"), (1.0, "Successful"), (0.89, "Failed"), (1.01, "Failed")],
)
def test_bounds_are_inclusive(value, phase):
    assert judge(BOTH, "2", value, T0).phase == phase


def test_no_data_and_nan_are_inconclusive_and_errors_are_errors():
    assert judge(BOTH, "2", None, T0).phase == "Inconclusive"
    assert judge(BOTH, "2", math.nan, T0).phase == "Inconclusive"
    err = judge(BOTH, "2", None, T0, error="prometheus unreachable: connection refused")
    assert err.phase == "Error" and "unreachable" in err.message


def test_failed_message_names_the_bound():
    assert judge(BOTH, "2", 0.5, T0).message == "0.5 < min 0.9"


def test_fold_counts_rounds_and_decides():
    ok = (judge(BOTH, "2", 0.95, T0),)
    bad = (judge(BOTH, "2", 0.1, T0),)
    none = (judge(BOTH, "2", None, T0),)
    s = fold(AnalysisState(), ok, CONFIG)
    assert (s.phase, s.successful, s.started_at) == ("Running", 1, T0)
    assert fold(s, ok, CONFIG).phase == "Successful"
    s = fold(s, bad, CONFIG)
    assert (s.phase, s.failed) == ("Running", 1)
    assert fold(s, bad, CONFIG).phase == "Failed"
    s = fold(s, none, CONFIG)
    assert (s.phase, s.inconclusive, s.successful) == ("Inconclusive", 1, 1)


def test_one_failing_metric_fails_the_round_even_if_another_has_no_data():
    other = AnalysisMetric(name="lat", query="q", max=1)
    r = (judge(BOTH, "2", 0.1, T0), judge(other, "2", None, T0))
    assert fold(AnalysisState(), r, CONFIG).failed == 1


def test_failure_limit_zero_fails_on_the_first_bad_round():
    cfg = AnalysisConfig((BOTH,), timedelta(seconds=30), 0, 1)
    assert fold(AnalysisState(), (judge(BOTH, "2", 0.1, T0),), cfg).phase == "Failed"


def test_due():
    s = fold(AnalysisState(), (judge(BOTH, "2", 0.95, T0),), CONFIG)
    assert due(AnalysisState(), CONFIG, T0)
    assert not due(s, CONFIG, T0 + timedelta(seconds=29))
    assert due(s, CONFIG, T0 + timedelta(seconds=30))


def test_step_settings_override_the_strategy_analysis():
    base = Analysis(interval="1m", failureLimit=3, count=5, metrics=[BOTH])
    cfg = resolve(AnalysisStep(count=1, interval="10s"), base)
    assert (cfg.count, cfg.interval, cfg.failure_limit, cfg.metrics) == (1, timedelta(seconds=10), 3, (BOTH,))
    own = AnalysisMetric(name="x", query="y", max=1)
    assert resolve(AnalysisStep(metrics=[own]), None).metrics == (own,)
    with pytest.raises(ValueError, match="needs metrics"):
        resolve(AnalysisStep(), None)


def test_render_query():
    q = render_query(ERROR_RATE_QUERY, namespace="ml", name="digits", version="7")
    assert 'namespace="ml",model="digits",version="7"' in q and "{{" not in q
    assert render_query("x{d='{{deployment}}'}", namespace="n", name="md", version="1") == "x{d='md'}"
