"""Rollout phases, the transition table (data) and the conditions each phase implies."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from slipway.api.rollout import Phase as Phase

AT_REST: Final = frozenset({"Idle", "Succeeded", "RolledBack"})
"""Phases with no rollout under way: a new tracked version starts one."""
LIVE: Final = frozenset({"Progressing", "Paused", "Promoting"})
"""Phases a rollback can leave from (an abort or an alert rolls back to stable at once); an alert also
rolls a Succeeded deployment back while its promotion is within spec.rollback.window."""


@dataclass(frozen=True)
class Transition:
    """One arrow of the state machine: from a phase to a phase, for a reason."""

    source: Phase
    target: Phase
    reason: str
    description: str


def _t(source: Phase, target: Phase, reason: str, description: str) -> Transition:
    return Transition(source, target, reason, description)


TRANSITIONS: Final[tuple[Transition, ...]] = (
    _t("Idle", "Succeeded", "FirstVersion", "no stable version yet: the tracked version gets all traffic"),
    _t("Succeeded", "Progressing", "RolloutStarted", "the tracked version differs from stable and is not blocked"),
    _t("RolledBack", "Progressing", "RolloutStarted", "a newer (or retried) version after a rollback"),
    _t("Progressing", "Progressing", "StepCompleted", "a step (or blue-green stage) finished: go to the next"),
    _t("Progressing", "Progressing", "Superseded", "the tracked version moved to a third version mid-rollout"),
    _t("Paused", "Progressing", "Superseded", "the tracked version moved while paused"),
    _t(
        "Progressing",
        "Paused",
        "PausedByStep",
        "a pause without duration; blue-green, or an A/B test without criterion, awaiting promotion",
    ),
    _t(
        "Progressing",
        "Paused",
        "WaitingForApproval",
        "a pause untilApproved, or blue-green's approval, and the candidate lacks the MLflow tag",
    ),
    _t("Paused", "Progressing", "Approved", "the candidate's MLflow tag approves: the step completes"),
    _t(
        "Progressing",
        "Promoting",
        "Approved",
        "blue-green: the preview's MLflow tag approves the switch; A/B: B's tag approves it when the test is over",
    ),
    _t("Paused", "Promoting", "Approved", "an A/B test over and waiting for approval: B's MLflow tag approves it"),
    _t("Progressing", "Paused", "PausedByUser", "the pause action"),
    _t("Progressing", "Paused", "PausedBySpec", "spec.paused set to true"),
    _t("Paused", "Progressing", "Resumed", "resume or promote action, or spec.paused back to false"),
    _t("Progressing", "Promoting", "StepsCompleted", "the last canary step finished: all traffic to the new version"),
    _t("Progressing", "Promoting", "AutoPromoted", "blue-green: autoPromotionSeconds elapsed after the preview passed"),
    _t(
        "Progressing",
        "Promoting",
        "PromotedByUser",
        "the promote-full action; the promote action once an A/B test is over",
    ),
    _t("Progressing", "Promoting", "CandidateWon", "A/B test over: B beat A on the criterion"),
    _t("Paused", "Promoting", "PromotedByUser", "the promote(-full) action while paused (blue-green: the switch)"),
    _t("Promoting", "Succeeded", "ScaledDown", "scale-down delay elapsed: the old version's children removed"),
    _t(
        "Progressing",
        "RollingBack",
        "AnalysisFailed",
        "more failed measurements than failureLimit (also shadow, A/B guard rails)",
    ),
    _t("Progressing", "RollingBack", "CandidateLost", "A/B test over: B did not beat A on the criterion; A kept"),
    _t("Progressing", "RollingBack", "ProgressDeadlineExceeded", "the new version was not ready within the deadline"),
    _t("Progressing", "RollingBack", "Aborted", "the abort action"),
    _t("Paused", "RollingBack", "Aborted", "the abort action while paused"),
    _t("Promoting", "RollingBack", "Aborted", "the abort action while the old version is still up"),
    _t("Progressing", "RollingBack", "AlertFiring", "a matching alert fired during the rollout"),
    _t("Paused", "RollingBack", "AlertFiring", "a matching alert fired while paused"),
    _t("Promoting", "RollingBack", "AlertFiring", "a matching alert fired while the old version is still up"),
    _t(
        "Succeeded",
        "RollingBack",
        "AlertFiring",
        "a matching alert fired within spec.rollback.window of the promotion: back to the previous version",
    ),
    _t("Progressing", "RollingBack", "TargetReverted", "the tracked version moved back to stable"),
    _t("Paused", "RollingBack", "TargetReverted", "the tracked version moved back to stable while paused"),
    _t("RollingBack", "RolledBack", "RolledBack", "all traffic on stable and the new version's children gone"),
)

_INDEX: Final = {(t.source, t.target, t.reason): t for t in TRANSITIONS}


class IllegalTransition(RuntimeError):
    """The machine tried an arrow that is not in the table (a bug, never a user error)."""


def transition(source: Phase, target: Phase, reason: str) -> Transition:
    """The table's arrow for (source, target, reason); raises IllegalTransition if there is none."""
    try:
        return _INDEX[(source, target, reason)]
    except KeyError:
        raise IllegalTransition(f"no transition {source} -> {target} for {reason}") from None


@dataclass(frozen=True)
class ConditionSpec:
    """A condition to set: type, status, reason, message."""

    type: str
    status: bool
    reason: str
    message: str


DECISIONS = frozenset({"CandidateLost"})  # endings that keep the stable version by choice, not by failure


def conditions_for(
    phase: Phase,
    reason: str,
    message: str,
    has_stable: bool,
    cause: str | None = None,
    *,
    stable_ready: bool = True,
) -> tuple[ConditionSpec, ...]:
    """Ready / Progressing / Degraded for a phase and the reason of the last transition (or hold).

    Ready needs a stable version whose predictor is ready (``stable_ready``), not just one chosen.

    ``cause`` is why the last rollout ended (e.g. AnalysisFailed): Degraded reports it rather
    than the bookkeeping reason RolledBack.
    """
    reason = reason or phase
    if not has_stable:
        ready = ConditionSpec("Ready", False, "NoStableVersion", message)
    elif not stable_ready:
        ready = ConditionSpec(
            "Ready", False, "StableNotReady", "waiting for the stable version's predictor to be ready"
        )
    else:
        ready = ConditionSpec("Ready", True, "StableServing", message)
    progressing = phase in {"Progressing", "Paused", "Promoting", "RollingBack"}
    cause = cause or reason
    ended_back = phase in {"RollingBack", "RolledBack"}
    degraded = ended_back and cause not in DECISIONS
    shown = ended_back  # a decision: Degraded=False, its reason still says how the rollout ended
    return (
        ready,
        ConditionSpec("Progressing", progressing, reason, message),
        ConditionSpec("Degraded", degraded, cause if shown else "Healthy", message if shown else ""),
    )
