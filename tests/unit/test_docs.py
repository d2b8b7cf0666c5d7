"""The docs keep up with the code: every transition reason and every exported metric is documented."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

import prometheus_client

import slipway
from slipway.rollout.phases import TRANSITIONS
from slipway_serving import metrics as serving_metrics
from slipway_serving.drift import DriftReport

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_transition_reason_is_in_the_rollouts_doc():
    text = (DOCS / "rollouts.md").read_text() + (DOCS / "rollback.md").read_text()
    missing = sorted({t.reason for t in TRANSITIONS if t.reason not in text})
    assert not missing, f"docs/rollouts.md does not mention: {missing}"


def _exported_metric_names() -> set[str]:
    """Every slipway_* family the operator's modules and the serving runtime register, as on the wire."""
    for module in pkgutil.walk_packages(slipway.__path__, "slipway."):
        importlib.import_module(module.name)
    names = set()
    for family in prometheus_client.REGISTRY.collect():
        if family.name.startswith("slipway_"):
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    report = DriftReport(feature_psi=(0.1, 0.3), score=0.2, samples=100)
    collector = serving_metrics.DriftCollector("m", "1", ("a", "b"), lambda: report, lambda: 100)
    for family in collector.collect():
        names.add(family.name)
    return names


def test_every_exported_metric_is_in_the_metrics_doc():
    names = _exported_metric_names()
    assert {"slipway_rollouts_total", "slipway_requests_total", "slipway_model_drift_score"} <= names
    text = (DOCS / "metrics.md").read_text()
    missing = sorted(n for n in names if f"`{n}`" not in text)
    assert not missing, f"docs/metrics.md does not list: {missing}"
