"""The pure rollout state machine: ``next(state, observations, spec) -> Decision`` over the transition table."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from slipway.api.modeldeployment import Approval, ModelDeploymentSpec

from . import abtest, bluegreen, canary
from .alerts import promoted_within_window
from .analysis import AnalysisConfig, due, until_due
from .approval import by_whom, given
from .phases import AT_REST, LIVE
from .state import (
    CANARY_SCALE_DOWN_SECONDS,
    NEXT_SECONDS,
    RECHECK_SECONDS,
    WAIT_SECONDS,
    Decision,
    Observations,
    RolloutState,
    go,
    hold,
    promote,
    rollback,
    start,
)


def scale_down_seconds(spec: ModelDeploymentSpec) -> float:
    """How long the old version stays up after a promotion."""
    if spec.strategy.blue_green is not None:
        return float(spec.strategy.blue_green.scale_down_delay_seconds)
    if spec.strategy.canary is not None:
        return float(spec.strategy.canary.scale_down_delay_seconds)
    return CANARY_SCALE_DOWN_SECONDS


def analysis_config(state: RolloutState, spec: ModelDeploymentSpec) -> AnalysisConfig | None:
    """The blocking analysis the rollout is at, if any (the reconciler measures it when due)."""
    if state.phase != "Progressing" or state.canary_version is None:
        return None
    if spec.strategy.canary is not None:
        return canary.analysis_config(state, spec.strategy.canary)
    if spec.strategy.blue_green is not None:
        return bluegreen.analysis_config(state, spec.strategy.blue_green)
    if spec.strategy.ab_test is not None:
        return abtest.analysis_config(state, spec.strategy.ab_test)
    return None


def waiting_for(state: RolloutState, spec: ModelDeploymentSpec) -> Approval | None:
    """The approval the rollout's current step (a canary pause, the blue-green switch) asks for, if any."""
    if state.canary_version is None:
        return None
    if spec.strategy.canary is not None:
        step = canary.current_step(state, spec.strategy.canary)
        return step.pause.until_approved if step is not None and step.pause is not None else None
    bg = spec.strategy.blue_green
    if bg is not None and (state.current_step or bluegreen.PREVIEW) == bluegreen.AWAITING:
        return bg.approval
    ab = spec.strategy.ab_test
    if ab is not None and abtest.stage(state) == abtest.DECIDE:
        return ab.approval
    return None


