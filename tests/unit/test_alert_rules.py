"""The alert rules: generated files up to date, valid for promtool, and firing when (and only when) they should."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from slipway.monitoring import outputs, rules

REPO = Path(__file__).resolve().parents[2]


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool (Debian's prometheus package) is not installed; run hack/setup"
    return subprocess.run([exe, *args], capture_output=True, text=True, check=False, cwd=REPO)


def test_generated_files_are_up_to_date():
    for rel, text in outputs.files().items():
        assert (REPO / rel).read_text() == text, f"{rel} is stale: run hack/gen-monitoring"


def test_rule_file_is_valid():
    proc = promtool("check", "rules", outputs.RULE_FILE)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS: 3 rules found" in proc.stdout


def test_rules_fire_on_drift_and_errors_but_not_on_healthy_versions():
    proc = promtool("test", "rules", "tests/unit/promtool/slipway-rules.test.yml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_rule_keeps_the_labels_the_operator_matches_on():
    for rule in rules.rules():
        assert "namespace, modeldeployment, version" in rule.expr
        assert '"model_version"' in rule.expr


def test_chart_template_carries_the_same_rules():
    text = (REPO / outputs.PROMETHEUS_RULE).read_text()
    assert text.startswith("# Generated") and "{{- if .Values.prometheusRule.enabled }}" in text
    body = text.split("spec:\n", 1)[1].rsplit("{{- end }}", 1)[0]
    unescaped = body.replace('{{ "{{" }}', "{{").replace('{{ "}}" }}', "}}")
    assert yaml.safe_load(unescaped)["groups"] == rules.rule_groups()["groups"]
