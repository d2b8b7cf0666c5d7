"""Job builder: single-pod and Indexed Jobs against golden YAML (SLIPWAY_UPDATE_GOLDEN=1 rewrites), env per pod."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.api.trainingrun import TrainingRun
from slipway.builders.job import (
    CONTAINER,
    LABEL_TRAININGRUN,
    RunTarget,
    build_children,
    build_job,
    build_service,
    experiment_name,
)
from slipway_training.launch import resolve_env
from slipway_training.topology import tf_topology

GOLDEN = Path(__file__).parent / "golden"
RUN = RunTarget(tracking_uri="http://mlflow.ml:5000", run_id="0123456789abcdef0123456789abcdef", experiment="digits")


def tr(**spec: Any) -> TrainingRun:
    base: dict[str, Any] = {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "TrainingRun",
        "metadata": {"name": "digits", "namespace": "ml", "uid": "5a1c2d3e-0000-4000-8000-000000000007"},
        "spec": {"framework": "pytorch", "entrypoint": "digits_cnn", **spec},
    }
    return TrainingRun.model_validate(base)


def check_golden(name: str, manifests: list[dict[str, Any]]) -> None:
    path = GOLDEN / f"{name}.yaml"
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    if os.environ.get("SLIPWAY_UPDATE_GOLDEN") == "1":
        path.write_text(text, encoding="utf-8")
    assert path.exists(), f"missing golden {path.name}: run with SLIPWAY_UPDATE_GOLDEN=1"
    assert list(yaml.safe_load_all(path.read_text(encoding="utf-8"))) == manifests, f"{path.name} differs"


def container(job: dict[str, Any]) -> dict[str, Any]:
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["name"] == CONTAINER
    return c  # type: ignore[no-any-return]


def test_single_pytorch_job():
    obj = tr(
        params={"epochs": "5", "lr": "0.001", "batchSize": "64"},
        resources={"requests": {"cpu": "1", "memory": "1Gi"}, "limits": {"memory": "2Gi"}},
        env=[{"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"}, {"name": "MLFLOW_RUN_ID", "value": "not-yours"}],
        deadlineSeconds=3600,
        register={"model": "digits-cnn", "gates": [{"metric": "accuracy", "min": 0.95}], "alias": "candidate"},
    )
    check_golden("job-pytorch-single", build_children(obj, RUN))


def test_distributed_pytorch_job_on_gpus():
    obj = tr(
        workers=4,
        image="ghcr.io/slipway-dev/slipway-training:0.1.0-cuda",
        params={"epochs": "20"},
        resources={"requests": {"cpu": "4", "nvidia.com/gpu": 2}, "limits": {"nvidia.com/gpu": 2}},
        nodeSelector={"nvidia.com/gpu.present": "true"},
        backoffLimit=2,
        deadlineSeconds=14400,
    )
    check_golden("job-pytorch-distributed", build_children(obj, RUN))


def test_single_tensorflow_job():
    obj = tr(framework="tensorflow", entrypoint="digits_keras", params={"epochs": "10"})
    check_golden("job-tensorflow-single", build_children(obj, RUN))


def test_distributed_tensorflow_job():
    obj = tr(framework="tensorflow", entrypoint="digits_keras", workers=3, params={"epochs": "30"})
    check_golden("job-tensorflow-distributed", build_children(obj, RUN))


def test_custom_command_job():
    obj = tr(
        framework="custom",
        entrypoint=None,
        image="registry.example.com/ml/churn-trainer:2.3.1",
        command=["python", "-m", "churn.train"],
        args=["--data", "s3://ml-data/churn/"],
    )
    check_golden("job-custom", build_children(obj, RUN))


def test_single_worker_has_no_service_and_plain_command():
    obj = tr()
    assert build_service(obj) is None
    job = build_job(obj, RUN)
    assert "completionMode" not in job["spec"] and "successPolicy" not in job["spec"]
    assert container(job)["command"] == ["python", "-m", "slipway_training.digits_cnn"]
    assert job["spec"]["template"]["metadata"]["labels"][LABEL_TRAININGRUN] == "digits"


def test_torchrun_env_resolves_per_pod():
    job = build_job(tr(workers=3), RUN)
    c = container(job)
    assert c["command"][:5] == ["python", "-m", "torch.distributed.run", "--module", "slipway_training.digits_cnn"]
    for index in range(3):
        env = resolve_env(c["env"], index)
        assert env["PET_NODE_RANK"] == str(index)
        assert env["PET_NNODES"] == "3"
        assert env["PET_MASTER_ADDR"] == "digits-0.digits"
        assert env["MLFLOW_RUN_ID"] == RUN.run_id
    assert job["spec"]["template"]["spec"]["subdomain"] == "digits"


def test_tf_config_resolves_per_pod():
    c = container(build_job(tr(framework="tensorflow", entrypoint="digits_keras", workers=2), RUN))
    for index in range(2):
        conf = json.loads(resolve_env(c["env"], index)["TF_CONFIG"])
        assert conf["cluster"]["worker"] == ["digits-0.digits:2222", "digits-1.digits:2222"]
        assert tf_topology(resolve_env(c["env"], index)).rank == index


def test_operator_env_wins_over_users():
    obj = tr(env=[{"name": "MLFLOW_RUN_ID", "value": "x"}, {"name": "EXTRA", "value": "1"}])
    env = resolve_env(container(build_job(obj, RUN))["env"])
    assert env["MLFLOW_RUN_ID"] == RUN.run_id and env["EXTRA"] == "1"


def test_gpu_toleration_is_not_duplicated():
    obj = tr(
        resources={"limits": {"nvidia.com/gpu": 1}},
        tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    )
    tolerations = build_job(obj, RUN)["spec"]["template"]["spec"]["tolerations"]
    assert tolerations == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


@pytest.mark.parametrize(("experiment", "want"), [("digits", "digits"), (None, "ml")])
def test_experiment_defaults_to_the_namespace(experiment, want):
    assert experiment_name(tr(experiment=experiment)) == want
