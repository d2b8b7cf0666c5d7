"""Status dict to RolloutState and back: the state is the status model; only its reason lives in a condition."""

from __future__ import annotations

from typing import Any

from slipway.rollout.state import RolloutState

from .status import get_condition


def state_from_status(status: dict[str, Any] | None) -> RolloutState:
    """The machine's state as the status holds it (an empty status is Idle; the reason is Progressing's)."""
    s = status or {}
    progressing = get_condition(s.get("conditions"), "Progressing") or {}
    return RolloutState.model_validate({**s, "reason": str(progressing.get("reason", ""))})


def state_to_status(state: RolloutState) -> dict[str, Any]:
    """The rollout fields of status; cleared fields are None (a merge patch removes them)."""
    return state.to_status()
