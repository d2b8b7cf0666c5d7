"""Canary steps: setWeight (once ready), pause (for a duration, until approved or promoted), mirror, analysis."""

from __future__ import annotations

from datetime import datetime

from slipway.api.common import parse_duration
from slipway.api.modeldeployment import Canary, CanaryStep

from .analysis import AnalysisConfig, AnalysisState, explain, fold, resolve, until_due
from .approval import by_whom, given, how_to
from .state import WAIT_SECONDS, Decision, Observations, RolloutState, go, hold, promote, rollback


def current_step(state: RolloutState, canary: Canary) -> CanaryStep | None:
    """The step the rollout is on, or None past the last one."""
    i = state.current_step or 0
    return canary.steps[i] if i < len(canary.steps) else None


def fresh(analysis: AnalysisState | None, started: datetime | None) -> AnalysisState:
    """The analysis of the current stage: the stored one if it began in this stage, else a new one."""
    if analysis is None or analysis.started_at is None or (started is not None and analysis.started_at < started):
        return AnalysisState()
    return analysis


def analysis_config(state: RolloutState, canary: Canary) -> AnalysisConfig | None:
    """The analysis the current step runs, if it is an analysis step."""
    step = current_step(state, canary)
    if step is None or step.analysis is None:
        return None
    return resolve(step.analysis, canary.analysis)


def complete(
    state: RolloutState,
    what: str,
    *,
    action_used: bool = False,
    weight: int | None = None,
    mirror: int | None = None,
) -> Decision:
    """Finish the current step and go to the next (StepCompleted), setting the weight or mirror it asked for."""
    i = state.current_step or 0
    if weight is not None:
        state = state.model_copy(update={"canary_weight": weight})
    if mirror is not None:
        state = state.model_copy(update={"mirror_percent": mirror})
    return go(
        state,
        "Progressing",
        "StepCompleted",
        f"step {i} done: {what}",
        action_used=action_used,
        current_step=i + 1,
        step_started_at=None,
    )


def advance(state: RolloutState, obs: Observations, canary: Canary, model: str = "") -> Decision:
    """Drive the canary one move: the current step either completes, waits, pauses or rolls back.

    ``model`` is the registered model's name, for the message of a pause waiting for approval.
    """
    step = current_step(state, canary)
    version = state.canary_version
    if step is None:
        return promote(state, obs, "StepsCompleted", f"all steps done: v{version} promoted")
    i = state.current_step or 0
    started = state.step_started_at
    if started is None:  # a step begins on the pass after the previous one completed
        state = state.model_copy(update={"step_started_at": obs.now})
        started = obs.now
    skip = obs.action == "promote"
    if step.set_weight is not None:
        weight = step.set_weight
        if version not in obs.ready_versions and not skip:
            if obs.now - started > parse_duration(canary.progress_deadline):
                return rollback(
                    state, obs, "ProgressDeadlineExceeded", f"v{version} not ready within {canary.progress_deadline}"
                )
            return hold(state, f"step {i}: waiting for v{version} to be ready before setWeight {weight}", WAIT_SECONDS)
        return complete(state, f"weight {weight}% on v{version}", action_used=skip, weight=weight)
    if step.mirror is not None:
        percent = step.mirror.percent
        return complete(state, f"mirroring {percent}% to v{version}", action_used=skip, mirror=percent)
    if step.pause is not None:
        if skip:
            return complete(state, "pause skipped by promote", action_used=True)
        approval = step.pause.until_approved
        if approval is not None:
            if given(approval, obs.candidate_tags):
                return complete(state, by_whom(approval, obs.candidate_tags, version))
            message = f"step {i}: {how_to(approval, model, version)}"
            return go(state, "Paused", "WaitingForApproval", message, requeue=None)
        if step.pause.duration is None:
            return go(state, "Paused", "PausedByStep", f"step {i}: paused until promoted", requeue=None)
        end = started + parse_duration(step.pause.duration)
        if obs.now >= end:
            return complete(state, f"paused {step.pause.duration}")
        left = (end - obs.now).total_seconds()
        return hold(state, f"step {i}: pausing {step.pause.duration} ({left:.0f}s left)", left)
    return _analysis_step(state, obs, canary, skip)


def _analysis_step(state: RolloutState, obs: Observations, canary: Canary, skip: bool) -> Decision:
    i = state.current_step or 0
    if skip:
        return complete(state, "analysis skipped by promote", action_used=True)
    config = analysis_config(state, canary)
    assert config is not None
    analysis = fresh(state.analysis, state.step_started_at)
    if obs.measurements is not None:
        analysis = fold(analysis, obs.measurements, config)
    state = state.model_copy(update={"analysis": analysis})
    if analysis.phase == "Failed":
        return rollback(state, obs, "AnalysisFailed", f"step {i}: {explain(analysis, config)}")
    if analysis.phase == "Successful":
        return complete(state, explain(analysis, config))
    return hold(state, f"step {i}: {explain(analysis, config)}", max(until_due(analysis, config, obs.now), 0.5))
