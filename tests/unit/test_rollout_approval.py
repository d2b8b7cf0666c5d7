"""Approval in the model registry: a pause step (or the blue-green switch) waits for an MLflow tag on the candidate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeploymentSpec, PauseStep
from slipway.rollout.machine import next, waiting_for
from slipway.rollout.state import Decision, Observations, RolloutState

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def spec(pause: dict[str, Any] | None = None, **strategy: Any) -> ModelDeploymentSpec:
    pause = pause or {"untilApproved": {"tag": "approved_by"}}
    body: dict[str, Any] = {"model": {"name": "iris", "track": {"alias": "champion"}}}
    body["strategy"] = strategy or {"canary": {"steps": [{"setWeight": 10}, {"pause": pause}, {"setWeight": 50}]}}
    return ModelDeploymentSpec.model_validate(body)


def state(step: int = 1, **kw: Any) -> RolloutState:
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


def obs(seconds: float = 0, tags: dict[str, str] | None = None, **kw: Any) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=seconds),
        tracked_version="2",
        ready_versions=frozenset({"1", "2"}),
        live_versions=frozenset({"1", "2"}),
        candidate_tags=tags,
        **kw,
    )


def waiting(s: ModelDeploymentSpec | None = None) -> Decision:
    return next(state(), obs(tags={"other": "x"}), s or spec())


def test_the_step_pauses_waiting_for_approval_and_says_how_to_give_it():
    d = waiting()
    assert d.state.phase == "Paused" and d.state.reason == "WaitingForApproval"
    assert d.state.canary_weight == 10 and dict(d.weights) == {"1": 90, "2": 10}
    message = d.state.message
    assert "approved_by" in message and "model iris version 2" in message and "slipway promote" in message
    assert [e.reason for e in d.events] == ["WaitingForApproval"] and d.events[0].message == message
    assert d.requeue_after is None  # the ModelVersion watch (a tag change) or the resync brings the next pass


def test_it_keeps_waiting_without_the_tag_however_long():
    paused = waiting().state
    for tags in (None, {}, {"approved_by": ""}, {"reviewed": "bob"}):
        d = next(paused, obs(seconds=86400, tags=tags), spec())
        assert d.transition is None and d.state.phase == "Paused" and d.state.reason == "WaitingForApproval"
        assert d.events == () and "approved_by" in d.state.message


def test_the_tag_releases_the_pause_and_the_step_completes_naming_the_reviewer():
    paused = waiting().state
    approved = next(paused, obs(seconds=5, tags={"approved_by": "alice"}), spec())
    assert approved.state.phase == "Progressing" and approved.state.reason == "Approved"
    assert approved.events[0].reason == "Approved" and "approved by alice" in approved.events[0].message
    assert "v2" in approved.events[0].message
    done = next(approved.state, obs(seconds=6, tags={"approved_by": "alice"}), spec())
    assert done.state.reason == "StepCompleted" and done.state.current_step == 2
    assert "approved by alice" in done.state.message


def test_a_tag_already_there_completes_the_step_without_pausing():
    d = next(state(), obs(tags={"approved_by": "carol"}), spec())
    assert d.state.phase == "Progressing" and d.state.reason == "StepCompleted" and d.state.current_step == 2
    assert "approved by carol" in d.events[0].message


def test_with_a_value_only_that_value_approves():
    s = spec({"untilApproved": {"tag": "validation_status", "value": "approved"}})
    paused = next(state(), obs(tags={"validation_status": "pending"}), s)
    assert paused.state.reason == "WaitingForApproval" and "validation_status=approved" in paused.state.message
    for other in ("rejected", "Approved", "approved "):
        held = next(paused.state, obs(tags={"validation_status": other}), s)
        assert held.transition is None and held.state.reason == "WaitingForApproval"
    released = next(paused.state, obs(tags={"validation_status": "approved"}), s)
    assert released.state.reason == "Approved" and "validation_status=approved" in released.events[0].message


@pytest.mark.parametrize("action", ["promote", "resume"])
def test_a_manual_promote_still_moves_past_the_step(action: str):
    d = next(waiting().state, obs(action=action), spec())
    assert d.state.phase == "Progressing" and d.state.reason == "Resumed" and d.state.current_step == 2
    assert d.action_used


def test_promote_while_progressing_skips_the_approval_step():
    d = next(state(), obs(action="promote"), spec())
    assert d.state.reason == "StepCompleted" and d.state.current_step == 2 and d.action_used


def test_promote_full_and_abort_still_work_while_waiting():
    assert next(waiting().state, obs(action="promote-full"), spec()).state.phase == "Promoting"
    aborted = next(waiting().state, obs(action="abort"), spec())
    assert aborted.state.phase == "RollingBack" and aborted.state.reason == "Aborted"


def test_an_alert_still_rolls_back_while_waiting():
    d = next(waiting().state, obs(alert="SlipwayModelErrors"), spec())
    assert d.state.phase == "RollingBack" and d.state.reason == "AlertFiring"


def test_spec_paused_does_not_hide_the_wait_and_holds_after_the_approval():
    s = spec().model_copy(update={"paused": True})
    paused = waiting().state
    d = next(paused, obs(tags={"approved_by": "alice"}), s)
    assert d.state.reason == "Approved"
    assert next(d.state, obs(tags={"approved_by": "alice"}), s).state.reason == "PausedBySpec"


def test_a_spec_without_the_approval_any_more_lets_the_rollout_go_on():
    d = next(waiting().state, obs(), spec({"duration": "10s"}))
    assert d.state.phase == "Progressing" and d.state.reason == "Approved" and "no longer" in d.state.message


def test_waiting_for_names_the_current_steps_approval_only():
    assert waiting_for(state(1), spec()) is not None
    assert waiting_for(state(0), spec()) is None
    assert waiting_for(state(1, canary_version=None), spec()) is None


def test_pause_takes_a_duration_or_an_approval_not_both():
    with pytest.raises(ValidationError, match="at most one of duration or untilApproved"):
        PauseStep.model_validate({"duration": "10s", "untilApproved": {"tag": "approved_by"}})
    with pytest.raises(ValidationError):
        PauseStep.model_validate({"untilApproved": {"tag": ""}})
    with pytest.raises(ValidationError):
        PauseStep.model_validate({"untilApproved": {}})


# --- blue-green ------------------------------------------------------------------------------


def bg(**extra: Any) -> ModelDeploymentSpec:
    return spec(blueGreen={"approval": {"tag": "approved_by"}, **extra})


def test_bluegreen_switch_waits_for_the_approval_then_switches():
    preview = state(2, canary_weight=0)  # stage AWAITING
    paused = next(preview, obs(), bg())
    assert paused.state.phase == "Paused" and paused.state.reason == "WaitingForApproval"
    assert "preview v2 ready" in paused.state.message and dict(paused.weights) == {"1": 100, "2": 0}
    approved = next(paused.state, obs(seconds=3, tags={"approved_by": "dan"}), bg())
    assert approved.state.reason == "Approved" and approved.state.phase == "Progressing"
    switched = next(approved.state, obs(seconds=4, tags={"approved_by": "dan"}), bg())
    assert switched.state.phase == "Promoting" and switched.state.reason == "Approved"
    assert dict(switched.weights) == {"2": 100, "1": 0} and "approved by dan" in switched.events[0].message


def test_bluegreen_auto_promotion_counts_from_the_approval():
    paused = next(state(2, canary_weight=0), obs(), bg(autoPromotionSeconds=60)).state
    approved = next(paused, obs(seconds=100, tags={"approved_by": "dan"}), bg(autoPromotionSeconds=60)).state
    counting = next(approved, obs(seconds=110, tags={"approved_by": "dan"}), bg(autoPromotionSeconds=60))
    assert counting.transition is None and counting.requeue_after == pytest.approx(60)
    later = next(counting.state, obs(seconds=171, tags={"approved_by": "dan"}), bg(autoPromotionSeconds=60))
    assert later.state.phase == "Promoting" and later.state.reason == "AutoPromoted"


def test_bluegreen_promote_still_switches_without_the_tag():
    paused = next(state(2, canary_weight=0), obs(), bg()).state
    d = next(paused, obs(action="promote"), bg())
    assert d.state.phase == "Promoting" and d.state.reason == "PromotedByUser"


# --- A/B test without a criterion ------------------------------------------------------------


def ab(**extra: Any) -> ModelDeploymentSpec:
    return spec(abTest={"weight": 50, "duration": "60s", "approval": {"tag": "approved_by"}, **extra})


def comparison() -> Any:
    from slipway.rollout.comparison import Comparison, VariantResult

    return Comparison(
        measured_at=T0,
        window="60s",
        variants=(VariantResult(version="1", variant="A"), VariantResult(version="2", variant="B")),
    )


def test_ab_test_over_waits_for_the_approval_of_b_then_promotes_it():
    over = state(3, canary_weight=50)  # stage DECIDE
    paused = next(over, obs(seconds=61, comparison=comparison()), ab())
    assert paused.state.phase == "Paused" and paused.state.reason == "WaitingForApproval"
    assert "approved_by" in paused.state.message and "abort" in paused.state.message
    assert [e.reason for e in paused.events] == ["WaitingForApproval", "ABTestCompared"]
    assert dict(paused.weights) == {"1": 50, "2": 50}  # the split stays while it waits
    held = next(paused.state, obs(seconds=120), ab())
    assert held.transition is None
    approved = next(paused.state, obs(seconds=130, tags={"approved_by": "erin"}), ab())
    assert approved.state.phase == "Promoting" and approved.state.reason == "Approved"
    assert "approved by erin" in approved.events[0].message and approved.state.stable_version == "2"


def test_ab_approval_already_given_promotes_when_the_test_is_over():
    d = next(state(3, canary_weight=50), obs(seconds=61, comparison=comparison(), tags={"approved_by": "x"}), ab())
    assert d.state.phase == "Promoting" and d.state.reason == "Approved"


def test_ab_promote_and_abort_still_decide_while_waiting():
    paused = next(state(3, canary_weight=50), obs(seconds=61, comparison=comparison()), ab()).state
    assert next(paused, obs(action="promote"), ab()).state.reason == "PromotedByUser"
    assert next(paused, obs(action="abort"), ab()).state.reason == "Aborted"


def test_ab_approval_and_criterion_exclude_each_other():
    criterion = {"metric": "accuracy", "query": "q"}
    with pytest.raises(ValidationError, match="approval or criterion, not both"):
        ab(criterion=criterion)


def test_the_reconciler_feeds_the_candidates_mirrored_tags_only():
    from slipway.reconcilers.modeldeployment import Resolved, candidate_tags

    resolved = Resolved("3", "", {}, {"2": {"tags": {"approved_by": "alice"}}, "3": {"tags": {}}, "4": {}})
    assert candidate_tags(resolved, "2") == {"approved_by": "alice"}
    assert candidate_tags(resolved, "3") == {} and candidate_tags(resolved, "4") == {}
    assert candidate_tags(resolved, "5") is None and candidate_tags(resolved, None) is None
