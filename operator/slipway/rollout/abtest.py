"""A/B test: B ready, optional shadow, the split (weight and/or matches) for a duration, then the verdict."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from slipway.api.common import parse_duration
from slipway.api.modeldeployment import AbMatch, AbTest

from . import shadow
from .analysis import AnalysisConfig, explain, fold, resolve, until_due
from .approval import by_whom, given, how_to
from .canary import fresh
from .comparison import summary
from .state import (
    WAIT_SECONDS,
    Decision,
    Note,
    Observations,
    RolloutState,
    go,
    hold,
    promote,
    rollback,
)

READY, SHADOW, TEST, DECIDE = 0, 1, 2, 3
"""Stages of an A/B test, kept in status.currentStep."""
REMEASURE_SECONDS = 30.0
"""How soon an undecided comparison (no data for the criterion yet) is measured again."""


def stage(state: RolloutState) -> int:
    """The stage the test is at."""
    return state.current_step or READY


def analysis_config(state: RolloutState, ab: AbTest) -> AnalysisConfig | None:
    """The shadow's analysis during the shadow, the guard rails during the test (both on B)."""
    if stage(state) == SHADOW and ab.shadow is not None:
        return shadow.analysis_config(ab.shadow)
    if stage(state) == TEST and ab.analysis is not None:
        return resolve(None, ab.analysis)
    return None


def splitting(state: RolloutState) -> bool:
    """Whether the route splits traffic between A and B now (the test and its verdict)."""
    return state.phase in ("Progressing", "Paused") and state.canary_version is not None and stage(state) >= TEST


def route_matches(state: RolloutState, ab: AbTest) -> tuple[str, tuple[AbMatch, ...]] | None:
    """The header/cookie matches that send requests to B, while the test runs."""
    if not splitting(state) or not ab.match or state.canary_version is None:
        return None
    return state.canary_version, tuple(ab.match)


def comparison_due(state: RolloutState, now: datetime) -> bool:
    """Whether the reconciler should measure the comparison in this pass (the test is over, no verdict yet)."""
    if state.phase != "Progressing" or stage(state) != DECIDE:
        return False
    c = state.comparison
    return c is None or (not c.decided and (now - c.measured_at).total_seconds() >= REMEASURE_SECONDS)


def test_length(state: RolloutState, ab: AbTest, now: datetime) -> timedelta:
    """The time range the comparison covers: the test's duration, plus the time spent deciding."""
    extra = now - state.step_started_at if stage(state) == DECIDE and state.step_started_at else timedelta()
    return parse_duration(ab.duration) + max(extra, timedelta())


def _stage(state: RolloutState, target: int, what: str, *, action_used: bool = False, **changes: Any) -> Decision:
    return go(
        state,
        "Progressing",
        "StepCompleted",
        what,
        action_used=action_used,
        current_step=target,
        step_started_at=None,
        **changes,
    )


def _start_test(state: RolloutState, ab: AbTest, what: str) -> Decision:
    split = []
    if ab.weight:
        split.append(f"{ab.weight}% of traffic")
    if ab.match:
        split.append(f"{len(ab.match)} header/cookie match(es)")
    return _stage(
        state,
        TEST,
        f"{what}; A/B test for {ab.duration}: v{state.canary_version} (B) gets {' and '.join(split) or 'no traffic'}",
        canary_weight=ab.weight or 0,
        mirror_percent=0,
        comparison=None,
    )


def advance(state: RolloutState, obs: Observations, ab: AbTest, model: str = "") -> Decision:
    """Drive the A/B test one move (``model``: the registered model's name, for messages)."""
    version = state.canary_version
    at = stage(state)
    started = state.step_started_at
    if started is None:
        state = state.model_copy(update={"step_started_at": obs.now})
        started = obs.now
    if at == READY:
        if version not in obs.ready_versions and obs.action != "promote":
            if obs.now - (state.rollout_started_at or started) > parse_duration(ab.progress_deadline):
                return rollback(
                    state, obs, "ProgressDeadlineExceeded", f"B v{version} not ready in {ab.progress_deadline}"
                )
            return hold(state, f"waiting for B v{version} to be ready", WAIT_SECONDS)
        if ab.shadow is not None:
            return _stage(
                state,
                SHADOW,
                f"B v{version} ready; mirroring {ab.shadow.percent}% to it for {ab.shadow.duration}",
                mirror_percent=ab.shadow.percent,
                action_used=obs.action == "promote",
            )
        return replace(_start_test(state, ab, f"B v{version} ready"), action_used=obs.action == "promote")
    if at == SHADOW and ab.shadow is not None:
        if obs.action == "promote":
            return replace(_start_test(state, ab, "shadow skipped by promote"), action_used=True)
        state, decision = shadow.advance(state, obs, ab.shadow, started)
        return decision or _start_test(state, ab, f"shadow v{version}: passed")
    if at == TEST:
        guard = _guard_rails(state, obs, ab, started)
        if isinstance(guard, Decision):
            return guard
        state = guard
        end = started + parse_duration(ab.duration)
        if obs.action == "promote":
            return _stage(state, DECIDE, "test ended early by promote: comparing", action_used=True)
        if obs.now >= end:
            return _stage(
                state, DECIDE, f"A/B test ran {ab.duration}: comparing v{state.stable_version} and v{version}"
            )
        left = (end - obs.now).total_seconds()
        return hold(state, f"A/B test: {left:.0f}s left{_guard_note(state, ab)}", _wait(state, ab, obs.now, left))
    return _decide(state, obs, ab, model)


