"""The rollout state machine: one scenario per arrow of the transition table, plus the holds between them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from slipway.api.modeldeployment import ModelDeploymentSpec
from slipway.rollout.analysis import AnalysisState, Measurement
from slipway.rollout.comparison import Comparison, VariantResult
from slipway.rollout.machine import measurement_due, next
from slipway.rollout.phases import TRANSITIONS, IllegalTransition, conditions_for, transition
from slipway.rollout.state import Blocked, Decision, Finished, Observations, RolloutState, desired_weights

T0 = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
ERR = {"name": "error-rate", "query": "q", "max": 0.01}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def spec(**strategy: Any) -> ModelDeploymentSpec:
    body: dict[str, Any] = {"model": {"name": "digits", "track": {"alias": "champion"}}}
    body["strategy"] = strategy or {
        "canary": {
            "steps": [
                {"setWeight": 10},
                {"pause": {"duration": "60s"}},
                {"pause": {}},
                {"analysis": {}},
                {"setWeight": 50},
                {"mirror": {"percent": 20}},
            ],
            "analysis": {"interval": "30s", "failureLimit": 1, "count": 2, "metrics": [ERR]},
            "progressDeadline": "5m",
        }
    }
    return ModelDeploymentSpec.model_validate(body)


def bg_spec(**extra: Any) -> ModelDeploymentSpec:
    return spec(blueGreen={"scaleDownDelaySeconds": 30, "progressDeadline": "2m", **extra})


def canary_state(step: int, **kw: Any) -> RolloutState:
    base: dict[str, Any] = {
        "phase": "Progressing",
        "reason": "StepCompleted",
        "stable_version": "1",
        "canary_version": "2",
        "canary_weight": 10,
        "current_step": step,
        "step_started_at": T0,
        "rollout_started_at": T0,
    }
    return RolloutState(**{**base, **kw})


def obs(now: float = 0, tracked: str | None = "2", **kw: Any) -> Observations:
    kw.setdefault("ready_versions", frozenset({"1", "2"}))
    kw.setdefault("live_versions", frozenset({"1", "2"}))
    return Observations(now=at(now), tracked_version=tracked, **kw)


def round_(phase: str, value: float | None = 0.0) -> tuple[Measurement, ...]:
    return (Measurement(metric="error-rate", version="2", value=value, phase=phase, measured_at=at(0)),)  # type: ignore[arg-type]


def promoting() -> RolloutState:
    entry = Finished(
        version="2", previous_version="1", outcome="Promoted", reason="StepsCompleted", started_at=T0, finished_at=T0
    )
    return RolloutState(phase="Promoting", stable_version="2", promoted_at=T0, history=(entry,))


def ab_spec(**extra: Any) -> ModelDeploymentSpec:
    criterion = {"metric": "accuracy", "query": "q", "goal": "maximize", "minImprovement": 0.01}
    return spec(abTest={"weight": 50, "duration": "60s", "criterion": criterion, **extra})


def ab_decide_state() -> RolloutState:
    return canary_state(3, canary_weight=50)


def ab_comparison(a: float | None, b: float | None, winner: Any) -> Comparison:
    return Comparison(
        measured_at=at(60),
        window="60s",
        variants=(
            VariantResult(version="1", variant="A", criterion=a),
            VariantResult(version="2", variant="B", criterion=b),
        ),
        metric="accuracy",
        winner=winner,
    )


def succeeded_after_promotion() -> RolloutState:
    return promoting().model_copy(update={"phase": "Succeeded", "reason": "ScaledDown"})


def approval_spec() -> ModelDeploymentSpec:
    return spec(canary={"steps": [{"setWeight": 10}, {"pause": {"untilApproved": {"tag": "approved_by"}}}]})


APPROVED = {"approved_by": "alice"}


SCENARIOS: dict[tuple[str, str, str], Callable[[], Decision]] = {
    ("Idle", "Succeeded", "FirstVersion"): lambda: next(RolloutState(), obs(tracked="1"), spec()),
    ("Succeeded", "Progressing", "RolloutStarted"): lambda: next(
        RolloutState(phase="Succeeded", stable_version="1"), obs(), spec()
    ),
    ("RolledBack", "Progressing", "RolloutStarted"): lambda: next(
        RolloutState(
            phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AnalysisFailed", at=T0),)
        ),
        obs(tracked="3"),
        spec(),
    ),
    ("Progressing", "Progressing", "StepCompleted"): lambda: next(canary_state(0, canary_weight=0), obs(), spec()),
    ("Progressing", "Progressing", "Superseded"): lambda: next(canary_state(1), obs(tracked="3"), spec()),
    ("Paused", "Progressing", "Superseded"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByStep"), obs(tracked="3"), spec()
    ),
    ("Progressing", "Paused", "PausedByStep"): lambda: next(canary_state(2), obs(), spec()),
    ("Progressing", "Paused", "WaitingForApproval"): lambda: next(canary_state(1), obs(), approval_spec()),
    ("Paused", "Progressing", "Approved"): lambda: next(
        canary_state(1, phase="Paused", reason="WaitingForApproval"), obs(candidate_tags=APPROVED), approval_spec()
    ),
    ("Progressing", "Promoting", "Approved"): lambda: next(
        canary_state(2, canary_weight=0), obs(candidate_tags=APPROVED), bg_spec(approval={"tag": "approved_by"})
    ),
    ("Paused", "Promoting", "Approved"): lambda: next(
        ab_decide_state().model_copy(update={"phase": "Paused", "reason": "WaitingForApproval"}),
        obs(now=61, candidate_tags=APPROVED),
        spec(abTest={"weight": 50, "duration": "60s", "approval": {"tag": "approved_by"}}),
    ),
    ("Progressing", "Paused", "PausedByUser"): lambda: next(canary_state(1), obs(action="pause"), spec()),
    ("Progressing", "Paused", "PausedBySpec"): lambda: next(
        canary_state(1), obs(), spec().model_copy(update={"paused": True})
    ),
    ("Paused", "Progressing", "Resumed"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByStep"), obs(action="promote"), spec()
    ),
    ("Progressing", "Promoting", "StepsCompleted"): lambda: next(canary_state(6, canary_weight=50), obs(), spec()),
    ("Progressing", "Promoting", "AutoPromoted"): lambda: next(
        canary_state(2, canary_weight=0), obs(now=61), bg_spec(autoPromotionSeconds=60)
    ),
    ("Progressing", "Promoting", "PromotedByUser"): lambda: next(canary_state(1), obs(action="promote-full"), spec()),
    ("Paused", "Promoting", "PromotedByUser"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByStep", canary_weight=0), obs(action="promote"), bg_spec()
    ),
    ("Promoting", "Succeeded", "ScaledDown"): lambda: next(promoting(), obs(now=31, tracked="2"), spec()),
    ("Progressing", "RollingBack", "AnalysisFailed"): lambda: next(
        canary_state(
            3, analysis=AnalysisState(phase="Running", failed=1, started_at=T0, measurements=round_("Failed"))
        ),
        obs(now=30, measurements=round_("Failed", 0.5)),
        spec(),
    ),
    ("Progressing", "Promoting", "CandidateWon"): lambda: next(
        ab_decide_state(), obs(now=61, comparison=ab_comparison(0.8, 0.95, "B")), ab_spec()
    ),
    ("Progressing", "RollingBack", "CandidateLost"): lambda: next(
        ab_decide_state(), obs(now=61, comparison=ab_comparison(0.95, 0.8, "A")), ab_spec()
    ),
    ("Progressing", "RollingBack", "ProgressDeadlineExceeded"): lambda: next(
        canary_state(0, canary_weight=0), obs(now=301, ready_versions=frozenset({"1"})), spec()
    ),
    ("Progressing", "RollingBack", "Aborted"): lambda: next(canary_state(1), obs(action="abort"), spec()),
    ("Paused", "RollingBack", "Aborted"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByStep"), obs(action="abort"), spec()
    ),
    ("Promoting", "RollingBack", "Aborted"): lambda: next(promoting(), obs(action="abort"), spec()),
    ("Progressing", "RollingBack", "AlertFiring"): lambda: next(
        canary_state(1), obs(alert="SlipwayModelErrors"), spec()
    ),
    ("Paused", "RollingBack", "AlertFiring"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByUser"), obs(alert="SlipwayModelDrift"), spec()
    ),
    ("Promoting", "RollingBack", "AlertFiring"): lambda: next(promoting(), obs(alert="SlipwayModelDrift"), spec()),
    ("Succeeded", "RollingBack", "AlertFiring"): lambda: next(
        succeeded_after_promotion(), obs(now=600, alert="SlipwayModelDrift"), spec()
    ),
    ("Progressing", "RollingBack", "TargetReverted"): lambda: next(canary_state(1), obs(tracked="1"), spec()),
    ("Paused", "RollingBack", "TargetReverted"): lambda: next(
        canary_state(2, phase="Paused", reason="PausedByStep"), obs(tracked="1"), spec()
    ),
    ("RollingBack", "RolledBack", "RolledBack"): lambda: next(
        RolloutState(phase="RollingBack", reason="Aborted", stable_version="1", canary_version="2"),
        obs(live_versions=frozenset({"1"})),
        spec(),
    ),
}


@pytest.mark.parametrize("arrow", TRANSITIONS, ids=lambda t: f"{t.source}->{t.target}:{t.reason}")
def test_every_arrow_of_the_table(arrow):
    decision = SCENARIOS[(arrow.source, arrow.target, arrow.reason)]()
    assert decision.transition == arrow
    assert decision.state.phase == arrow.target
    assert decision.events and decision.events[0].reason == arrow.reason


def test_no_scenario_for_an_arrow_outside_the_table():
    assert set(SCENARIOS) == {(t.source, t.target, t.reason) for t in TRANSITIONS}


def test_an_arrow_not_in_the_table_is_refused():
    with pytest.raises(IllegalTransition):
        transition("Succeeded", "RolledBack", "Aborted")


# --- what the arrows do -------------------------------------------------------------------------


def test_first_version_gets_all_traffic():
    d = next(RolloutState(), obs(tracked="1"), spec())
    assert d.state.stable_version == "1" and dict(d.weights) == {"1": 100} and d.keep == {"1"}


def test_rollout_start_keeps_stable_at_100_and_canary_at_0():
    d = next(RolloutState(phase="Succeeded", stable_version="1"), obs(), spec())
    assert dict(d.weights) == {"1": 100, "2": 0} and d.keep == {"1", "2"}
    assert d.state.current_step == 0 and d.state.rollout_started_at == at(0)


def test_set_weight_waits_for_the_canary_to_be_ready():
    d = next(canary_state(0, canary_weight=0), obs(now=10, ready_versions=frozenset({"1"})), spec())
    assert d.transition is None and "waiting for v2 to be ready" in d.state.message
    assert d.state.canary_weight == 0


def test_set_weight_shifts_traffic():
    d = next(canary_state(0, canary_weight=0), obs(), spec())
    assert d.state.canary_weight == 10 and dict(d.weights) == {"1": 90, "2": 10} and d.state.current_step == 1


def test_timed_pause_holds_then_completes():
    hold = next(canary_state(1), obs(now=30), spec())
    assert hold.transition is None and hold.requeue_after == pytest.approx(30)
    done = next(canary_state(1), obs(now=60), spec())
    assert done.state.current_step == 2


def test_a_step_starts_on_the_pass_after_the_previous_one():
    d = next(canary_state(1, step_started_at=None), obs(now=5), spec())
    assert d.transition is None and d.state.step_started_at == at(5)


def test_untimed_pause_waits_for_promote_and_promote_moves_past_it():
    paused = next(canary_state(2), obs(), spec()).state
    assert next(paused, obs(now=3600), spec()).transition is None
    resumed = next(paused, obs(action="promote"), spec())
    assert resumed.state.current_step == 3 and resumed.action_used


def test_resume_after_user_pause_stays_on_the_step():
    paused = next(canary_state(1), obs(action="pause"), spec()).state
    resumed = next(paused, obs(action="resume"), spec())
    assert resumed.state.phase == "Progressing" and resumed.state.current_step == 1


def test_spec_pause_resumes_when_cleared():
    paused_spec = spec().model_copy(update={"paused": True})
    paused = next(canary_state(1), obs(), paused_spec).state
    assert next(paused, obs(action="resume"), paused_spec).transition is None
    assert next(paused, obs(), spec()).state.phase == "Progressing"


def test_analysis_needs_count_successful_rounds():
    s = canary_state(3)
    d1 = next(s, obs(measurements=round_("Successful")), spec())
    assert d1.transition is None and d1.state.analysis is not None and d1.state.analysis.successful == 1
    d2 = next(d1.state, obs(now=30, measurements=round_("Successful")), spec())
    assert d2.transition is not None and d2.transition.reason == "StepCompleted"


def test_inconclusive_analysis_waits_and_never_promotes():
    s = canary_state(3)
    for i in range(20):
        d = next(s, obs(now=30 * i, measurements=round_("Inconclusive", None)), spec())
        assert d.transition is None
        s = d.state
    assert s.analysis is not None and s.analysis.inconclusive == 20 and s.analysis.phase == "Inconclusive"
    assert "inconclusive" in s.message


def test_unreachable_prometheus_is_inconclusive_too():
    d = next(
        canary_state(3),
        obs(
            measurements=(
                Measurement(
                    metric="error-rate", version="2", value=None, phase="Error", measured_at=T0, message="unreachable"
                ),
            )
        ),
        spec(),
    )
    assert d.transition is None and d.state.analysis is not None and d.state.analysis.phase == "Inconclusive"
    assert "unreachable" in d.state.message


def test_failures_up_to_the_limit_are_tolerated():
    d = next(canary_state(3), obs(measurements=round_("Failed", 0.5)), spec())
    assert d.transition is None and d.state.analysis is not None and d.state.analysis.failed == 1


def test_analysis_failure_rolls_back_at_once_and_blocks():
    d = SCENARIOS[("Progressing", "RollingBack", "AnalysisFailed")]()
    assert dict(d.weights) == {"1": 100} and d.keep == {"1"}
    assert d.state.blocked[0].version == "2" and d.state.history[-1].outcome == "RolledBack"
    assert d.events[0].warning


def test_measurement_is_due_on_the_interval():
    s = canary_state(3)
    assert measurement_due(s, spec(), at(0)) is not None
    after = next(s, obs(measurements=round_("Successful")), spec()).state
    assert measurement_due(after, spec(), at(10)) is None
    assert measurement_due(after, spec(), at(30)) is not None
    assert measurement_due(canary_state(0), spec(), at(0)) is None


def test_mirror_step_sets_the_mirror():
    d = next(canary_state(5, canary_weight=50), obs(), spec())
    assert d.state.mirror_percent == 20 and d.state.canary_weight == 50


def test_promotion_keeps_the_old_version_at_0_until_scale_down():
    d = next(canary_state(6, canary_weight=50), obs(), spec())
    assert d.state.stable_version == "2" and d.state.canary_version is None
    assert dict(d.weights) == {"2": 100, "1": 0} and d.keep == {"1", "2"}
    hold = next(d.state, obs(now=10), spec())
    assert hold.transition is None and hold.keep == {"1", "2"}
    done = next(d.state, obs(now=31), spec())
    assert done.keep == {"2"} and dict(done.weights) == {"2": 100}


def test_canary_scale_down_delay_is_the_specs():
    """strategy.canary.scaleDownDelaySeconds, not a fixed 30 s: the old version stays that long, then goes."""
    canary = spec().strategy.canary
    assert canary is not None and canary.scale_down_delay_seconds == 30, "the default is the former fixed 30 s"
    long = spec(canary={**canary.model_dump(by_alias=True, exclude_none=True), "scaleDownDelaySeconds": 120})
    d = next(canary_state(6, canary_weight=50), obs(), long)
    hold = next(d.state, obs(now=31), long)
    assert hold.transition is None and hold.keep == {"1", "2"} and "v1 removed in 89s" in hold.state.message
    assert hold.requeue_after == pytest.approx(89)
    done = next(d.state, obs(now=121), long)
    assert done.state.phase == "Succeeded" and done.keep == {"2"}
    now = spec(canary={**canary.model_dump(by_alias=True, exclude_none=True), "scaleDownDelaySeconds": 0})
    at_once = next(next(canary_state(6, canary_weight=50), obs(), now).state, obs(now=0), now)
    assert at_once.state.phase == "Succeeded" and at_once.keep == {"2"}


def test_rollback_from_promoting_goes_back_to_the_previous_version():
    d = SCENARIOS[("Promoting", "RollingBack", "AlertFiring")]()
    assert d.state.stable_version == "1" and dict(d.weights) == {"1": 100} and d.state.blocked[0].version == "2"


def test_rolling_back_waits_for_the_canary_children_to_go():
    s = RolloutState(phase="RollingBack", reason="Aborted", stable_version="1", canary_version="2")
    assert next(s, obs(), spec()).transition is None


def test_blocked_version_is_not_retried():
    s = RolloutState(
        phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AnalysisFailed", at=T0),)
    )
    d = next(s, obs(), spec())
    assert d.transition is None and "blocked" in d.state.message


def test_a_blocked_version_s_message_keeps_its_cause():
    """Once the alias still names the blocked version, the message still says why it is blocked."""
    cause = "alert SlipwayModelDrift fired for v2: all traffic back to v1"
    s = RolloutState(
        phase="RolledBack",
        stable_version="1",
        blocked=(Blocked(version="2", reason="AlertFiring", at=T0, message=cause),),
    )
    d = next(s, obs(), spec())
    assert d.transition is None
    assert d.state.message.startswith(f"v2 is blocked (AlertFiring: {cause}); v1 keeps serving")


def test_retry_unblocks_and_starts_again():
    s = RolloutState(
        phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AnalysisFailed", at=T0),)
    )
    d = next(s, obs(action="retry"), spec())
    assert d.state.phase == "Progressing" and d.state.blocked == () and d.action_used


def test_spec_change_unblocks():
    s = RolloutState(
        phase="RolledBack", stable_version="1", blocked=(Blocked(version="2", reason="AnalysisFailed", at=T0),)
    )
    assert next(s, obs(spec_changed=True), spec()).state.phase == "Progressing"


def test_target_reverted_does_not_block():
    d = SCENARIOS[("Progressing", "RollingBack", "TargetReverted")]()
    assert d.state.blocked == () and d.state.stable_version == "1"


def test_superseded_records_history_and_restarts():
    d = SCENARIOS[("Progressing", "Progressing", "Superseded")]()
    assert d.state.canary_version == "3" and d.state.current_step == 0 and d.state.history[-1].outcome == "Superseded"
    assert d.keep == {"1", "3"}


def test_waiting_for_a_tracked_version():
    d = next(RolloutState(), obs(tracked=None, tracked_message="no ModelVersion has alias champion"), spec())
    assert d.transition is None and "champion" in d.state.message


def test_abort_at_rest_is_ignored():
    d = next(RolloutState(phase="Succeeded", stable_version="2"), obs(action="abort"), spec())
    assert d.transition is None


# --- blue-green ------------------------------------------------------------------------------


def bg_state(stage: int, **kw: Any) -> RolloutState:
    return canary_state(stage, canary_weight=0, **kw)


def test_bluegreen_preview_waits_for_ready_then_analysis():
    s = spec(blueGreen={"prePromotionAnalysis": {"metrics": [ERR], "count": 1}})
    wait = next(bg_state(0), obs(ready_versions=frozenset({"1"})), s)
    assert wait.transition is None and dict(wait.weights) == {"1": 100, "2": 0}
    ready = next(bg_state(0), obs(), s)
    assert ready.state.current_step == 1
    assert measurement_due(ready.state, s, at(0)) is not None
    passed = next(ready.state, obs(measurements=round_("Successful")), s)
    assert passed.state.current_step == 2


def test_bluegreen_preview_deadline():
    d = next(bg_state(0), obs(now=121, ready_versions=frozenset({"1"})), bg_spec())
    assert d.state.phase == "RollingBack" and d.state.reason == "ProgressDeadlineExceeded"


def test_bluegreen_analysis_failure_rolls_back():
    s = spec(blueGreen={"prePromotionAnalysis": {"metrics": [ERR], "failureLimit": 0}})
    d = next(bg_state(1), obs(measurements=round_("Failed", 1.0)), s)
    assert d.state.phase == "RollingBack" and d.state.reason == "AnalysisFailed"


def test_bluegreen_without_auto_promotion_pauses_for_promote():
    d = next(bg_state(2), obs(), bg_spec())
    assert d.state.phase == "Paused" and d.state.reason == "PausedByStep"


def test_bluegreen_switch_is_atomic():
    d = next(bg_state(2), obs(now=61), bg_spec(autoPromotionSeconds=60))
    assert dict(d.weights) == {"2": 100, "1": 0}
    early = next(bg_state(2), obs(now=10), bg_spec(autoPromotionSeconds=60))
    assert early.transition is None and early.requeue_after == pytest.approx(50)


def test_bluegreen_scale_down_delay():
    s = bg_spec()
    p = next(bg_state(2), obs(now=61), bg_spec(autoPromotionSeconds=60)).state
    assert next(p, obs(now=80), s).transition is None
    assert next(p, obs(now=92), s).state.phase == "Succeeded"


def test_conditions():
    ready, progressing, degraded = conditions_for("Progressing", "StepCompleted", "m", True)
    assert ready.status and progressing.status and not degraded.status
    _, progressing, degraded = conditions_for("RolledBack", "AnalysisFailed", "m", True)
    assert not progressing.status and degraded.status and degraded.reason == "AnalysisFailed"
    ready, _, _ = conditions_for("Succeeded", "FirstVersion", "v1 serving all traffic", True, stable_ready=False)
    assert not ready.status and ready.reason == "StableNotReady", "Ready waits for the stable predictor"
    ready, _, _ = conditions_for("Idle", "", "waiting", False, stable_ready=False)
    assert not ready.status and ready.reason == "NoStableVersion"
    _, _, degraded = conditions_for("RolledBack", "RolledBack", "B lost", True, "CandidateLost")
    assert not degraded.status and degraded.reason == "CandidateLost", "losing an A/B test is a decision"
    _, _, degraded = conditions_for("Progressing", "StepCompleted", "m", True, "CandidateLost")
    assert not degraded.status and degraded.reason == "Healthy"


def test_weights_at_rest():
    assert desired_weights(RolloutState(phase="Succeeded", stable_version="4")) == {"4": 100}
    assert desired_weights(RolloutState()) == {}


def test_post_promotion_analysis_is_refused_rather_than_silently_ignored() -> None:
    from slipway.api.modeldeployment import ModelDeployment
    from slipway.reconcilers.modeldeployment import unhonourable

    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "digits", "namespace": "ml"},
            "spec": {
                "model": {"name": "digits", "track": {"alias": "champion"}},
                "strategy": {
                    "blueGreen": {
                        "postPromotionAnalysis": {"metrics": [{"name": "errors", "query": "vector(0)", "max": 0.01}]}
                    }
                },
            },
        }
    )
    why = unhonourable(md)
    assert why is not None and "postPromotionAnalysis" in why
