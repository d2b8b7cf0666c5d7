"""The A/B comparison carries each version's label-free accuracy estimate, through status and back."""

from __future__ import annotations

from datetime import UTC, datetime

from slipway.api.modeldeployment import ModelDeploymentStatus
from slipway.rollout.comparison import SCALAR_QUERIES, Comparison, VariantResult, summary


def test_the_comparison_queries_the_estimate_per_version():
    query = SCALAR_QUERIES["estimated_accuracy"]
    assert "slipway_estimated_accuracy{" in query
    assert 'version="{{version}}"' in query and "[{{window}}]" in query


def test_the_estimate_is_in_status_and_the_summary():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a = VariantResult(version="1", variant="A", requests=100, estimated_accuracy=0.97)
    b = VariantResult(version="2", variant="B", requests=100, estimated_accuracy=0.81234567)
    c = Comparison(measured_at=now, window="60s", variants=(a, b), metric=None, winner=None, message="no criterion")
    status = c.model_dump(mode="json", by_alias=True)
    assert [v.get("estimatedAccuracy") for v in status["variants"]] == [0.97, 0.812346]
    ModelDeploymentStatus.model_validate({"comparison": status})  # the CRD's schema has the field
    back = Comparison.model_validate(status)
    assert back.b.estimated_accuracy == 0.812346
    assert "estimated accuracy 97.00%" in summary(c) and "estimated accuracy 81.23%" in summary(c)
