"""What a reconcile pass produces: the new status, the events to post, when to look again; and condition upkeep."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from slipway.rollout.state import Decision


@dataclass(frozen=True)
class Event:
    """A Kubernetes event to post on the reconciled object."""

    reason: str
    message: str
    type: Literal["Normal", "Warning"] = "Normal"


@dataclass
class Outcome:
    """The result of one reconcile pass: the status it wrote (once, only if it changed), events, when to look again."""

    status: dict[str, Any]
    events: list[Event] = field(default_factory=list)
    requeue_after: float | None = None
    decision: Decision | None = None
    """What the machine decided (None: the pass stopped before deciding: invalid spec, alert ignored)."""
    ignored: str | None = None
    """With an alert observed: why it changed nothing (None: it was acted on)."""
    started: float | None = None
    """time.monotonic() when the pass began (the object just read)."""
    status_written: float | None = None
    """time.monotonic() after the status write (None: status had not changed)."""
    traffic_written: float | None = None
    """time.monotonic() after the traffic write (None: the traffic manifest had not changed, or there is none)."""


def now_iso(now: datetime | None = None) -> str:
    """An RFC 3339 UTC timestamp with second precision, as Kubernetes writes them."""
    return (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    *,
    generation: int | None = None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """Return conditions with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    out: list[dict[str, Any]] = []
    found = False
    for cond in conditions or []:
        if cond.get("type") != type_:
            out.append(dict(cond))
            continue
        found = True
        changed = cond.get("status") != value
        new = {
            "type": type_,
            "status": value,
            "reason": reason,
            "message": message,
            "lastTransitionTime": now_iso(now) if changed else cond.get("lastTransitionTime", now_iso(now)),
        }
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    if not found:
        new = {"type": type_, "status": value, "reason": reason, "message": message, "lastTransitionTime": now_iso(now)}
        if generation is not None:
            new["observedGeneration"] = generation
        out.append(new)
    return out


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of this type, if present."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def status_changed(old: dict[str, Any] | None, new: dict[str, Any]) -> bool:
    """Whether writing `new` would change anything the object's status holds now."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
