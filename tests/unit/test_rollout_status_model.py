"""The rollout state is the status model: its wire format, its reading of old and partial status, its schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeploymentStatus
from slipway.api.rollout import STATUS_FIELDS, RolloutState
from slipway.api.schema import structural_schema, walk
from slipway.reconcilers.rollout_status import state_from_status, state_to_status
from slipway.rollout.analysis import AnalysisState, Measurement
from slipway.rollout.comparison import Comparison, VariantResult
from slipway.rollout.state import Blocked, Finished

T = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
STAMP = "2026-03-04T05:06:07.123456Z"


def rich() -> RolloutState:
    return RolloutState(
        phase="Progressing",
        reason="StepCompleted",
        stable_version="1",
        canary_version="2",
        current_step=0,
        step_started_at=T,
        analysis=AnalysisState(
            phase="Running",
            failed=1,
            measurements=(
                Measurement(metric="err", version="2", value=0.0, phase="Successful", measured_at=T),
                Measurement(metric="lat", value=None, phase="Error", measured_at=T, message="boom", dry_run=True),
            ),
        ),
        comparison=Comparison(
            measured_at=T,
            window="600s",
            variants=(
                VariantResult(version="1", variant="A", error_rate=0.012346, predictions=(("cat", 1.0),)),
                VariantResult(version="2", variant="B"),
            ),
        ),
        blocked=(Blocked(version="3", reason="AlertFiring", at=T),),
        history=(Finished(version="1", outcome="Promoted", finished_at=T),),
        message="rolling",
    )


def test_the_wire_format_is_the_one_status_always_had():
    assert state_to_status(rich()) == {
        "phase": "Progressing",
        "stableVersion": "1",
        "canaryVersion": "2",
        "canaryWeight": 0,
        "mirrorPercent": None,
        "currentStep": 0,
        "stepStartedAt": STAMP,
        "rolloutStartedAt": None,
        "promotedAt": None,
        "analysis": {
            "phase": "Running",
            "successful": 0,
            "failed": 1,
            "inconclusive": 0,
            "measurements": [
                {"metric": "err", "version": "2", "value": 0.0, "phase": "Successful", "measuredAt": STAMP},
                {"metric": "lat", "phase": "Error", "measuredAt": STAMP, "message": "boom", "dryRun": True},
            ],
        },
        "comparison": {
            "measuredAt": STAMP,
            "window": "600s",
            "variants": [
                {"version": "1", "variant": "A", "errorRate": 0.012346, "predictions": {"cat": 1.0}},
                {"version": "2", "variant": "B"},
            ],
        },
        "blockedVersions": [{"version": "3", "reason": "AlertFiring", "at": STAMP}],
        "history": [{"version": "1", "outcome": "Promoted", "finishedAt": STAMP}],
        "message": "rolling",
    }


def test_cleared_fields_are_none_and_the_weight_needs_a_canary():
    status = state_to_status(RolloutState(phase="Succeeded", stable_version="1", canary_weight=50))
    assert list(status) == list(STATUS_FIELDS)
    assert status["canaryWeight"] is None and status["blockedVersions"] is None and status["message"] is None


def test_status_reads_back_to_the_same_state_with_the_condition_s_reason():
    status = json.loads(json.dumps(state_to_status(rich())))
    status["conditions"] = [{"type": "Progressing", "status": "True", "reason": "StepCompleted"}]
    status["url"] = "http://digits.example.com"  # not rollout state: ignored
    assert state_from_status(status) == rich()
    assert state_from_status(None) == RolloutState()


def test_results_are_rounded_to_six_places():
    result = VariantResult(version="1", variant="A", error_rate=0.0123456789, predictions=(("cat", 0.123456789),))
    assert result.model_dump(mode="json", by_alias=True) == {
        "version": "1",
        "variant": "A",
        "errorRate": 0.012346,
        "predictions": {"cat": 0.123456789},
    }


def test_times_without_microseconds_still_parse():
    state = state_from_status({"phase": "Succeeded", "promotedAt": "2025-06-01T12:00:00Z"})
    assert state.promoted_at == datetime(2025, 6, 1, 12, tzinfo=UTC)


def test_a_comparison_needs_a_and_b():
    with pytest.raises(ValidationError, match="one A and one B"):
        Comparison(measured_at=T, window="1s", variants=(VariantResult(version="1", variant="A"),))


def test_the_status_model_is_the_rollout_state_and_its_schema_has_no_defaults():
    assert issubclass(ModelDeploymentStatus, RolloutState)
    schema = structural_schema(ModelDeploymentStatus)
    assert "reason" not in schema["properties"]
    defaults = [path for path, node in walk(schema) if "default" in node]
    assert [path for path in defaults if path.split(".")[0].split("[")[0] in STATUS_FIELDS] == []
