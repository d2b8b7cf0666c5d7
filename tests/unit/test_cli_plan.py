"""`slipway plan`'s pure part: the traffic each step leaves and the children a plan lists."""

from __future__ import annotations

from slipway.api.modeldeployment import ModelDeployment
from slipway.cli.plan import plan, traffic_steps


def md(strategy: dict) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"name": "digits", "track": {"alias": "champion"}}, "strategy": strategy,
                 "gateway": {"parentRefs": [{"name": "gw"}]}},
    })  # fmt: skip


def test_canary_steps_carry_the_split():
    m = md({"canary": {"steps": [{"setWeight": 10}, {"pause": {"duration": "1m"}}, {"setWeight": 50}, {"pause": {}}]}})
    assert traffic_steps(m, "1", "2") == [
        ("0: setWeight 10 (once v2 is ready)", "v1 90% · v2 10%"),
        ("1: pause 1m", "v1 90% · v2 10%"),
        ("2: setWeight 50 (once v2 is ready)", "v1 50% · v2 50%"),
        ("3: pause until promoted", "v1 50% · v2 50%"),
        ("promote", "v2 100% (v1 kept for the scale-down delay)"),
    ]


def test_blue_green_switches_in_one_write():
    steps = traffic_steps(md({"blueGreen": {"scaleDownDelaySeconds": 60}}), "1", "2")
    assert steps[0] == ("preview v2 at full size", "v1 100% · v2 0%")
    assert steps[1] == ("switch when promoted, in one route write", "v2 100%")


def test_approval_steps_name_the_tag_and_whether_it_is_there():
    m = md({"canary": {"steps": [
        {"setWeight": 10},
        {"pause": {"untilApproved": {"tag": "approved_by"}}},
        {"pause": {"untilApproved": {"tag": "validation_status", "value": "approved"}}},
    ]}})  # fmt: skip
    steps = [what for what, _ in traffic_steps(m, "1", "2", {"approved_by": "alice"})]
    assert (
        steps[1] == "1: pause approval (MLflow tag approved_by set): already approved by alice (tag approved_by on v2)"
    )
    assert steps[2] == "2: pause until approved (MLflow tag validation_status=approved on v2) or promoted"
    bg = [what for what, _ in traffic_steps(md({"blueGreen": {"approval": {"tag": "approved_by"}}}), "1", "2")]
    assert "wait until approved (MLflow tag approved_by set on v2) or promoted" in bg
    assert "switch when approved or promoted, in one route write" in bg
    ab = md({"abTest": {"weight": 50, "duration": "1h", "approval": {"tag": "validation_status", "value": "ok"}}})
    assert traffic_steps(ab, "1", "2")[-1][0] == (
        "compare, then wait until approved (MLflow tag validation_status=ok on v2) or promoted (B), or abort (A)"
    )


def test_first_version_and_children():
    result = plan(md({"canary": {"steps": [{"setWeight": 50}]}}), None, None, "1", "", {"1": "s3://m/1"})
    assert result.traffic == [("first version", "v1 100%")]
    assert [(c["kind"], c["metadata"]["name"]) for c in result.children] == [
        ("InferenceService", "digits-v1"),
        ("HorizontalPodAutoscaler", "digits-v1"),
        ("HTTPRoute", "digits"),
    ]
    route = result.children[-1]
    assert route["spec"]["rules"][0]["backendRefs"][0]["weight"] == 100


def test_invalid_or_unresolved_plans_nothing():
    assert plan(md({"canary": {}}), "nope", None, "1", "", {}).children == []
    assert plan(md({"canary": {}}), None, None, None, "waiting", {}).waiting == "waiting"