def _guard_rails(state: RolloutState, obs: Observations, ab: AbTest, started: datetime) -> RolloutState | Decision:
    """Fold the guard-rail measurements into the state; a failed analysis rolls B back."""
    if ab.analysis is None:
        return state
    config = resolve(None, ab.analysis)
    analysis = fresh(state.analysis, started)
    if obs.measurements is not None:
        analysis = fold(analysis, obs.measurements, config)
        if analysis.phase == "Successful":
            analysis = analysis.model_copy(update={"phase": "Running"})  # guard rails run to the end: no pass verdict
    state = state.model_copy(update={"analysis": analysis})
    if analysis.phase == "Failed":
        return rollback(
            state, obs, "AnalysisFailed", f"A/B guard rails on v{state.canary_version}: {explain(analysis, config)}"
        )
    return state


def _guard_note(state: RolloutState, ab: AbTest) -> str:
    if ab.analysis is None or state.analysis is None:
        return ""
    return f"; guard rails: {explain(state.analysis, resolve(None, ab.analysis))}"


def _wait(state: RolloutState, ab: AbTest, now: datetime, left: float) -> float:
    if ab.analysis is None:
        return left
    due = until_due(state.analysis or fresh(None, None), resolve(None, ab.analysis), now)
    return max(min(due, left), 0.5)


def _decide(state: RolloutState, obs: Observations, ab: AbTest, model: str = "") -> Decision:
    """The test is over: with a comparison, promote B, keep A, or wait for a person."""
    version = state.canary_version
    comparison = obs.comparison
    if comparison is None:
        if state.comparison is not None and not state.comparison.decided:
            wait = REMEASURE_SECONDS - (obs.now - state.comparison.measured_at).total_seconds()
            return hold(state, f"A/B test over, no verdict yet: {state.comparison.message}", max(wait, 0.5))
        return hold(state, "A/B test over: measuring the comparison", 0.5)
    previous = state.comparison
    state = state.model_copy(update={"comparison": comparison})
    note = Note("ABTestCompared", summary(comparison))
    if obs.action == "promote":
        decision = promote(state, obs, "PromotedByUser", f"B v{version} promoted by the user", action_used=True)
        return replace(decision, events=(*decision.events, note))
    if ab.criterion is None and ab.approval is not None:
        if given(ab.approval, obs.candidate_tags):
            who = by_whom(ab.approval, obs.candidate_tags, version)
            decision = promote(state, obs, "Approved", f"A/B test over, B {who}: v{version} promoted")
        else:
            keep = f"or abort (keep A v{state.stable_version})"
            message = f"A/B test over: {how_to(ab.approval, model, version)} to promote B, {keep}"
            decision = go(state, "Paused", "WaitingForApproval", message, requeue=None)
        return replace(decision, events=(*decision.events, note))
    if ab.criterion is None:
        decision = go(
            state,
            "Paused",
            "PausedByStep",
            f"A/B test over: promote (B v{version}) or abort (keep A v{state.stable_version})",
            requeue=None,
        )
        return replace(decision, events=(*decision.events, note))
    if comparison.winner == "B":
        decision = promote(state, obs, "CandidateWon", f"A/B test: B v{version} promoted. {comparison.message}")
    elif comparison.winner == "A":
        decision = rollback(
            state,
            obs,
            "CandidateLost",
            f"A/B test: A v{state.stable_version} kept, B v{version} removed. {comparison.message}",
        )
    else:
        return replace(
            hold(state, f"A/B test over, no verdict yet: {comparison.message}", REMEASURE_SECONDS),
            events=() if previous is not None and previous.message == comparison.message else (note,),
        )
    return replace(decision, events=(*decision.events, note))
