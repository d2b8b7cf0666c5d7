"""The label-free accuracy estimate of a real ``python -m slipway_serving`` serving what training logs.

``python -m slipway_training.digits_cnn`` trains the PyTorch digits CNN and logs it into a local
MLflow store with ``baseline.json`` holding the validation split. The server loads the model
through MLflow (``runs:/`` … the logged model's URI), calibrates on that split at load and
exports ``slipway_validation_accuracy``. The held-out test split (never seen in training nor in
calibration) is then sent as it is and with Gaussian noise: each time the window holds exactly
that set, and ``slipway_estimated_accuracy`` must be within 0.05 of the accuracy the answers
really have against the labels, and fall when the accuracy falls.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "digits"
TOLERANCE = 0.05


@dataclass
class Served:
    url: str
    x_test: np.ndarray
    y_test: np.ndarray
    validation_rows: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf'^{name}\{{model="{MODEL}",version="1"\}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import mlflow

    from slipway_training.config import TrainConfig
    from slipway_training.data import load_digits

    tmp = tmp_path_factory.mktemp("accuracy")
    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLIPWAY_"))}
    paths = [str(REPO / "serving"), str(REPO / "training-jobs"), env.get("PYTHONPATH", "")]
    env.update(MLFLOW_TRACKING_URI=tracking_uri, MLFLOW_DISABLE_TELEMETRY="true", DO_NOT_TRACK="true",
               PYTHONPATH=os.pathsep.join(p for p in paths if p))  # fmt: skip
    train = subprocess.run(
        [sys.executable, "-m", "slipway_training.digits_cnn", "--epochs", "8", "--threads", "1"],
        cwd=tmp, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert train.returncode == 0, train.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    cfg = TrainConfig()
    digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)

    port = _free_port()
    log = tmp / "server.log"
    command = [sys.executable, "-m", "slipway_serving", "--model-name", MODEL, "--model-version", "1",
               "--model-uri", run.data.tags["slipway.model_uri"], "--download-dir", str(tmp / "download"),
               "--host", "127.0.0.1", "--http-port", str(port),
               "--drift-window", str(len(digits.test)), "--drift-min-samples", "100"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            try:
                if httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        yield Served(url, digits.test.x, digits.test.y, len(digits.val))
    finally:
        process.terminate()
        process.wait(timeout=30)


def _send(client: httpx.Client, x: np.ndarray, y: np.ndarray) -> tuple[float, str]:
    """Send the rows through V1 in batches; the true accuracy of the answers and /metrics after."""
    predictions: list[int] = []
    for start in range(0, len(x), 90):
        response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": x[start : start + 90].tolist()})
        assert response.status_code == 200, response.text
        predictions += response.json()["predictions"]
    return float(np.mean(np.array(predictions) == y)), client.get("/metrics").text


def test_the_estimate_tracks_the_true_accuracy_without_labels(served: Served):
    with httpx.Client(base_url=served.url, timeout=60) as client:
        text = client.get("/metrics").text
        validation = _metric(text, "slipway_validation_accuracy")
        assert validation is not None and 0.8 < validation <= 1.0
        assert _metric(text, "slipway_estimated_accuracy") is None  # nothing predicted yet

        held_out, text = _send(client, served.x_test, served.y_test)
        assert _metric(text, "slipway_estimated_accuracy_window_samples") == len(served.y_test)
        calm = _metric(text, "slipway_estimated_accuracy")
        assert calm is not None and abs(calm - held_out) <= TOLERANCE, (calm, held_out)

        rng = np.random.default_rng(2)
        noisy = np.clip(served.x_test + rng.normal(0, 4, served.x_test.shape), 0, 16).astype(np.float32)
        shifted, text = _send(client, noisy, served.y_test)
        estimate = _metric(text, "slipway_estimated_accuracy")
    assert shifted < held_out - 0.03  # the shift really hurts the model
    assert estimate is not None and abs(estimate - shifted) <= TOLERANCE, (estimate, shifted)
    assert estimate < calm  # and the estimate sees it, without a single label
