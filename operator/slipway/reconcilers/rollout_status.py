"""Status dict to RolloutState and back: the progress of a rollout lives in the ModelDeployment status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from slipway.rollout.analysis import AnalysisState, Measurement
from slipway.rollout.comparison import Comparison, VariantResult
from slipway.rollout.state import Blocked, Finished, RolloutState

from .status import get_condition


def _time(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def _iso(value: datetime | None) -> str | None:
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if value is not None else None


def _analysis(raw: dict[str, Any] | None) -> AnalysisState | None:
    if not raw:
        return None
    measurements = tuple(
        Measurement(
            m["metric"],
            m.get("version") or "",
            m.get("value"),
            m["phase"],
            _time(m["measuredAt"]) or datetime.min,
            m.get("message") or "",
            bool(m.get("dryRun")),
        )
        for m in raw.get("measurements") or []
    )
    return AnalysisState(
        phase=raw.get("phase") or "Pending",
        successful=int(raw.get("successful", 0)),
        failed=int(raw.get("failed", 0)),
        inconclusive=int(raw.get("inconclusive", 0)),
        started_at=_time(raw.get("startedAt")),
        measurements=measurements,
    )


_RESULT_FIELDS = (
    ("requests", "requests"),
    ("error_rate", "errorRate"),
    ("p50_latency_seconds", "p50LatencySeconds"),
    ("p99_latency_seconds", "p99LatencySeconds"),
    ("drift", "drift"),
    ("feedback", "feedback"),
    ("accuracy", "accuracy"),
    ("estimated_accuracy", "estimatedAccuracy"),
    ("criterion", "criterion"),
)


def _variant(raw: dict[str, Any]) -> VariantResult:
    values = {attr: raw.get(key) for attr, key in _RESULT_FIELDS}
    predictions = tuple((str(k), float(v)) for k, v in (raw.get("predictions") or {}).items())
    return VariantResult(str(raw.get("version", "")), raw.get("variant", "A"), predictions=predictions, **values)


def _comparison(raw: dict[str, Any] | None) -> Comparison | None:
    if not raw or not raw.get("variants"):
        return None
    variants = {v.get("variant"): _variant(v) for v in raw["variants"]}
    if "A" not in variants or "B" not in variants:
        return None
    return Comparison(
        measured_at=_time(raw.get("measuredAt")) or datetime.min,
        window=str(raw.get("window", "")),
        a=variants["A"],
        b=variants["B"],
        metric=raw.get("metric"),
        winner=raw.get("winner"),
        message=raw.get("message") or "",
    )


def comparison_to_status(c: Comparison | None) -> dict[str, Any] | None:
    """status.comparison."""
    if c is None:
        return None

    def variant(r: VariantResult) -> dict[str, Any]:
        out: dict[str, Any] = {"version": r.version, "variant": r.variant}
        for attr, key in _RESULT_FIELDS:
            value = getattr(r, attr)
            if value is not None:
                out[key] = round(value, 6)
        if r.predictions:
            out["predictions"] = dict(r.predictions)
        return out

    return _drop_none(
        {
            "measuredAt": _iso(c.measured_at),
            "window": c.window,
            "metric": c.metric,
            "winner": c.winner,
            "message": c.message,
            "variants": [variant(c.a), variant(c.b)],
        }
    )


def state_from_status(status: dict[str, Any] | None) -> RolloutState:
    """The machine's state as the status holds it (an empty status is Idle)."""
    s = status or {}
    progressing = get_condition(s.get("conditions"), "Progressing") or {}
    return RolloutState(
        phase=s.get("phase") or "Idle",
        reason=str(progressing.get("reason", "")),
        stable_version=s.get("stableVersion"),
        canary_version=s.get("canaryVersion"),
        canary_weight=int(s.get("canaryWeight") or 0),
        mirror_percent=int(s.get("mirrorPercent") or 0),
        current_step=s.get("currentStep"),
        step_started_at=_time(s.get("stepStartedAt")),
        rollout_started_at=_time(s.get("rolloutStartedAt")),
        promoted_at=_time(s.get("promotedAt")),
        analysis=_analysis(s.get("analysis")),
        comparison=_comparison(s.get("comparison")),
        blocked=tuple(
            Blocked(b["version"], b["reason"], _time(b["at"]) or datetime.min, b.get("message") or "")
            for b in s.get("blockedVersions") or []
        ),
        history=tuple(
            Finished(
                h["version"],
                h.get("previousVersion"),
                h["outcome"],
                h.get("reason") or "",
                _time(h.get("startedAt")),
                _time(h.get("finishedAt")) or datetime.min,
                h.get("message") or "",
            )
            for h in s.get("history") or []
        ),
        message=s.get("message") or "",
    )


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v != ""}


def analysis_to_status(a: AnalysisState | None) -> dict[str, Any] | None:
    """status.analysis."""
    if a is None:
        return None
    return _drop_none(
        {
            "phase": a.phase,
            "successful": a.successful,
            "failed": a.failed,
            "inconclusive": a.inconclusive,
            "startedAt": _iso(a.started_at),
            "measurements": [
                _drop_none(
                    {
                        "metric": m.metric,
                        "version": m.version,
                        "value": m.value,
                        "phase": m.phase,
                        "measuredAt": _iso(m.measured_at),
                        "message": m.message,
                        "dryRun": True if m.dry_run else None,
                    }
                )
                for m in a.measurements
            ]
            or None,
        }
    )


def state_to_status(state: RolloutState) -> dict[str, Any]:
    """The rollout fields of status; cleared fields are None (a merge patch removes them)."""
    return {
        "phase": state.phase,
        "stableVersion": state.stable_version,
        "canaryVersion": state.canary_version,
        "canaryWeight": state.canary_weight if state.canary_version else None,
        "mirrorPercent": state.mirror_percent or None,
        "currentStep": state.current_step,
        "stepStartedAt": _iso(state.step_started_at),
        "rolloutStartedAt": _iso(state.rollout_started_at),
        "promotedAt": _iso(state.promoted_at),
        "analysis": analysis_to_status(state.analysis),
        "comparison": comparison_to_status(state.comparison),
        "blockedVersions": [
            _drop_none({"version": b.version, "reason": b.reason, "at": _iso(b.at), "message": b.message})
            for b in state.blocked
        ]
        or None,
        "history": [
            _drop_none(
                {
                    "version": h.version,
                    "previousVersion": h.previous_version,
                    "outcome": h.outcome,
                    "reason": h.reason,
                    "startedAt": _iso(h.started_at),
                    "finishedAt": _iso(h.finished_at),
                    "message": h.message,
                }
            )
            for h in state.history
        ]
        or None,
        "message": state.message or None,
    }
