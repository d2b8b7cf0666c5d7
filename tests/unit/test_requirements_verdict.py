"""Promotion requirements: each requirement judged on its own, the schema's rules, and status and events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from slipway.api.modeldeployment import ModelDeployment
from slipway.api.requirements import Requirements
from slipway.reconcilers.requirements import CONDITION, held_version, record
from slipway.rollout.requirements import Verdict, VersionFacts, evaluate
from slipway.rollout.state import RolloutState

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def req(**fields: Any) -> Requirements:
    return Requirements.model_validate(fields)


def facts(**fields: Any) -> VersionFacts:
    return VersionFacts(version="2", **fields)


def test_no_requirements_always_met():
    assert evaluate(None, facts(), NOW).met
    assert evaluate(req(), facts(), NOW).met


@pytest.mark.parametrize(
    ("metrics", "failed"),
    [
        ({"accuracy": 0.98}, None),
        ({"accuracy": 0.97}, None),  # inclusive
        ({"accuracy": 0.96}, "metric accuracy=0.96 < min 0.97"),
        ({}, "metric accuracy was not logged by the version's run"),
        ({"accuracy": float("nan")}, "metric accuracy was not logged by the version's run"),
    ],
)
def test_metric_requirement(metrics: dict[str, float], failed: str | None):
    verdict = evaluate(req(metrics=[{"metric": "accuracy", "min": 0.97}]), facts(metrics=metrics), NOW)
    assert [f.message for f in verdict.failures] == ([failed] if failed else [])
    if failed:
        assert verdict.failures[0].requirement == "metrics.accuracy"


def test_metric_requirement_max():
    r = req(metrics=[{"metric": "loss", "max": 0.1}])
    assert evaluate(r, facts(metrics={"loss": 0.05}), NOW).met
    assert evaluate(r, facts(metrics={"loss": 0.2}), NOW).failures[0].message == "metric loss=0.2 > max 0.1"


@pytest.mark.parametrize(
    ("tags", "failed"),
    [
        ({"validation_status": "approved"}, None),
        ({}, "tag validation_status is missing (want approved)"),
        ({"validation_status": "pending"}, "tag validation_status is 'pending', not 'approved'"),
    ],
)
def test_tag_equal_requirement(tags: dict[str, str], failed: str | None):
    verdict = evaluate(req(tags=[{"key": "validation_status", "value": "approved"}]), facts(tags=tags), NOW)
    assert [f.message for f in verdict.failures] == ([failed] if failed else [])
    if failed:
        assert verdict.failures[0].requirement == "tags.validation_status"


def test_tag_present_requirement():
    r = req(tags=[{"key": "reviewed_by"}])
    assert evaluate(r, facts(tags={"reviewed_by": "ana"}), NOW).met
    assert evaluate(r, facts(), NOW).failures[0].message == "tag reviewed_by is missing"


@pytest.mark.parametrize(
    ("has", "failed"),
    [
        (True, None),
        (False, "the logged model has no input signature"),
        (None, "the logged model signature could not be read yet"),
    ],
)
def test_signature_requirement(has: bool | None, failed: str | None):
    verdict = evaluate(req(signature=True), facts(has_signature=has), NOW)
    assert [f.message for f in verdict.failures] == ([failed] if failed else [])
    assert evaluate(req(signature=False), facts(has_signature=False), NOW).met


@pytest.mark.parametrize(
    ("run", "passed", "failed"),
    [
        ("ml/train-7", True, None),
        (None, None, "the version was not registered by a TrainingRun"),
        ("ml/gone", None, "the version TrainingRun ml/gone that registered it is not found"),
        ("ml/train-7", False, "the version TrainingRun ml/train-7 did not pass its gates for it"),
    ],
)
def test_training_run_gate_requirement(run: str | None, passed: bool | None, failed: str | None):
    verdict = evaluate(req(trainingRunGate=True), facts(training_run=run, training_gates_passed=passed), NOW)
    assert [f.message for f in verdict.failures] == ([failed] if failed else [])


def test_min_age_requirement_and_when_to_look_again():
    r = req(minAge="1h")
    assert evaluate(r, facts(registered_at=NOW - timedelta(hours=2)), NOW).met
    young = evaluate(r, facts(registered_at=NOW - timedelta(minutes=50)), NOW)
    assert young.failures[0].requirement == "minAge"
    assert young.retry_after == pytest.approx(600)
    unknown = evaluate(r, facts(), NOW)
    assert unknown.failures[0].message == "the registration time is unknown" and unknown.retry_after is None


def test_every_failure_is_listed_in_the_message():
    r = req(metrics=[{"metric": "accuracy", "min": 0.97}], tags=[{"key": "validation_status", "value": "approved"}])
    verdict = evaluate(r, facts(metrics={"accuracy": 0.9}), NOW)
    assert [f.requirement for f in verdict.failures] == ["metrics.accuracy", "tags.validation_status"]
    assert verdict.message == (
        "version 2 is not rolled out: metric accuracy=0.9 < min 0.97; tag validation_status is missing (want approved)"
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"metrics": [{"metric": "accuracy"}]}, "set at least one of min or max"),
        ({"metrics": [{"metric": "a", "min": 1}, {"metric": "a", "max": 2}]}, "each metric at most once"),
        ({"tags": [{"key": "a"}, {"key": "a", "value": "x"}]}, "each key at most once"),
        ({"minAge": "soon"}, "String should match pattern"),
    ],
)
def test_the_schema_refuses_bad_requirements(fields: dict[str, Any], message: str):
    with pytest.raises(ValidationError, match=message):
        Requirements.model_validate(fields)


def test_requirements_on_a_model_deployment():
    md = ModelDeployment.model_validate(
        {
            "metadata": {"name": "digits", "namespace": "ml"},
            "spec": {
                "model": {"name": "digits", "track": {"alias": "champion"}},
                "requirements": {"tags": [{"key": "validation_status", "value": "approved"}], "minAge": "10m"},
            },
        }
    )
    assert md.spec.requirements is not None and md.spec.requirements.min_age == "10m"


def test_held_version_is_the_rollout_under_way_else_stable():
    assert held_version(RolloutState(phase="Succeeded", stable_version="1")) == "1"
    assert held_version(RolloutState(phase="Progressing", stable_version="1", canary_version="2")) == "2"
    assert held_version(RolloutState(phase="RolledBack", stable_version="1", canary_version=None)) == "1"
    assert held_version(RolloutState()) is None


def test_status_and_events_follow_the_verdict():
    failing = Verdict("2", evaluate(req(tags=[{"key": "ok"}]), facts(), NOW).failures)
    status: dict[str, Any] = {"conditions": []}
    events = record({}, status, failing, 3)
    (cond,) = [c for c in status["conditions"] if c["type"] == CONDITION]
    assert cond["status"] == "False" and cond["reason"] == "RequirementNotMet"
    assert "tag ok is missing" in cond["message"] and "tag ok is missing" in status["message"]
    assert [e.reason for e in events] == ["RequirementsNotMet"]
    # The same verdict again: no new event.
    again: dict[str, Any] = {"conditions": []}
    assert record(status, again, failing, 3) == []
    # Met: the condition flips, one Normal event.
    met: dict[str, Any] = {"conditions": []}
    events = record(again, met, Verdict("2"), 3)
    assert [c["status"] for c in met["conditions"] if c["type"] == CONDITION] == ["True"]
    assert [(e.reason, e.type) for e in events] == [("RequirementsMet", "Normal")]
    # Requirements removed from the spec: the condition goes.
    gone = {"conditions": met["conditions"]}
    assert record(met, gone, None, 4) == [] and not any(c["type"] == CONDITION for c in gone["conditions"])
