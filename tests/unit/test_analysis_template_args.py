"""Analysis templates, web metrics, dry runs: argument rendering, resolution, the schema's twins, the verdict."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from jsonpath_ng.ext import parse
from pydantic import ValidationError

from slipway.api.analysis import AnalysisMetric, TemplateRef, WebHeader
from slipway.api.analysistemplate import AnalysisTemplateSpec
from slipway.api.modeldeployment import ModelDeploymentSpec
from slipway.clients.web import WebError, WebNoData, pick
from slipway.reconcilers.analysis_templates import STATUS_FIELD, Resolved, frozen_entries, record
from slipway.reconcilers.rollout_status import state_from_status, state_to_status
from slipway.rollout.analysis import AnalysisConfig, AnalysisState, Measurement, explain, fold, judge
from slipway.rollout.machine import analysis_config, next
from slipway.rollout.state import Observations, RolloutState
from slipway.rollout.templates import TemplateError, arg_values, expand, references, render, render_template

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
TEMPLATE = AnalysisTemplateSpec.model_validate(
    {
        "args": [{"name": "job"}, {"name": "quantile", "value": "0.99"}],
        "metrics": [
            {"name": "latency", "query": 'q{job="{{args.job}}",q="{{args.quantile}}",v="{{version}}"}', "max": 0.5},
            {
                "name": "score",
                "web": {
                    "url": "http://eval/{{args.job}}?v={{version}}",
                    "method": "POST",
                    "body": '{"job": "{{args.job}}"}',
                    "jsonPath": "$.score",
                },
                "min": 0.9,
            },
        ],
    }
)


def md_spec(strategy: dict[str, Any]) -> ModelDeploymentSpec:
    return ModelDeploymentSpec.model_validate(
        {"model": {"name": "digits", "track": {"alias": "champion"}}, "strategy": strategy}
    )


# --- arguments ---------------------------------------------------------------------------------


def test_render_fills_declared_args_and_leaves_the_rest():
    assert render("a{{args.x}}b{{args.y}}{{version}}", {"x": "1"}) == "a1b{{args.y}}{{version}}"


def test_arguments_take_defaults_and_the_reference_wins():
    ref = TemplateRef(name="t", args=[{"name": "job", "value": "api"}])  # type: ignore[list-item]
    assert arg_values(TEMPLATE, ref, "f") == {"job": "api", "quantile": "0.99"}
    ref = TemplateRef(name="t", args=[{"name": "job", "value": "a"}, {"name": "quantile", "value": "0.5"}])  # type: ignore[list-item]
    latency, score = render_template(TEMPLATE, ref, "f")
    assert latency.query == 'q{job="a",q="0.5",v="{{version}}"}'  # {{version}} is filled at each measurement
    assert score.web is not None
    assert (score.web.url, score.web.body) == ("http://eval/a?v={{version}}", '{"job": "a"}')


def test_a_missing_required_argument_names_the_field_and_the_argument():
    with pytest.raises(TemplateError, match=r"spec\.x\.templates\[0\]\.args: template t needs a value for job"):
        arg_values(TEMPLATE, TemplateRef(name="t"), "spec.x.templates[0]")


def test_an_unknown_argument_is_refused():
    ref = TemplateRef(name="t", args=[{"name": "job", "value": "a"}, {"name": "typo", "value": "b"}])  # type: ignore[list-item]
    with pytest.raises(TemplateError, match="typo not an argument of template t"):
        arg_values(TEMPLATE, ref, "f")


# --- where references are and how they expand -----------------------------------------------------


def test_references_are_found_in_every_analysis_of_every_strategy():
    ref = {"name": "t", "args": [{"name": "job", "value": "a"}]}
    canary = md_spec(
        {"canary": {"steps": [{"analysis": {"templates": [ref]}}], "analysis": {"templates": [ref, {"name": "u"}]}}}
    )
    assert [f for f, _, _ in references(canary)] == [
        "spec.strategy.canary.analysis.templates[0]",
        "spec.strategy.canary.analysis.templates[1]",
        "spec.strategy.canary.steps[0].analysis.templates[0]",
    ]
    shadow = {"duration": "1m", "analysis": {"templates": [ref]}}
    bg = md_spec({"blueGreen": {"prePromotionAnalysis": {"templates": [ref]}, "shadow": shadow}})
    assert [f for f, _, _ in references(bg)] == [
        "spec.strategy.blueGreen.prePromotionAnalysis.templates[0]",
        "spec.strategy.blueGreen.shadow.analysis.templates[0]",
    ]
    ab = md_spec({"abTest": {"weight": 10, "duration": "1m", "analysis": {"templates": [ref]}, "shadow": shadow}})
    assert [f for f, _, _ in references(ab)] == [
        "spec.strategy.abTest.analysis.templates[0]",
        "spec.strategy.abTest.shadow.analysis.templates[0]",
    ]


def test_expand_puts_template_metrics_after_inline_ones_and_the_machine_measures_them():
    inline = {"name": "errors", "query": "e", "max": 0.1}
    spec = md_spec(
        {
            "canary": {
                "steps": [{"setWeight": 10}, {"analysis": {}}],
                "analysis": {
                    "metrics": [inline],
                    "templates": [{"name": "t", "args": [{"name": "job", "value": "a"}]}],
                },
            }
        }
    )
    (field, _, ref), *_ = references(spec)
    out = expand(spec, {field: render_template(TEMPLATE, ref, field)})
    assert out.strategy.canary is not None and out.strategy.canary.analysis is not None
    assert out.strategy.canary.analysis.templates is None
    assert [m.name for m in out.strategy.canary.analysis.metrics or []] == ["errors", "latency", "score"]
    state = RolloutState(phase="Progressing", stable_version="1", canary_version="2", current_step=1)
    config = analysis_config(state, out)
    assert config is not None and [m.name for m in config.metrics] == ["errors", "latency", "score"]


def test_a_metric_name_from_two_sources_is_an_error_naming_the_analysis():
    spec = md_spec(
        {
            "canary": {
                "analysis": {
                    "metrics": [{"name": "latency", "query": "x", "max": 1}],
                    "templates": [{"name": "t", "args": [{"name": "job", "value": "a"}]}],
                }
            }
        }
    )
    (field, _, ref), *_ = references(spec)
    with pytest.raises(TemplateError, match=r"spec\.strategy\.canary\.analysis: metric latency comes from both"):
        expand(spec, {field: render_template(TEMPLATE, ref, field)})


# --- the freeze record -------------------------------------------------------------------------------


def test_the_record_belongs_to_one_rollout_and_goes_with_it():
    entry = {"field": "f", "ref": {"name": "t", "clusterScope": True}, "metrics": []}
    resolved = Resolved(md=None, entries=(entry,))  # type: ignore[arg-type]
    live = {"phase": "Progressing", "canaryVersion": "2", "rolloutStartedAt": "2026-12-06T12:00:00.000000Z"}
    rec = record(resolved, {}, live)
    assert rec is not None and rec["version"] == "2" and rec["templates"] == [entry]
    assert "keeps these metrics" in rec["message"]
    old = {**live, STATUS_FIELD: rec}
    assert frozen_entries(old) == [entry]
    assert frozen_entries({**old, "rolloutStartedAt": "2026-12-06T13:00:00.000000Z"}) == [], "another rollout"
    assert frozen_entries({**old, "phase": "Succeeded"}) == []
    assert record(resolved, old, {**live, "phase": "Promoting"}) is None, "the rollout ended: the record goes"


# --- the schema's Python twins (the same rules run as CEL in the API server) -----------------------------


def test_a_placeholder_without_a_declared_arg_is_refused():
    with pytest.raises(ValidationError, match="must be declared in args"):
        AnalysisTemplateSpec.model_validate({"metrics": [{"name": "a", "query": "x{{args.nope}}", "max": 1}]})


def test_inline_metrics_take_no_args():
    with pytest.raises(ValidationError, match="inline metrics take no"):
        md_spec({"canary": {"analysis": {"metrics": [{"name": "a", "query": "x{{args.job}}", "max": 1}]}}})


def test_a_credential_header_needs_a_secret():
    with pytest.raises(ValidationError, match="never a literal value"):
        WebHeader(name="Authorization", value="Bearer abc")
    assert WebHeader(name="Content-Type", value="application/json").value == "application/json"
    WebHeader.model_validate({"name": "X-Api-Key", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}})


def test_a_metric_has_exactly_one_provider_and_templates_are_named_once():
    with pytest.raises(ValidationError, match="exactly one of query or web"):
        AnalysisMetric.model_validate({"name": "a", "max": 1})
    with pytest.raises(ValidationError, match="name each template once"):
        md_spec({"canary": {"analysis": {"templates": [{"name": "t"}, {"name": "t"}]}}})
    md_spec({"canary": {"analysis": {"templates": [{"name": "t"}, {"name": "t", "clusterScope": True}]}}})


# --- web answers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("doc", "path", "want"),
    [({"score": 0.93}, "$.score", 0.93), ({"data": [{"v": "7"}]}, "$.data[0].v", 7.0), ({"a": {"b": 1}}, "a.b", 1.0)],
)
def test_the_json_path_selects_one_number(doc, path, want):
    assert pick(doc, parse(path), path) == want


@pytest.mark.parametrize(
    ("doc", "path", "error"),
    [
        ({"score": None}, "$.score", WebNoData),
        ({}, "$.score", WebNoData),
        ({"s": [1, 2]}, "$.s[*]", WebError),
        ({"s": "high"}, "$.s", WebError),
        ({"s": True}, "$.s", WebError),
        ({"s": {"x": 1}}, "$.s", WebError),
    ],
)
def test_no_number_is_no_data_or_an_error(doc, path, error):
    with pytest.raises(error) as info:
        pick(json.loads(json.dumps(doc)), parse(path), path)
    assert type(info.value) is error


# --- never Successful without evidence; dry runs never acted on -------------------------------------------------

METRIC = AnalysisMetric(name="errors", query="q", max=0.1)
DRY = AnalysisMetric(name="shadow-score", query="q", min=0.9, dry_run=True)
CONFIG = AnalysisConfig((METRIC,), timedelta(seconds=1), failure_limit=0, count=1)


@pytest.mark.parametrize("how", ["error", "no data", "mixed"])
def test_an_analysis_whose_every_measurement_errored_is_never_successful(how):
    state = AnalysisState()
    for i in range(200):
        at = T0 + timedelta(seconds=i)
        error = how == "error" or (how == "mixed" and i % 2 == 0)
        m = judge(METRIC, "2", None, at, error="connection refused" if error else None)
        state = fold(state, (m,), CONFIG)
        assert state.phase == "Inconclusive" and state.successful == 0
    assert fold(AnalysisState(), (), CONFIG).phase == "Inconclusive", "an empty round is no evidence"


def _machine_never_passes(strategy: dict[str, Any], step: int, mirror: int = 0) -> None:
    spec = md_spec(strategy)
    state = RolloutState(
        phase="Progressing",
        stable_version="1",
        canary_version="2",
        canary_weight=10 if "canary" in strategy else 0,
        mirror_percent=mirror,
        current_step=step,
        step_started_at=T0,
        rollout_started_at=T0,
    )
    for i in range(1, 120):
        now = T0 + timedelta(seconds=10 * i)
        config = analysis_config(state, spec)
        assert config is not None
        error = i % 3 != 0  # errors, and every third round no data
        round_ = tuple(judge(m, "2", None, now, error="boom" if error else None) for m in config.metrics)
        obs = Observations(now=now, tracked_version="2", ready_versions=frozenset({"1", "2"}), measurements=round_)
        decision = next(state, obs, spec)
        assert decision.transition is None, f"round {i}: {decision.transition}"
        assert decision.state.analysis is not None and decision.state.analysis.phase != "Successful"
        state = decision.state


def test_no_strategy_goes_on_or_promotes_on_errors_alone():
    analysis = {"interval": "1s", "count": 1, "metrics": [{"name": "errors", "query": "q", "max": 0.1}]}
    _machine_never_passes({"canary": {"steps": [{"setWeight": 10}, {"analysis": {}}], "analysis": analysis}}, 1)
    _machine_never_passes({"blueGreen": {"prePromotionAnalysis": analysis, "autoPromotionSeconds": 0}}, 1)
    shadow = {"percent": 50, "duration": "1s", "analysis": analysis}
    _machine_never_passes({"blueGreen": {"shadow": shadow, "autoPromotionSeconds": 0}}, 3, mirror=50)


def test_a_failing_dry_run_metric_neither_fails_nor_holds_the_analysis():
    config = AnalysisConfig((METRIC, DRY), timedelta(seconds=1), failure_limit=0, count=2)
    state = AnalysisState()
    for i in range(2):
        at = T0 + timedelta(seconds=i)
        state = fold(state, (judge(METRIC, "2", 0.01, at), judge(DRY, "2", 0.2, at)), config)
    assert state.phase == "Successful" and state.failed == 0
    dry = state.measurements[1]
    assert (dry.phase, dry.dry_run, dry.value) == ("Failed", True, 0.2)
    assert "shadow-score (dry run): 0.2 < min 0.9" in explain(state, config)
    errored = fold(AnalysisState(), (judge(METRIC, "2", 0.01, T0), judge(DRY, "2", None, T0, error="x")), config)
    assert errored.phase == "Running" and errored.successful == 1, "an erroring dry-run metric holds nothing"
    acted_error = fold(AnalysisState(), (judge(METRIC, "2", None, T0, error="x"), judge(DRY, "2", 1.0, T0)), config)
    assert acted_error.phase == "Inconclusive", "a passing dry-run metric is no evidence for the others"


def test_dry_run_survives_the_status_round_trip():
    m = Measurement(
        metric="shadow-score",
        version="2",
        value=0.2,
        phase="Failed",
        measured_at=T0,
        message="0.2 < min 0.9",
        dry_run=True,
    )
    state = RolloutState(
        phase="Progressing", canary_version="2", analysis=AnalysisState(phase="Running", measurements=(m,))
    )
    status = state_to_status(state)
    assert status["analysis"]["measurements"][0]["dryRun"] is True
    back = state_from_status(status)
    assert back.analysis is not None and back.analysis.measurements[0].dry_run


def test_a_running_rollout_resolves_from_its_record_without_reading_any_template():
    from slipway.api.modeldeployment import ModelDeployment
    from slipway.reconcilers.analysis_templates import resolve

    ref = {"name": "t", "clusterScope": True, "args": [{"name": "job", "value": "a"}]}
    body = {
        "metadata": {"name": "m", "namespace": "ns"},
        "spec": {
            "model": {"name": "digits", "track": {"alias": "champion"}},
            "strategy": {"canary": {"steps": [{"analysis": {}}], "analysis": {"templates": [ref]}}},
        },
    }
    md = ModelDeployment.model_validate(body)
    frozen = {"name": "latency", "query": 'q{job="a"}', "max": 0.5}  # the bound when the rollout started
    entry = {"field": "spec.strategy.canary.analysis.templates[0]", "ref": ref, "metrics": [frozen]}
    started = "2026-12-06T12:00:00.000000Z"
    old = {
        "phase": "Paused",
        "canaryVersion": "2",
        "rolloutStartedAt": started,
        STATUS_FIELD: {"version": "2", "rolloutStartedAt": started, "templates": [entry]},
    }
    out = resolve(None, md, old)  # type: ignore[arg-type]  # no client: any read would raise
    analysis = out.md.spec.strategy.canary.analysis  # type: ignore[union-attr]
    assert analysis is not None and [m.max for m in analysis.metrics or []] == [0.5]
    assert out.entries == (entry,)
    edited = {**ref, "args": [{"name": "job", "value": "b"}]}  # the spec's reference changed: read anew
    body["spec"]["strategy"]["canary"]["analysis"]["templates"] = [edited]
    with pytest.raises(AttributeError):
        resolve(None, ModelDeployment.model_validate(body), old)  # type: ignore[arg-type]
