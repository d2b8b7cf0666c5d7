"""The `slipway` CLI against the real API server: submit, inspect and steer, with documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from slipway.cli.main import app

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def cli(testbed, monkeypatch, slipway_crds):
    monkeypatch.setenv("KUBECONFIG", str(testbed.kubeconfig))
    runner = CliRunner()

    def run(*args: str):
        return runner.invoke(app, list(args))

    return run


def test_train_submits_a_trainingrun_and_refuses_bad_flags(cli, kubectl, namespace):
    res = cli(
        "train",
        "digits-1",
        "--model",
        "digits-cnn",
        "-n",
        namespace,
        "-p",
        "epochs=3",
        "-g",
        "accuracy>=0.9",
        "-g",
        "loss<=0.3",
        "--alias",
        "candidate",
    )
    assert res.exit_code == 0, res.output
    tr = json.loads(kubectl("get", "trainingrun", "digits-1", "-o", "json").stdout)
    assert tr["spec"]["register"]["gates"] == [{"metric": "accuracy", "min": 0.9}, {"metric": "loss", "max": 0.3}]
    assert tr["spec"]["params"] == {"epochs": "3"}

    bad_gate = cli("train", "x", "--model", "m", "-n", namespace, "-g", "accuracy>>0.9")
    assert bad_gate.exit_code == 2 and "--gate" in bad_gate.output
    bad_name = cli("train", "y", "--model", "bad model!", "-n", namespace)
    assert bad_name.exit_code == 2 and "spec.register.model" in bad_name.output


def test_status_and_actions_on_a_modeldeployment(cli, kubectl, namespace):
    body = yaml.safe_load((EXAMPLES / "modeldeployment-canary.yaml").read_text())
    body["metadata"]["namespace"] = namespace
    kubectl("apply", "-f", "-", input=json.dumps(body))
    name = body["metadata"]["name"]

    table = cli("status", "-n", namespace)
    assert table.exit_code == 0 and name in table.output and body["spec"]["model"]["name"] in table.output
    one = cli("status", name, "-n", namespace)
    assert one.exit_code == 0 and "Timeline" in one.output and "Conditions" in one.output

    for command, action in (("promote", "promote"), ("abort", "abort"), ("retry", "retry"), ("pause", "pause")):
        res = cli(command, name, "-n", namespace, "--wait", "0")
        assert res.exit_code == 0, res.output
        got = json.loads(kubectl("get", "modeldeployment", name, "-o", "json").stdout)
        assert got["metadata"]["annotations"]["ml.slipway.dev/action"] == action
    full = cli("promote", name, "--full", "-n", namespace, "--wait", "0")
    assert full.exit_code == 0
    got = json.loads(kubectl("get", "modeldeployment", name, "-o", "json").stdout)
    assert got["metadata"]["annotations"]["ml.slipway.dev/action"] == "promote-full"

    missing = cli("promote", "nope", "-n", namespace, "--wait", "0")
    assert missing.exit_code == 3 and 'modeldeployment "nope" not found' in missing.output
    assert cli("history", name, "-n", namespace).exit_code == 0


def test_cli_drives_a_rollout_and_prints_what_changed(cli, kubectl, namespace, testbed, tmp_path):
    from kubectl_scenario import (
        deployment,
        first_version_up,
        md_status,
        model_version,
        move_alias,
        predictor,
        stop_after_deleting_deployments,
    )
    from operator_process import OperatorProcess, wait_until

    proc = OperatorProcess(testbed.kubeconfig, namespace, tmp_path, testbed.prometheus_url).start()
    try:
        model_version(kubectl, "1", ["champion"])
        model_version(kubectl, "2", [])
        predictor(kubectl, "1")
        predictor(kubectl, "2")
        deployment(kubectl, {"canary": {"steps": [{"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}]}})
        first_version_up(kubectl)
        move_alias(kubectl, "1", "2")
        wait_until(lambda: md_status(kubectl).get("phase") == "Paused", what="paused at 20%")

        promoted = cli("promote", "digits", "-n", namespace, "--wait", "30")
        assert promoted.exit_code == 0, promoted.output
        assert "weight: 20% → 60%" in promoted.output, promoted.output

        aborted = cli("abort", "digits", "-n", namespace, "--wait", "30")
        assert aborted.exit_code == 0 and "blocked: v2" in aborted.output, aborted.output
        assert "→ RolledBack" in aborted.output or "→ RollingBack" in aborted.output, aborted.output

        retried = cli("retry", "digits", "-n", namespace, "--wait", "30")
        assert retried.exit_code == 0 and "unblocked: v2" in retried.output, retried.output
        status = cli("status", "digits", "-n", namespace)
        assert "RolledBack" in status.output or "Progressing" in status.output
    finally:
        stop_after_deleting_deployments(kubectl, proc)


def test_plan_shows_version_steps_and_children_without_doing_anything(cli, kubectl, namespace, tmp_path):
    from kubectl_scenario import model_version

    model_version(kubectl, "1", [])
    model_version(kubectl, "2", ["champion"])
    body = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits"},
        "spec": {
            "model": {"name": "digits", "track": {"alias": "champion"}},
            "strategy": {"canary": {"steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 75}]}},
        },
    }
    path = tmp_path / "md.yaml"
    path.write_text(yaml.safe_dump(body))
    res = cli("plan", str(path), "-n", namespace)
    assert res.exit_code == 0, res.output
    assert "create" in res.output and "tracked version: v2" in res.output
    assert "InferenceService" in res.output and "digits-v2" in res.output and "HTTPRoute" in res.output
    assert kubectl("get", "modeldeployment", "digits", check=False).returncode != 0, "plan must create nothing"
    assert kubectl("get", "inferenceservices", "-o", "name").stdout.strip() == ""

    body["spec"]["strategy"] = {"abTest": {"duration": "1h", "split": {"weight": 50}}}
    path.write_text(yaml.safe_dump(body))
    invalid = cli("plan", str(path), "-n", namespace)
    assert invalid.exit_code == 2, invalid.output

    body["spec"]["strategy"] = {"canary": {"steps": [{"setWeight": 120}]}}
    path.write_text(yaml.safe_dump(body))
    bad = cli("plan", str(path), "-n", namespace)
    assert bad.exit_code == 2 and ("setWeight" in bad.output or "set_weight" in bad.output), bad.output
