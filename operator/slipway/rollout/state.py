"""The rollout's state (slipway.api.rollout), what a pass observes, what the machine decides, the shared moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from slipway.api.rollout import Blocked as Blocked
from slipway.api.rollout import Finished as Finished
from slipway.api.rollout import RolloutState as RolloutState

from .analysis import Measurement
from .comparison import Comparison
from .phases import Phase, Transition, transition

Action = Literal["promote", "promote-full", "abort", "retry", "pause", "resume"]
ACTIONS: tuple[str, ...] = ("promote", "promote-full", "abort", "retry", "pause", "resume")
HISTORY_LIMIT = 10
CANARY_SCALE_DOWN_SECONDS = 30.0
"""How long the old version outlives an A/B test's promotion (a canary's: ``strategy.canary.scaleDownDelaySeconds``)."""
WAIT_SECONDS = 5.0
"""How soon to look again while waiting on the cluster (readiness, children going away)."""
NEXT_SECONDS = 0.5
"""How soon to look again after a step completed (the next step starts at once)."""
RECHECK_SECONDS = 1.0
"""How soon to look again while rolling back (the pass itself removed the children it waits on)."""


@dataclass(frozen=True)
class Observations:
    """What one reconcile pass saw: time, the tracked version, readiness, children, actions, measurements, tags."""

    now: datetime
    tracked_version: str | None = None
    tracked_message: str = ""
    ready_versions: frozenset[str] = frozenset()
    live_versions: frozenset[str] = frozenset()
    action: Action | None = None
    measurements: tuple[Measurement, ...] | None = None
    alert: str | None = None
    spec_changed: bool = False
    comparison: Comparison | None = None
    candidate_tags: Mapping[str, str] | None = None
    """The MLflow tags of the candidate (state.canary_version), from its ModelVersion's status."""


@dataclass(frozen=True)
class Note:
    """An event to post."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True)
class Decision:
    """The machine's answer: the new state, the arrow taken (None: hold), events, when to look again."""

    state: RolloutState
    transition: Transition | None = None
    events: tuple[Note, ...] = ()
    requeue_after: float | None = None
    action_used: bool = False

    @property
    def weights(self) -> Mapping[str, int]:
        """Route weights by version for this state."""
        return desired_weights(self.state)

    @property
    def keep(self) -> frozenset[str]:
        """Versions whose children must exist; the others are removed."""
        return desired_versions(self.state)


def desired_weights(state: RolloutState) -> dict[str, int]:
    """Traffic by version: stable gets the rest of the canary's weight; an old version stays listed at 0."""
    if state.stable_version is None:
        return {}
    weights = {state.stable_version: 100}
    if state.canary_version and (state.phase in {"Progressing", "Paused"} or _serving_while_rolling_back(state)):
        weights = {state.stable_version: 100 - state.canary_weight, state.canary_version: state.canary_weight}
    previous = state.previous_version
    if previous and previous != state.stable_version:
        weights[previous] = 0
    return weights


def desired_versions(state: RolloutState) -> frozenset[str]:
    """Live versions: stable, plus the canary during a rollout, plus the old version while Promoting."""
    out = {state.stable_version} if state.stable_version else set()
    if state.canary_version and (state.phase in {"Progressing", "Paused"} or _serving_while_rolling_back(state)):
        out.add(state.canary_version)
    if state.previous_version:
        out.add(state.previous_version)
    return frozenset(v for v in out if v)


def _serving_while_rolling_back(state: RolloutState) -> bool:
    """Rolling back to a version that had to be recreated: the failed one serves until it is ready."""
    return state.phase == "RollingBack" and state.canary_weight > 0


def hold(state: RolloutState, message: str, requeue: float | None = None, *, action_used: bool = False) -> Decision:
    """Stay in the phase; say why."""
    return Decision(state.model_copy(update={"message": message}), None, (), requeue, action_used)


