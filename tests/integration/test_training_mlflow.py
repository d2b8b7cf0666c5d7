"""The training entry points, run as processes the way a Job's pod runs them, against a real MLflow.

Each entry point trains for real (a few epochs, one CPU thread) into a run the test creates
first, as the operator does, with its parameters in ``SLIPWAY_PARAM_*`` env vars. Then the test
reads back what the reconciler and the serving runtime rely on: params, per-epoch history,
final metrics, the model (loaded with ``mlflow.pyfunc``), ``baseline.json`` next to it, the
reports, the dataset input, and reproducibility across two runs with the same seed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
ENTRYPOINTS = ["digits_cnn", "digits_keras"]
EPOCHS = 4
ACCURACY_MIN = 0.9
EPOCH_METRICS = ["train_loss", "train_accuracy", "val_loss", "val_accuracy"]
TIMEOUT = 300
PRELOGGED = {"lr": "3e-3", "epochs": str(EPOCHS)}  # lr: the default 0.003, spelt differently


@dataclass
class Trained:
    run_id: str
    experiment_id: str
    seconds: float
    log: str


def _env(mlflow_uri: str, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("SLIPWAY_PARAM_", "MLFLOW_", "TF_CONFIG", "WORLD_SIZE", "RANK"))
    }
    path = str(REPO / "training-jobs")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (path, env.get("PYTHONPATH")) if p)
    env.update(MLFLOW_TRACKING_URI=mlflow_uri, SLIPWAY_PARAM_EPOCHS=str(EPOCHS), **extra)
    return env


def _run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    start = time.monotonic()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    elapsed = time.monotonic() - start
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{output[-4000:]}"
    return elapsed, output


def _new_run(client, experiment_name: str) -> tuple[str, str]:
    """Create the run first, as the operator does, so that its id can be injected."""
    exp = client.get_experiment_by_name(experiment_name)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment_name)
    return client.create_run(exp_id, run_name="test").info.run_id, exp_id


def _train(mlflow_uri: str, entrypoint: str, experiment: str, prelogged: dict[str, str]) -> Trained:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_uri)
    run_id, exp_id = _new_run(client, experiment)
    for key, value in prelogged.items():  # as an operator might, in its own spelling
        client.log_param(run_id, key, value)
    env = _env(mlflow_uri, MLFLOW_RUN_ID=run_id)
    seconds, log = _run([sys.executable, "-m", f"slipway_training.{entrypoint}"], env)
    print(f"{entrypoint}: trained and logged in {seconds:.1f}s")
    return Trained(run_id, exp_id, seconds, log)


@pytest.fixture(scope="module")
def client(mlflow_uri):
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    return MlflowClient(mlflow_uri)


@pytest.fixture(scope="module")
def trained(mlflow_uri) -> dict[str, list[Trained]]:
    """Two runs of each entry point with the same (default) seed; the first has params already."""
    experiment = f"training-tests-{uuid.uuid4().hex[:8]}"
    return {e: [_train(mlflow_uri, e, experiment, PRELOGGED if i == 0 else {}) for i in range(2)] for e in ENTRYPOINTS}


@pytest.fixture(params=ENTRYPOINTS)
def entrypoint(request) -> str:
    return request.param


def test_training_stays_fast(trained, entrypoint):
    for t in trained[entrypoint]:
        assert t.seconds < 120, f"{entrypoint} took {t.seconds:.0f}s"


def test_run_has_params_and_finished(client, trained, entrypoint):
    run = client.get_run(trained[entrypoint][0].run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["epochs"] == str(EPOCHS)  # from SLIPWAY_PARAM_EPOCHS
    assert params["seed"] == "0"
    assert params["lr"] == "3e-3"  # a param the run already had is kept, not a crash
    assert params["entrypoint"] == entrypoint
    frameworks = {"digits_cnn": "pytorch", "digits_keras": "tensorflow"}
    assert params["framework"] == frameworks[entrypoint]
    assert params["world_size"] == "1"
    assert {"lr", "batch_size", "hidden_size", "threads", "split_seed"} <= set(params)


def test_per_epoch_history(client, trained, entrypoint):
    run_id = trained[entrypoint][0].run_id
    for key in EPOCH_METRICS:
        history = client.get_metric_history(run_id, key)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, EPOCHS + 1))
    val_loss = [m.value for m in sorted(client.get_metric_history(run_id, "val_loss"), key=lambda m: m.step)]
    assert val_loss[-1] < val_loss[0]


def test_final_metrics(client, trained, entrypoint):
    metrics = client.get_run(trained[entrypoint][0].run_id).data.metrics
    assert metrics["accuracy"] > ACCURACY_MIN
    assert metrics["f1_macro"] > ACCURACY_MIN
    assert 0 < metrics["loss"] < 0.5
    assert len(client.get_metric_history(trained[entrypoint][0].run_id, "accuracy")) == 1


def test_model_loads_with_pyfunc_and_predicts(client, trained, entrypoint):
    import mlflow
    from sklearn.datasets import load_digits

    run = client.get_run(trained[entrypoint][0].run_id)
    model = mlflow.pyfunc.load_model(run.data.tags["slipway.model_uri"])
    spec = model.metadata.signature
    assert json.loads(spec.inputs.to_json()) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 64]}}
    ]
    assert json.loads(spec.outputs.to_json()) == [
        {"type": "tensor", "tensor-spec": {"dtype": "float32", "shape": [-1, 10]}}
    ]
    bunch = load_digits()
    x = bunch.data.astype(np.float32)
    for n in (1, 3, 400):
        probs = np.asarray(model.predict(x[:n]))
        assert probs.shape == (n, 10)
        assert np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    accuracy = float(np.mean(np.asarray(model.predict(x)).argmax(1) == bunch.target))
    assert accuracy > ACCURACY_MIN


def test_baseline_next_to_the_model(client, trained, entrypoint, tmp_path):
    import mlflow

    from slipway_training import baseline as bl

    run = client.get_run(trained[entrypoint][0].run_id)
    model_id = run.data.tags["slipway.model_id"]
    names = {a.path for a in client.list_logged_model_artifacts(model_id)}
    assert {"MLmodel", "baseline.json"} <= names
    root = mlflow.artifacts.download_artifacts(f"{run.data.tags['slipway.model_uri']}", dst_path=str(tmp_path))
    doc = bl.loads((Path(root) / "baseline.json").read_text())
    assert doc["n"] == 1257
    assert doc["n_features"] == 64
    assert doc["input"] == {"dtype": "float32", "shape": [-1, 64]}
    assert doc["dataset"]["digest"] == run.data.params["dataset_digest"]
    assert all(len(f["edges"]) == 9 and sum(f["counts"]) == 1257 for f in doc["features"])


def test_reports(client, trained, entrypoint, tmp_path):
    import mlflow

    run_id = trained[entrypoint][0].run_id
    assert {a.path for a in client.list_artifacts(run_id, "reports")} == {
        "reports/classification_report.json",
        "reports/confusion_matrix.png",
    }
    local = Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="reports", dst_path=str(tmp_path)))
    report = json.loads((local / "classification_report.json").read_text())
    assert set(report["classes"]) == {str(c) for c in range(10)}
    assert sum(c["support"] for c in report["classes"].values()) == report["n"] == 360
    assert report["accuracy"] == client.get_run(run_id).data.metrics["accuracy"]
    assert (local / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_dataset_input(client, trained, entrypoint):
    run = client.get_run(trained[entrypoint][0].run_id)
    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "sklearn-digits"
    assert inp.dataset.digest == run.data.params["dataset_digest"] == run.data.tags["slipway.dataset.digest"]
    assert inp.dataset.source_type == "sklearn"
    assert json.loads(inp.dataset.source)["loader"] == "sklearn.datasets.load_digits"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"


def test_same_seed_same_metrics(client, trained, entrypoint):
    first, second = (client.get_run(t.run_id) for t in trained[entrypoint])
    assert first.info.run_id != second.info.run_id
    assert first.data.metrics == second.data.metrics
    for key in EPOCH_METRICS:
        a, b = (
            [m.value for m in sorted(client.get_metric_history(r.info.run_id, key), key=lambda m: m.step)]
            for r in (first, second)
        )
        assert a == b, key


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_torchrun_two_processes_log_one_run(client, mlflow_uri):
    """``torchrun --nproc-per-node 2``: DDP over gloo on CPU, only rank 0 logs, into one run."""
    experiment = f"training-ddp-{uuid.uuid4().hex[:8]}"
    run_id, exp_id = _new_run(client, experiment)
    env = _env(mlflow_uri, MLFLOW_RUN_ID=run_id, MLFLOW_EXPERIMENT_NAME=experiment)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-addr",
        "127.0.0.1",
        "--master-port",
        str(_free_port()),
        "-m",
        "slipway_training.digits_cnn",
    ]
    seconds, log = _run(cmd, env)
    print(f"torchrun x2: trained and logged in {seconds:.1f}s")
    assert "[rank 0] INFO slipway_training.tracking: logging to MLflow run" in log
    assert "[rank 1] INFO slipway_training.tracking" not in log
    runs = client.search_runs([exp_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["accuracy"] > ACCURACY_MIN
    for key in EPOCH_METRICS:
        assert len(client.get_metric_history(run_id, key)) == EPOCHS
    assert len(client.search_logged_models([exp_id])) == 1


def test_multi_worker_mirrored_two_workers_log_one_run(client, mlflow_uri):
    """Two Keras workers with one ``TF_CONFIG`` cluster train together; only the chief logs."""
    experiment = f"training-mwms-{uuid.uuid4().hex[:8]}"
    run_id, exp_id = _new_run(client, experiment)
    workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = _env(mlflow_uri, MLFLOW_RUN_ID=run_id, MLFLOW_EXPERIMENT_NAME=experiment, TF_CONFIG=json.dumps(tf_config))
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "slipway_training.digits_keras"],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    start = time.monotonic()
    try:
        outputs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    print(f"MultiWorkerMirroredStrategy x2: trained and logged in {time.monotonic() - start:.1f}s")
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-4000:]
    assert "slipway_training.tracking" not in outputs[1]  # the non-chief never logs
    runs = client.search_runs([exp_id])
    assert [r.info.run_id for r in runs] == [run_id]
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["world_size"] == "2"
    assert run.data.metrics["accuracy"] > ACCURACY_MIN
    for key in EPOCH_METRICS:
        assert len(client.get_metric_history(run_id, key)) == EPOCHS
    assert len(client.search_logged_models([exp_id])) == 1