def comparison_due(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> bool:
    """Whether an A/B test is over and the reconciler should measure its comparison in this pass."""
    return spec.strategy.ab_test is not None and abtest.comparison_due(state, now)


def measurement_due(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> AnalysisConfig | None:
    """The analysis to measure in this pass (its interval has passed), or None."""
    config = analysis_config(state, spec)
    if config is None:
        return None
    current = canary.fresh(state.analysis, state.step_started_at or now)
    return config if due(current, config, now) else None


def next(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision:
    """Decide the next move. One arrow of the table at most per call; a hold says why in the message."""
    if obs.spec_changed and state.blocked:
        state = state.model_copy(update={"blocked": ()})
    if state.phase in LIVE and obs.action == "abort":
        return rollback(state, obs, "Aborted", "aborted by the user: all traffic back to stable", action_used=True)
    if obs.alert is not None:
        fired = _alert_fired(state, obs, spec)
        if fired is not None:
            return fired
    if state.phase in AT_REST:
        return _at_rest(state, obs)
    if state.phase == "RollingBack":
        return _rolling_back(state, obs)
    if state.phase == "Promoting":
        return _promoting(state, obs, spec)
    superseded = _superseded(state, obs)
    if superseded is not None:
        return superseded
    if state.phase == "Paused":
        return _paused(state, obs, spec)
    return _progressing(state, obs, spec)


def _alert_fired(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision | None:
    """A matching alert: roll the canary back, or the promoted version within the watch window (else None)."""
    if state.phase in ("Progressing", "Paused"):
        message = f"alert {obs.alert} fired for v{state.canary_version}: all traffic back to v{state.stable_version}"
        return rollback(state, obs, "AlertFiring", message)
    previous = promoted_within_window(state, spec, obs.now)
    if previous is None:
        return None
    message = (
        f"alert {obs.alert} fired for v{state.stable_version} within the {spec.rollback.window} window "
        f"after its promotion: back to v{previous}"
    )
    return rollback(state, obs, "AlertFiring", message)


def _at_rest(state: RolloutState, obs: Observations) -> Decision:
    used = False
    if obs.action == "retry" and state.blocked_entry(obs.tracked_version):
        state = state.model_copy(
            update={"blocked": tuple(b for b in state.blocked if b.version != obs.tracked_version)}
        )
        used = True
    tracked = obs.tracked_version
    if tracked is None:
        return hold(state, f"waiting for the tracked version: {obs.tracked_message}", None, action_used=used)
    if state.stable_version is None:
        return go(state, "Succeeded", "FirstVersion", f"v{tracked} serving all traffic", stable_version=tracked)
    if tracked == state.stable_version:
        return hold(state, state.message or f"v{tracked} serving all traffic", None, action_used=used)
    block = state.blocked_entry(tracked)
    if block is not None:
        message = (
            f"v{tracked} is blocked ({block.reason}{': ' + block.message if block.message else ''}); "
            f"v{state.stable_version} keeps serving: change the spec or use the retry action"
        )
        return hold(state, message, None, action_used=used)
    decision = start(state, obs, tracked)
    return replace(decision, action_used=used)


def _rolling_back(state: RolloutState, obs: Observations) -> Decision:
    if state.canary_weight and state.canary_version:  # the version rolled back to was recreated
        stable, failed = state.stable_version, state.canary_version
        if stable in obs.ready_versions:
            return hold(
                state.model_copy(update={"canary_weight": 0}), f"rolling back: all traffic to v{stable}", NEXT_SECONDS
            )
        return hold(state, f"rolling back: v{failed} serves until v{stable} is ready again", RECHECK_SECONDS)
    leftovers = obs.live_versions - {state.stable_version}
    if leftovers:
        names = ", ".join(f"v{v}" for v in sorted(leftovers))
        return hold(state, f"rolling back: waiting for {names} to be removed", RECHECK_SECONDS)
    cause = state.history[-1].message if state.history and state.history[-1].version == state.canary_version else ""
    return go(
        state,
        "RolledBack",
        "RolledBack",
        f"rolled back to v{state.stable_version} ({state.reason}{': ' + cause if cause else ''}); "
        f"v{state.canary_version} removed",
        requeue=None,
        warning=True,
        canary_version=None,
        current_step=None,
        step_started_at=None,
    )


def _promoting(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision:
    previous = state.previous_version
    at = state.promoted_at or obs.now
    left = scale_down_seconds(spec) - (obs.now - at).total_seconds()
    if previous is not None and left > 0:
        return hold(state, f"v{state.stable_version} promoted; v{previous} removed in {left:.0f}s", left)
    gone = f"; v{previous} removed" if previous else ""
    return go(state, "Succeeded", "ScaledDown", f"v{state.stable_version} serving all traffic{gone}", requeue=None)


def _superseded(state: RolloutState, obs: Observations) -> Decision | None:
    tracked = obs.tracked_version
    if tracked is None or tracked == state.canary_version:
        return None
    if tracked == state.stable_version:
        message = f"the tracked version is v{tracked} again: v{state.canary_version} withdrawn"
        return rollback(state, obs, "TargetReverted", message, block=False)
    if state.blocked_entry(tracked) is not None:
        return None
    return start(state, obs, tracked, "Superseded")


def _paused(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision:
    by_step = state.reason in ("PausedByStep", "WaitingForApproval")
    if (
        obs.action == "promote-full"
        or (obs.action in ("promote", "resume") and by_step and spec.strategy.blue_green is not None)
        or (obs.action == "promote" and by_step and spec.strategy.ab_test is not None)
    ):
        return promote(state, obs, "PromotedByUser", f"v{state.canary_version} promoted by the user", action_used=True)
    if obs.action == "resume" and by_step and spec.strategy.ab_test is not None:
        return hold(state, state.message or "A/B test over: promote or abort", None)
    if spec.paused and not by_step:
        return hold(state, "paused: spec.paused is true", None, action_used=obs.action is not None)
    by_user = obs.action in ("promote", "resume")
    if state.reason == "WaitingForApproval" and not by_user:
        return _awaiting_approval(state, obs, spec)
    if by_user or (state.reason == "PausedBySpec" and not spec.paused):
        step = state.current_step or 0
        if by_step:
            step += 1
        return go(
            state,
            "Progressing",
            "Resumed",
            f"resumed at step {step}",
            action_used=by_user,
            current_step=step,
            step_started_at=None,
        )
    return hold(state, state.message or "paused", None)


def _awaiting_approval(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision:
    """Paused for an approval: go on (at the same step, which completes) once the candidate's tags approve.

    An A/B test over is promoted at once (its comparison is measured and kept already).
    """
    approval = waiting_for(state, spec)
    if approval is not None and not given(approval, obs.candidate_tags):
        return hold(state, state.message or "waiting for approval", None)
    if approval is None:
        message = "the spec no longer asks for an approval here: going on"
    else:
        message = by_whom(approval, obs.candidate_tags, state.canary_version)
    if approval is not None and spec.strategy.ab_test is not None:
        return promote(state, obs, "Approved", f"A/B test over, B {message}: v{state.canary_version} promoted")
    return go(state, "Progressing", "Approved", message, step_started_at=None)


def _progressing(state: RolloutState, obs: Observations, spec: ModelDeploymentSpec) -> Decision:
    if spec.paused:
        return go(state, "Paused", "PausedBySpec", "paused: spec.paused is true", requeue=None)
    if obs.action == "pause":
        return go(state, "Paused", "PausedByUser", "paused by the user", requeue=None, action_used=True)
    if obs.action == "promote-full":
        return promote(state, obs, "PromotedByUser", f"v{state.canary_version} promoted by the user", action_used=True)
    if spec.strategy.blue_green is not None:
        return bluegreen.advance(state, obs, spec.strategy.blue_green, spec.model.name)
    if spec.strategy.canary is not None:
        return canary.advance(state, obs, spec.strategy.canary, spec.model.name)
    if spec.strategy.ab_test is not None:
        return abtest.advance(state, obs, spec.strategy.ab_test, spec.model.name)
    return hold(state, "strategy not supported", WAIT_SECONDS)


def seconds_until_measurement(state: RolloutState, spec: ModelDeploymentSpec, now: datetime) -> float | None:
    """Seconds until the running analysis wants its next round (None when there is none)."""
    config = analysis_config(state, spec)
    if config is None:
        return None
    return until_due(canary.fresh(state.analysis, state.step_started_at or now), config, now)
