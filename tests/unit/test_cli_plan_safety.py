"""`slipway plan` shows the requirements' verdict and a canary budget's split."""

from __future__ import annotations

from typing import Any

from slipway.api.modeldeployment import ModelDeployment
from slipway.cli.plan import plan
from slipway.rollout.requirements import Failure, Verdict


def md(canary: dict[str, Any]) -> ModelDeployment:
    return ModelDeployment.model_validate({
        "metadata": {"name": "digits", "namespace": "ml", "uid": "u"},
        "spec": {"model": {"name": "digits", "track": {"alias": "champion"}},
                 "serving": {"resources": {"limits": {"nvidia.com/gpu": 1}}},
                 "autoscaling": {"minReplicas": 4, "maxReplicas": 4},
                 "strategy": {"canary": canary}, "gateway": {"parentRefs": [{"name": "gw"}]}},
    })  # fmt: skip


def test_plan_shows_the_budget_split_per_weight():
    m = md({"steps": [{"setWeight": 25}, {"setWeight": 50}, {"setWeight": 100}], "budget": {"gpus": 4}})
    result = plan(m, None, "1", "2", "", {"1": "s3://m/1", "2": "s3://m/2"})
    assert result.budget == [
        ("now", "v1 4 (of 4)"),
        ("weight 0%", "v1 3 · v2 1 (of 4)"),
        ("weight 25%", "v1 3 · v2 1 (of 4)"),
        ("weight 50%", "v1 2 · v2 2 (of 4)"),
        ("weight 100%", "v1 1 · v2 3 (of 4)"),
        ("promoted", "v2 4 (of 4)"),
        ("rollback", "v1 4 (of 4); v1 first, v2 removed"),
    ]
    assert plan(md({"steps": [{"setWeight": 50}]}), None, "1", "2", "", {}).budget == []


def test_plan_shows_the_requirements_verdict():
    m = md({"steps": [{"setWeight": 50}]})
    failing = Verdict("2", (Failure("tags.validation_status", "tag validation_status is missing (want approved)"),))
    result = plan(m, None, "1", "2", "", {}, failing)
    assert not result.requirements_met
    assert result.requirements == "version 2 is not rolled out: tag validation_status is missing (want approved)"
    assert plan(m, None, "1", "2", "", {}, Verdict("2")).requirements_met
    assert plan(m, None, "1", "2", "", {}).requirements is None
