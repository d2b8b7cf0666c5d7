"""A/B tests and shadow stages in the pure state machine; the comparison's verdict; the routes they get."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.api.modeldeployment import AbCriterion, ModelDeployment, ModelDeploymentSpec
from slipway.builders.httproute import build_http_route, cookie_pattern
from slipway.reconcilers.rollout_status import state_from_status, state_to_status
from slipway.rollout import abtest
from slipway.rollout.analysis import Measurement
from slipway.rollout.comparison import Comparison, VariantResult, shares, summary, verdict, window_of
from slipway.rollout.machine import comparison_due, measurement_due, next
from slipway.rollout.state import Observations, RolloutState

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ERR = {"name": "error-rate", "query": "q", "max": 0.05}
GOLDEN = Path(__file__).parent / "golden"


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def ab(**extra: Any) -> ModelDeploymentSpec:
    body: dict[str, Any] = {
        "model": {"name": "digits", "track": {"alias": "champion"}},
        "strategy": {"abTest": {"weight": 30, "duration": "60s", **extra}},
    }
    return ModelDeploymentSpec.model_validate(body)


CRITERION = {"metric": "accuracy", "query": "q", "goal": "maximize", "minImprovement": 0.02}


def state(stage: int, **kw: Any) -> RolloutState:
    base: dict[str, Any] = {
        "phase": "Progressing",
        "reason": "StepCompleted",
        "stable_version": "1",
        "canary_version": "2",
        "current_step": stage,
        "step_started_at": T0,
        "rollout_started_at": T0,
    }
    return RolloutState(**{**base, **kw})


def obs(now: float = 0, **kw: Any) -> Observations:
    kw.setdefault("ready_versions", frozenset({"1", "2"}))
    kw.setdefault("live_versions", frozenset({"1", "2"}))
    return Observations(now=at(now), tracked_version="2", **kw)


def result(version: str, variant: Any, criterion: float | None) -> VariantResult:
    return VariantResult(
        version=version, variant=variant, requests=100, error_rate=0.0, accuracy=criterion, criterion=criterion
    )


def comparison(a: float | None, b: float | None, spec: ModelDeploymentSpec) -> Comparison:
    test = spec.strategy.ab_test
    assert test is not None
    winner, message = verdict(test.criterion, a, b)
    return Comparison(
        measured_at=at(61),
        window="61s",
        variants=(result("1", "A", a), result("2", "B", b)),
        metric="accuracy",
        winner=winner,
        message=message,
    )


def failed_round(version: str = "2") -> tuple[Measurement, ...]:
    return (Measurement(metric="error-rate", version=version, value=0.5, phase="Failed", measured_at=at(0)),)


# --- the A/B test, stage by stage ----------------------------------------------------------------


def test_waits_for_b_then_splits_by_weight_for_the_duration():
    spec = ab(criterion=CRITERION)
    d = next(state(abtest.READY), obs(ready_versions=frozenset({"1"})), spec)
    assert d.transition is None and "waiting for B v2" in d.state.message
    d = next(state(abtest.READY), obs(), spec)
    assert d.state.current_step == abtest.TEST and dict(d.weights) == {"1": 70, "2": 30}
    assert d.state.mirror_percent == 0
    d = next(d.state.model_copy(update={"step_started_at": T0}), obs(now=30), spec)
    assert d.transition is None and "30s left" in d.state.message and dict(d.weights) == {"1": 70, "2": 30}
    d = next(d.state, obs(now=60), spec)
    assert d.state.current_step == abtest.DECIDE and dict(d.weights) == {"1": 70, "2": 30}


def test_b_not_ready_in_time_rolls_back():
    d = next(state(abtest.READY), obs(now=601, ready_versions=frozenset({"1"})), ab())
    assert d.state.phase == "RollingBack" and d.state.reason == "ProgressDeadlineExceeded"


def test_matches_go_into_the_route_only_while_the_test_runs():
    spec = ab(match=[{"header": {"name": "x-variant", "value": "b"}}, {"cookie": {"name": "variant", "value": "b"}}])
    test = spec.strategy.ab_test
    assert test is not None
    assert abtest.route_matches(state(abtest.READY), test) is None
    version, matches = abtest.route_matches(state(abtest.TEST), test) or ("", ())
    assert version == "2" and len(matches) == 2
    assert abtest.route_matches(state(abtest.DECIDE, phase="Paused", reason="PausedByStep"), test) is not None
    assert abtest.route_matches(RolloutState(phase="Promoting", stable_version="2"), test) is None


def test_comparison_is_measured_once_the_test_is_over():
    spec = ab(criterion=CRITERION)
    assert not comparison_due(state(abtest.TEST), spec, at(100))
    assert comparison_due(state(abtest.DECIDE), spec, at(61))
    d = next(state(abtest.DECIDE), obs(now=61), spec)
    assert d.transition is None and "measuring the comparison" in d.state.message


def test_b_wins_on_the_criterion_and_is_promoted_with_the_comparison_in_status():
    spec = ab(criterion=CRITERION)
    d = next(state(abtest.DECIDE, canary_weight=30), obs(now=61, comparison=comparison(0.8, 0.95, spec)), spec)
    assert d.state.phase == "Promoting" and d.state.reason == "CandidateWon" and d.state.stable_version == "2"
    assert dict(d.weights) == {"2": 100, "1": 0}
    reasons = [e.reason for e in d.events]
    assert reasons == ["CandidateWon", "ABTestCompared"]
    assert "A=v1" in d.events[1].message and "B=v2" in d.events[1].message and "B wins" in d.events[1].message
    status = state_to_status(d.state)
    assert status["comparison"]["winner"] == "B"
    assert [v["variant"] for v in status["comparison"]["variants"]] == ["A", "B"]
    assert state_from_status(status).comparison == d.state.comparison


def test_a_wins_and_b_is_rolled_back_and_blocked():
    spec = ab(criterion=CRITERION)
    d = next(state(abtest.DECIDE, canary_weight=30), obs(now=61, comparison=comparison(0.9, 0.905, spec)), spec)
    assert d.state.phase == "RollingBack" and d.state.reason == "CandidateLost"
    assert dict(d.weights) == {"1": 100} and d.state.blocked[0].version == "2"
    assert "A wins" in d.state.message


def test_no_evidence_no_verdict_and_it_measures_again_later():
    spec = ab(criterion=CRITERION)
    c = comparison(0.9, None, spec)
    d = next(state(abtest.DECIDE, canary_weight=30), obs(now=61, comparison=c), spec)
    assert d.transition is None and "no data for B" in d.state.message
    assert [e.reason for e in d.events] == ["ABTestCompared"]
    assert not comparison_due(d.state, spec, at(70)) and comparison_due(d.state, spec, at(95))
    again = next(d.state, obs(now=95, comparison=c), spec)
    assert again.transition is None and again.events == ()


def test_without_criterion_a_person_decides():
    spec = ab()
    d = next(state(abtest.DECIDE, canary_weight=30), obs(now=61, comparison=comparison(0.8, 0.9, spec)), spec)
    assert d.state.phase == "Paused" and d.state.reason == "PausedByStep" and d.state.comparison is not None
    assert dict(d.weights) == {"1": 70, "2": 30}
    assert next(d.state, obs(now=70, action="resume"), spec).transition is None
    promoted = next(d.state, obs(now=70, action="promote"), spec)
    assert promoted.state.phase == "Promoting" and promoted.state.stable_version == "2" and promoted.action_used
    aborted = next(d.state, obs(now=70, action="abort"), spec)
    assert aborted.state.phase == "RollingBack" and aborted.state.stable_version == "1"


def test_promote_during_the_test_ends_it_early():
    d = next(state(abtest.TEST, canary_weight=30), obs(now=5, action="promote"), ab(criterion=CRITERION))
    assert d.state.current_step == abtest.DECIDE and d.action_used


def test_guard_rail_failures_roll_back():
    spec = ab(criterion=CRITERION, analysis={"interval": "5s", "failureLimit": 0, "metrics": [ERR]})
    s = state(abtest.TEST, canary_weight=30)
    assert measurement_due(s, spec, at(1)) is not None
    ok = next(
        s,
        obs(
            now=1,
            measurements=(
                Measurement(metric="error-rate", version="2", value=0.0, phase="Successful", measured_at=at(1)),
            ),
        ),
        spec,
    )
    assert ok.transition is None and ok.state.analysis is not None and ok.state.analysis.phase == "Running"
    d = next(ok.state, obs(now=6, measurements=failed_round()), spec)
    assert d.state.phase == "RollingBack" and d.state.reason == "AnalysisFailed" and "guard rails" in d.state.message
    assert dict(d.weights) == {"1": 100}


# --- shadow ----------------------------------------------------------------------------------------

SHADOW = {
    "percent": 50,
    "duration": "30s",
    "analysis": {"interval": "5s", "failureLimit": 0, "count": 1, "metrics": [ERR]},
}


def test_ab_shadow_mirrors_before_the_split():
    spec = ab(criterion=CRITERION, shadow=SHADOW)
    d = next(state(abtest.READY), obs(), spec)
    assert (
        d.state.current_step == abtest.SHADOW and d.state.mirror_percent == 50 and dict(d.weights) == {"1": 100, "2": 0}
    )
    s = d.state.model_copy(update={"step_started_at": T0})
    assert measurement_due(s, spec, at(1)) is not None
    passed = next(
        s,
        obs(
            now=10,
            measurements=(
                Measurement(metric="error-rate", version="2", value=0.0, phase="Successful", measured_at=at(10)),
            ),
        ),
        spec,
    )
    assert passed.transition is None and "20s left" in passed.state.message
    d = next(passed.state, obs(now=31), spec)
    assert d.state.current_step == abtest.TEST and d.state.mirror_percent == 0 and dict(d.weights) == {"1": 70, "2": 30}


@pytest.mark.parametrize("strategy", ["abTest", "blueGreen"])
def test_shadow_failure_rolls_back_without_moving_stable_traffic(strategy: str):
    if strategy == "abTest":
        spec, s = ab(shadow=SHADOW), state(abtest.SHADOW, mirror_percent=50)
    else:
        body = {"model": {"name": "d", "track": {"alias": "c"}}, "strategy": {"blueGreen": {"shadow": SHADOW}}}
        spec, s = ModelDeploymentSpec.model_validate(body), state(3, mirror_percent=50)
    assert dict(next(s, obs(now=1), spec).weights) == {"1": 100, "2": 0}
    d = next(s, obs(now=2, measurements=failed_round()), spec)
    assert d.state.phase == "RollingBack" and d.state.reason == "AnalysisFailed" and "shadow" in d.state.message
    assert dict(d.weights) == {"1": 100} and d.state.mirror_percent == 0 and d.state.blocked[0].version == "2"


def test_shadow_without_evidence_does_not_pass():
    spec = ab(shadow=SHADOW)
    s = state(abtest.SHADOW, mirror_percent=50)
    no_data = (Measurement(metric="error-rate", version="2", value=None, phase="Inconclusive", measured_at=at(31)),)
    d = next(s, obs(now=31, measurements=no_data), spec)
    assert d.transition is None and "waiting for evidence" in d.state.message


def test_blue_green_shadow_keeps_mirroring_until_the_switch():
    body = {
        "model": {"name": "d", "track": {"alias": "c"}},
        "strategy": {"blueGreen": {"shadow": {"percent": 20, "duration": "10s"}, "autoPromotionSeconds": 0}},
    }
    spec = ModelDeploymentSpec.model_validate(body)
    d = next(state(0), obs(), spec)
    assert d.state.current_step == 3 and d.state.mirror_percent == 20
    d = next(d.state.model_copy(update={"step_started_at": T0}), obs(now=11), spec)
    assert d.state.current_step == 2 and d.state.mirror_percent == 20
    d = next(d.state.model_copy(update={"step_started_at": at(11)}), obs(now=12), spec)
    assert d.state.phase == "Promoting" and d.state.mirror_percent == 0


# --- the verdict ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("goal", "a", "b", "minimum", "winner"),
    [
        ("maximize", 0.80, 0.90, 0.02, "B"),
        ("maximize", 0.90, 0.91, 0.02, "A"),  # better, but not by 2%
        ("maximize", 0.90, 0.90, 0.0, "A"),  # a tie keeps A
        ("minimize", 0.20, 0.10, 0.1, "B"),
        ("minimize", 0.10, 0.20, 0.0, "A"),
        ("maximize", 0.0, 0.1, 0.5, "B"),
        ("maximize", 0.9, None, 0.0, None),
    ],
)
def test_verdict(goal: str, a: float, b: float | None, minimum: float, winner: str | None):
    criterion = AbCriterion(metric="m", query="q", goal=goal, min_improvement=minimum)  # type: ignore[arg-type]
    assert verdict(criterion, a, b)[0] == winner


def test_no_criterion_no_verdict_and_helpers():
    assert verdict(None, 1.0, 2.0)[0] is None
    assert window_of(timedelta(seconds=60.2)) == "61s" and window_of(timedelta()) == "1s"
    assert shares({"1": 30, "0": 10, "2": 0}) == (("1", 0.75), ("0", 0.25))
    c = Comparison(
        measured_at=at(0),
        window="60s",
        variants=(result("1", "A", 0.8), result("2", "B", None)),
        metric=None,
        winner=None,
        message="m",
    )
    assert "accuracy 80.00%" in summary(c) and "B=v2" in summary(c)


# --- routes -----------------------------------------------------------------------------------------


def md(**strategy: Any) -> ModelDeployment:
    return ModelDeployment.model_validate(
        {
            "metadata": {"name": "digits", "namespace": "ml", "uid": "0b1c2d3e-0000-4000-8000-000000000001"},
            "spec": {
                "model": {"name": "digits", "track": {"alias": "champion"}},
                "strategy": strategy,
                "gateway": {"parentRefs": [{"name": "ml-gateway"}], "hostnames": ["digits.example.com"]},
            },
        }
    )


def golden(name: str, manifest: dict[str, Any]) -> None:
    import os

    path = GOLDEN / f"{name}.yaml"
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN") == "1":
        path.write_text(yaml.safe_dump(manifest, sort_keys=False), encoding="utf-8")
    assert yaml.safe_load(path.read_text(encoding="utf-8")) == manifest, f"{path.name} differs"


def test_http_route_ab_golden():
    obj = md(
        abTest={
            "weight": 20,
            "duration": "1h",
            "match": [{"header": {"name": "x-variant", "value": "b"}}, {"cookie": {"name": "variant", "value": "b.1"}}],
        }
    )
    test = obj.spec.strategy.ab_test
    assert test is not None and test.match is not None
    route = build_http_route(obj, {"1": 80, "2": 20}, None, ("2", test.match))
    golden("httproute-abtest", route)
    assert route["spec"]["rules"][0]["backendRefs"][1]["weight"] == 20
    cookie = route["spec"]["rules"][1]["matches"][7]["headers"][0]  # after the header match on each of 7 paths
    assert cookie == {"type": "RegularExpression", "name": "Cookie", "value": cookie_pattern("variant", "b.1")}


COOKIE_HEADERS = [
    # (cookie name, value, Cookie header, carries that cookie)
    ("variant", "b.1", "variant=b.1", True),
    ("variant", "b.1", "a=1; variant=b.1; z=2", True),
    ("variant", "b.1", "a=1;variant=b.1;z=2", True),
    ("variant", "b", "sid=9; variant=b", True),
    ("variant", "b", "variant=b; sid=9", True),
    ("variant", "b", "  variant=b  ", True),
    ("variant", "b", "a=x;b=y; variant=b", True),
    ("variant", "b", "variant=a; variant=b", True),
    ("variant", "b.1", "variant=bx1", False),
    ("variant", "b.1", "xvariant=b.1", False),
    ("variant", "b.1", "variant=b.12", False),
    ("variant", "b", "sid=9; variant=bb", False),
    ("variant", "b", "sid=9; avariant=b", False),
    ("variant", "b", "sid=variant=b", False),
    ("variant", "b", "variant=c; x=variant=b", False),
    ("variant", "b", "", False),
    ("id", "7", "sid=7; uid=7", False),
    ("id", "7", "sid=7; id=7", True),
    ("s-id", "a+b|c", "s-id=a+b|c; q=1", True),
    ("s-id", "a+b|c", "s-id=abbc", False),
    ("k", "", "k=; z=1", True),
    ("k", "", "k=1", False),
    ("tok", "{x}[y](z)*?^$", "a=1; tok={x}[y](z)*?^$", True),
    ("tok", "{x}[y](z)*?^$", "tok={x}[y](z)", False),
]


@pytest.mark.parametrize(("name", "value", "header", "carries"), COOKIE_HEADERS)
def test_cookie_pattern_same_verdict_under_search_and_full_match(
    name: str, value: str, header: str, carries: bool
) -> None:
    """Traefik finds the pattern anywhere (RE2 search); Envoy needs the whole value to match: same verdict."""
    pattern = re.compile(cookie_pattern(name, value))
    assert bool(pattern.search(header)) is carries, "search semantics (Traefik)"
    assert bool(pattern.fullmatch(header)) is carries, "full-match semantics (Envoy Gateway, Istio)"


@pytest.mark.parametrize(("name", "value"), sorted({(n, v) for n, v, _, _ in COOKIE_HEADERS}))
def test_cookie_pattern_is_re2_syntax(name: str, value: str) -> None:
    """No lookaround, atomic group, back-reference or possessive quantifier: RE2 (Envoy, Go) has none."""
    pattern = cookie_pattern(name, value)
    unescaped = re.sub(r"\\.", "", pattern)  # what remains outside escapes
    assert not re.search(r"\(\?(=|!|<=|<!|>|P=)", unescaped), pattern
    assert not re.search(r"\\[1-9]", pattern), pattern
    assert not re.search(r"[*+?}]\+", unescaped), pattern
    assert unescaped.startswith("^") and unescaped.endswith("$"), "anchored at both ends"


def test_http_route_shadow_golden():
    route = build_http_route(md(blueGreen={"shadow": {"percent": 100}}), {"1": 100, "2": 0}, ("2", 100))
    golden("httproute-shadow", route)


def test_cli_prints_the_comparison():
    from rich.console import Console

    from slipway.cli.main import comparison_table

    spec = ab(criterion=CRITERION)
    d = next(state(abtest.DECIDE, canary_weight=30), obs(now=61, comparison=comparison(0.8, 0.95, spec)), spec)
    console = Console(width=200, record=True)
    console.print(comparison_table(state_to_status(d.state)["comparison"]))
    text = console.export_text()
    assert "A v1" in text and "B v2" in text and "80.00%" in text and "95.00%" in text and "winner B" in text


def test_plan_lists_the_ab_stages():
    from slipway.cli.plan import traffic_steps

    obj = md(
        abTest={
            "weight": 20,
            "duration": "1h",
            "match": [{"header": {"name": "x-variant", "value": "b"}}],
            "shadow": {"percent": 10, "duration": "5m"},
            "criterion": CRITERION,
        }
    )
    steps = traffic_steps(obj, "1", "2")
    assert steps[1] == ("shadow: mirror 10% to v2 for 5m", "v1 100% · v2 0%")
    assert steps[2] == ("A/B test for 1h", "v1 80% · v2 20% + 1 header/cookie match(es) to v2")
    assert "B promoted if better by 2%+" in steps[3][0]
