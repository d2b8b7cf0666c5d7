"""`helm template` of the chart, default and with every option on, against golden files (UPDATE_GOLDEN=1 rewrites)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
sys.path.insert(0, str(REPO / "hack"))

from bed import builds  # noqa: E402

CASES = {
    "chart-default": [],
    "chart-all-options": [
        "--set", "leaderElection.leaseName=ops-leader", "--set", "leaderElection.leaseNamespace=ops",
        "--set", "replicaCount=2", "--set", "watchNamespaces={ml,ml-staging}",
        "--set", "mlflow.credentialsSecret=mlflow-creds", "--set", "mlflow.webhookSecret=mlflow-webhook",
        "--set", "alertmanager.tokenSecret=am-token", "--set", "serviceMonitor.enabled=true",
        "--set", "prometheusRule.enabled=true", "--set", "dashboard.enabled=true",
        "--set", "analysis.secretAccess=true",
        "--set-json", "storage.allowedUriPrefixes=[\"s3://models/\",\"gs://ml/\"]",
        "--set-json", "tenancy=[{\"namespaces\":[\"team-a*\"],\"models\":[\"team-a.*\"],\"experiments\":[\"team-a\"]}]",
        "--set", "notifications.targets[0].name=ml-alerts", "--set", "notifications.targets[0].type=slack",
        "--set", "notifications.targets[0].urlSecretRef.name=slipway-notifications",
        "--set", "notifications.targets[0].urlSecretRef.key=slack-url",
        "--set-json", "notifications.events=[\"RolledBack\",\"TrainingFailed\"]",
    ],
}  # fmt: skip


@pytest.fixture(scope="module")
def helm() -> str:
    return builds.build().helm


@pytest.mark.parametrize("case", sorted(CASES))
def test_helm_template_matches_golden(helm: str, case: str) -> None:
    out = subprocess.run(
        [helm, "template", "slipway", str(REPO / "charts" / "slipway"), "--namespace", "slipway-system",
         "--kube-version", "1.34.4", *CASES[case]],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    golden = GOLDEN / f"{case}.yaml"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(out)
    assert out == golden.read_text(), f"helm template differs from {golden.name} (UPDATE_GOLDEN=1 to accept)"
