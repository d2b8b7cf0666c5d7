"""The A/B comparison carries each version's label-free accuracy estimate, through status and back."""

from __future__ import annotations

from datetime import UTC, datetime

from slipway.api.modeldeployment import ModelDeploymentStatus
from slipway.reconcilers.rollout_status import _comparison, comparison_to_status
from slipway.rollout.comparison import SCALAR_QUERIES, Comparison, VariantResult, summary


def test_the_comparison_queries_the_estimate_per_version():
    query = SCALAR_QUERIES["estimated_accuracy"]
    assert "slipway_estimated_accuracy{" in query
    assert 'version="{{version}}"' in query and "[{{window}}]" in query


def test_the_estimate_is_in_status_and_the_summary():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a = VariantResult("1", "A", requests=100, estimated_accuracy=0.97)
    b = VariantResult("2", "B", requests=100, estimated_accuracy=0.81234567)
    c = Comparison(now, "60s", a, b, None, None, "no criterion")
    status = comparison_to_status(c)
    assert status is not None
    assert [v.get("estimatedAccuracy") for v in status["variants"]] == [0.97, 0.812346]
    ModelDeploymentStatus.model_validate({"comparison": status})  # the CRD's schema has the field
    back = _comparison(status)
    assert back is not None and back.b.estimated_accuracy == 0.812346
    assert "estimated accuracy 97.00%" in summary(c) and "estimated accuracy 81.23%" in summary(c)
