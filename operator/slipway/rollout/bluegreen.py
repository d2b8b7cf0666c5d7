"""Blue-green: the preview at full size, shadow traffic, pre-promotion analysis, approval, then one atomic switch."""

from __future__ import annotations

from slipway.api.common import parse_duration
from slipway.api.modeldeployment import BlueGreen

from . import shadow
from .analysis import AnalysisConfig, explain, fold, resolve, until_due
from .approval import by_whom, given, how_to
from .canary import fresh
from .state import WAIT_SECONDS, Decision, Observations, RolloutState, go, hold, promote, rollback

PREVIEW, ANALYSIS, AWAITING, SHADOW = 0, 1, 2, 3
"""Stages of a blue-green rollout, kept in status.currentStep (in order: preview, shadow, analysis, awaiting)."""


def analysis_config(state: RolloutState, bg: BlueGreen) -> AnalysisConfig | None:
    """The pre-promotion analysis, or the shadow's, when the rollout is at that stage."""
    if state.current_step == SHADOW and bg.shadow is not None:
        return shadow.analysis_config(bg.shadow)
    if state.current_step != ANALYSIS or bg.pre_promotion_analysis is None:
        return None
    return resolve(None, bg.pre_promotion_analysis)


def _next_stage(state: RolloutState, bg: BlueGreen, what: str) -> Decision:
    current = state.current_step or PREVIEW
    mirror = state.mirror_percent
    if current == PREVIEW and bg.shadow is not None:
        stage, mirror = SHADOW, bg.shadow.percent
    elif current in (PREVIEW, SHADOW) and bg.pre_promotion_analysis is not None:
        stage = ANALYSIS
    else:
        stage = AWAITING
    return go(
        state, "Progressing", "StepCompleted", what, current_step=stage, step_started_at=None, mirror_percent=mirror
    )


def advance(state: RolloutState, obs: Observations, bg: BlueGreen, model: str = "") -> Decision:
    """Drive the blue-green rollout one move (``model``: the registered model's name, for messages)."""
    version = state.canary_version
    stage = state.current_step or PREVIEW
    started = state.step_started_at
    if started is None:
        state = state.model_copy(update={"step_started_at": obs.now})
        started = obs.now
    if obs.action == "promote" and stage != AWAITING:
        return _next_stage(state, bg, "stage skipped by promote")
    if stage == PREVIEW:
        if version in obs.ready_versions:
            return _next_stage(state, bg, f"preview v{version} ready at full size")
        if obs.now - (state.rollout_started_at or started) > parse_duration(bg.progress_deadline):
            return rollback(
                state, obs, "ProgressDeadlineExceeded", f"preview v{version} not ready in {bg.progress_deadline}"
            )
        return hold(state, f"waiting for preview v{version} to be ready", WAIT_SECONDS)
    if stage == SHADOW and bg.shadow is not None:
        state, decision = shadow.advance(state, obs, bg.shadow, started)
        return decision or _next_stage(state, bg, f"shadow v{version}: {bg.shadow.percent}% mirrored, passed")
    if stage == ANALYSIS:
        config = analysis_config(state, bg)
        assert config is not None
        analysis = fresh(state.analysis, started)
        if obs.measurements is not None:
            analysis = fold(analysis, obs.measurements, config)
        state = state.model_copy(update={"analysis": analysis})
        if analysis.phase == "Failed":
            return rollback(state, obs, "AnalysisFailed", f"pre-promotion {explain(analysis, config)}")
        if analysis.phase == "Successful":
            return _next_stage(state, bg, f"pre-promotion {explain(analysis, config)}")
        return hold(state, f"pre-promotion {explain(analysis, config)}", max(until_due(analysis, config, obs.now), 0.5))
    if obs.action == "promote":
        return promote(state, obs, "PromotedByUser", f"switched all traffic to v{version}", action_used=True)
    if bg.approval is not None and not given(bg.approval, obs.candidate_tags):
        message = f"preview v{version} ready: {how_to(bg.approval, model, version)}"
        return go(state, "Paused", "WaitingForApproval", message, requeue=None)
    if bg.auto_promotion_seconds is None:
        if bg.approval is not None:
            who = by_whom(bg.approval, obs.candidate_tags, version)
            return promote(state, obs, "Approved", f"{who}: switched all traffic to v{version}")
        return go(state, "Paused", "PausedByStep", f"preview v{version} ready: waiting for promote", requeue=None)
    left = bg.auto_promotion_seconds - (obs.now - started).total_seconds()
    if left <= 0:
        return promote(state, obs, "AutoPromoted", f"switched all traffic to v{version}")
    return hold(state, f"preview v{version} ready: switching in {left:.0f}s", left)