def go(
    state: RolloutState,
    target: Phase,
    reason: str,
    message: str,
    *,
    requeue: float | None = NEXT_SECONDS,
    warning: bool = False,
    action_used: bool = False,
    **changes: object,
) -> Decision:
    """Take the table's arrow (state.phase → target, reason), apply the changes, post one event."""
    arrow = transition(state.phase, target, reason)
    new = state.model_copy(update={"phase": target, "reason": reason, "message": message, **changes})
    return Decision(new, arrow, (Note(reason, message, warning),), requeue, action_used)


def cap(history: tuple[Finished, ...]) -> tuple[Finished, ...]:
    """The last HISTORY_LIMIT entries."""
    return history[-HISTORY_LIMIT:]


def start(state: RolloutState, obs: Observations, version: str, reason: str = "RolloutStarted") -> Decision:
    """Start rolling ``version`` out against the stable version (weight 0, step 0)."""
    history = state.history
    if reason == "Superseded" and state.canary_version:
        history = cap(
            (
                *history,
                Finished(
                    version=state.canary_version,
                    previous_version=state.stable_version,
                    outcome="Superseded",
                    reason="Superseded",
                    started_at=state.rollout_started_at,
                    finished_at=obs.now,
                    message=f"v{version} is tracked now",
                ),
            )
        )
    return go(
        state,
        "Progressing",
        reason,
        f"rolling out v{version} (stable v{state.stable_version})",
        canary_version=version,
        canary_weight=0,
        mirror_percent=0,
        current_step=0,
        step_started_at=obs.now,
        rollout_started_at=obs.now,
        analysis=None,
        history=history,
    )


def promote(
    state: RolloutState, obs: Observations, reason: str, message: str, *, action_used: bool = False
) -> Decision:
    """All traffic to the new version in one write; the old one stays up until the scale-down delay."""
    new = state.canary_version
    assert new is not None, "promote needs a canary"
    entry = Finished(
        version=new,
        previous_version=state.stable_version,
        outcome="Promoted",
        reason=reason,
        started_at=state.rollout_started_at,
        finished_at=obs.now,
        message=message,
    )
    return go(
        state,
        "Promoting",
        reason,
        message,
        action_used=action_used,
        stable_version=new,
        canary_version=None,
        canary_weight=0,
        mirror_percent=0,
        current_step=None,
        step_started_at=None,
        promoted_at=obs.now,
        history=cap((*state.history, entry)),
    )


def rollback(
    state: RolloutState, obs: Observations, reason: str, message: str, *, block: bool = True, action_used: bool = False
) -> Decision:
    """All traffic back to stable at once; block the failed version (unless the user simply moved back).

    After a promotion (Promoting, or Succeeded within the watch window) "stable" is the version the
    promotion replaced. If that version is not ready (Succeeded: its children were removed and
    come back now), the failed version keeps all traffic until it is: the rollback never routes
    to a backend without pods, and the switch is still one write of the route.
    """
    weight = 0
    if state.phase == "Promoting":
        failed, stable = state.stable_version, state.previous_version
    elif state.phase == "Succeeded":
        failed, stable = state.stable_version, state.replaced_version
        weight = 0 if stable in obs.ready_versions else 100
    else:
        failed, stable = state.canary_version, state.stable_version
    assert failed is not None
    outcome: Literal["RolledBack", "Aborted"] = "Aborted" if reason == "Aborted" else "RolledBack"
    entry = Finished(
        version=failed,
        previous_version=stable,
        outcome=outcome,
        reason=reason,
        started_at=state.rollout_started_at,
        finished_at=obs.now,
        message=message,
    )
    blocked = state.blocked
    if block:
        blocked = (
            *(b for b in blocked if b.version != failed),
            Blocked(version=failed, reason=reason, at=obs.now, message=message),
        )
    return go(
        state,
        "RollingBack",
        reason,
        message,
        warning=True,
        action_used=action_used,
        stable_version=stable,
        canary_version=failed,
        canary_weight=weight,
        mirror_percent=0,
        blocked=blocked,
        history=cap((*state.history, entry)),
    )
