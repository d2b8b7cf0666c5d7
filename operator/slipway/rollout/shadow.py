"""Shadow stage of blue-green and A/B rollouts: mirror traffic to the new version, analyse it, go on or roll back."""

from __future__ import annotations

from datetime import datetime

from slipway.api.common import parse_duration
from slipway.api.modeldeployment import Shadow

from .analysis import AnalysisConfig, explain, fold, resolve, until_due
from .canary import fresh
from .state import Decision, Observations, RolloutState, hold, rollback


def analysis_config(shadow: Shadow) -> AnalysisConfig | None:
    """The analysis of the mirrored version, if the shadow declares one."""
    return resolve(None, shadow.analysis) if shadow.analysis is not None else None


def advance(
    state: RolloutState, obs: Observations, shadow: Shadow, started: datetime
) -> tuple[RolloutState, Decision | None]:
    """One move of the shadow stage. Returns the state (with the analysis folded in) and a decision,
    or None when the stage has passed (the caller goes on to its next stage).

    Routes carry 100 % to stable throughout; only the mirror copies requests to the new version.
    A failed analysis rolls back; the stage passes once the duration is over and the analysis (if
    any) has its successful rounds: without evidence it keeps waiting.
    """
    version = state.canary_version
    config = analysis_config(shadow)
    left = (started + parse_duration(shadow.duration) - obs.now).total_seconds()
    if config is None:
        if left > 0:
            return state, hold(state, f"shadow: mirroring {shadow.percent}% to v{version} ({left:.0f}s left)", left)
        return state, None
    analysis = fresh(state.analysis, started)
    if obs.measurements is not None:
        analysis = fold(analysis, obs.measurements, config)
    state = state.model_copy(update={"analysis": analysis})
    if analysis.phase == "Failed":
        message = f"shadow v{version} ({shadow.percent}% mirrored): {explain(analysis, config)}"
        return state, rollback(state, obs, "AnalysisFailed", message)
    if left <= 0 and analysis.phase == "Successful":
        return state, None
    wait = until_due(analysis, config, obs.now)
    remaining = f"{left:.0f}s left" if left > 0 else "waiting for evidence"
    message = f"shadow: mirroring {shadow.percent}% to v{version} ({remaining}); {explain(analysis, config)}"
    return state, hold(state, message, max(min(wait, left) if left > 0 else wait, 0.5))
