"""The serving runtime as a real process, over real HTTP, with a real trained and registered model.

A session fixture trains a small PyTorch network on scikit-learn's digits (a few seconds on one
thread), logs it with MLflow into a local SQLite store under ``tmp_path`` (signature, input
example, and ``baseline.json`` written with ``slipway_training.baseline``, the training
package's own writer, next to ``MLmodel``), and registers it as ``digits`` version 1. The
server is started with ``--model-uri models:/digits/1``, so it resolves and downloads the model
through MLflow the way it does in a cluster. Then: V1 and V2 answer correctly, bad requests get
4xx while the server keeps serving, ``/metrics`` moves, and drift stays low on held-out digits
and rises past the alert threshold on shifted ones. A second server, from the local path and
with dynamic batching, answers concurrent requests correctly. Last, the contract with training:
the model ``python -m slipway_training.digits_cnn`` logs (one epoch) serves as it is logged.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MODEL = "digits"
HELD_OUT = 360
DRIFT_ALERT = 0.25
STARTUP_TIMEOUT = 240.0


@dataclass
class Trained:
    """The registered model and the held-out data it was not trained on."""

    tracking_uri: str
    local_path: Path
    x_test: np.ndarray
    y_test: np.ndarray


@dataclass
class Server:
    """A running ``python -m slipway_serving`` process."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30)

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Train, log (with signature, input example and baseline) and register version 1."""
    import mlflow
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    from slipway_training import baseline as bl
    from slipway_training.data import feature_names

    root = tmp_path_factory.mktemp("mlflow")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.create_experiment("serving", artifact_location=(root / "artifacts").as_uri())

    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=HELD_OUT, random_state=0, stratify=y)
    nn = torch.nn
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10), nn.Softmax(dim=1))
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    inputs, targets = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _ in range(300):
        optimizer.zero_grad()
        torch.nn.functional.nll_loss(torch.log(net(inputs) + 1e-9), targets).backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        probs = net(torch.from_numpy(x_test)).numpy()
    assert (probs.argmax(axis=1) == y_test).mean() > 0.9

    with mlflow.start_run(experiment_id=experiment):
        info = mlflow.pytorch.log_model(
            net, name="model", signature=infer_signature(x_test, probs), input_example=x_test[:2]
        )
        doc = bl.build_baseline(x_train, [bl.uniform_edges(0, 16, 8)] * 64, feature_names=feature_names())
        baseline = root / bl.FILENAME
        baseline.write_text(bl.dumps(doc))
        mlflow.MlflowClient().log_model_artifact(info.model_id, str(baseline))
    version = mlflow.register_model(info.model_uri, MODEL)
    assert version.version in ("1", 1)
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(root / "local")))
    assert (local / "MLmodel").is_file() and (local / bl.FILENAME).is_file()
    return Trained(tracking_uri=tracking_uri, local_path=local, x_test=x_test, y_test=y_test)


@contextmanager
def _start(tmp: Path, name: str, args: list[str], tracking_uri: str) -> Iterator[Server]:
    port = _free_port()
    log = tmp / f"{name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLIPWAY_"))}
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "serving"), env.get("PYTHONPATH")) if p),
    )
    command = [sys.executable, "-m", "slipway_serving", "--model-name", MODEL, "--host", "127.0.0.1",
               "--http-port", str(port), *args]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    server = Server(process=process, url=f"http://127.0.0.1:{port}", log=log)
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited with {process.returncode}:\n{server.tail()}")
            try:
                if httpx.get(f"{server.url}/v2/models/{MODEL}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_TIMEOUT}s:\n{server.tail()}")
            time.sleep(0.25)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The registered version, resolved through MLflow (``models:/digits/1``)."""
    tmp = tmp_path_factory.mktemp("server")
    args = ["--model-uri", f"models:/{MODEL}/1", "--download-dir", str(tmp / "download"),
            "--drift-window", str(HELD_OUT), "--drift-min-samples", "100",
            "--max-instances", "512", "--max-body-bytes", "500000"]  # fmt: skip
    with _start(tmp, "server", args, trained.tracking_uri) as server:
        yield server


def metric(client: httpx.Client, name: str, **labels: str) -> float | None:
    """One sample of ``/metrics``, or None when the series is absent."""
    text = client.get("/metrics").text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        found = dict(re.findall(r'(\w+)="([^"]*)"', series))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(value)
    return None


def v1(client: httpx.Client, rows: np.ndarray) -> httpx.Response:
    return client.post(f"/v1/models/{MODEL}:predict", json={"instances": rows.tolist()})


def v2(client: httpx.Client, rows: np.ndarray) -> httpx.Response:
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    return client.post(f"/v2/models/{MODEL}/infer", json={"inputs": [tensor]})


def test_ready_only_with_metadata_from_the_signature(server: Server):
    with server.client() as client:
        assert client.get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
        meta = client.get(f"/v2/models/{MODEL}").json()
        assert meta["inputs"] == [{"name": "input-0", "datatype": "FP32", "shape": [-1, 64]}]
        assert metric(client, "slipway_model_info", model=MODEL, version="1", flavor="pytorch") == 1


def test_v1_predicts_held_out_digits(server: Server, trained: Trained):
    predictions: list[int] = []
    with server.client() as client:
        for start in range(0, HELD_OUT, 60):
            response = v1(client, trained.x_test[start : start + 60])
            assert response.status_code == 200, response.text
            predictions += response.json()["predictions"]
    accuracy = float(np.mean(np.array(predictions) == trained.y_test))
    assert accuracy > 0.85


def test_v2_predicts_held_out_digits_with_probabilities(server: Server, trained: Trained):
    with server.client() as client:
        response = v2(client, trained.x_test[:120])
    assert response.status_code == 200, response.text
    body = response.json()
    outputs = {o["name"]: o for o in body["outputs"]}
    assert body["model_name"] == MODEL and body["model_version"] == "1"
    assert outputs["predictions"]["datatype"] == "INT64" and outputs["predictions"]["shape"] == [120]
    assert outputs["probabilities"]["shape"] == [120, 10]
    probabilities = np.array(outputs["probabilities"]["data"]).reshape(120, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    accuracy = float(np.mean(np.array(outputs["predictions"]["data"]) == trained.y_test[:120]))
    assert accuracy > 0.85


BAD_V1 = [
    ("malformed JSON", b'{"instances": [[1, 2,', 400),
    ("not an object", b"[1, 2, 3]", 400),
    ("no instances", b'{"rows": []}', 400),
    ("wrong shape", json.dumps({"instances": [[0.0] * 63]}).encode(), 400),
    ("ragged", json.dumps({"instances": [[0.0] * 64, [0.0] * 10]}).encode(), 400),
    ("wrong dtype", json.dumps({"instances": [["a"] * 64]}).encode(), 400),
    ("too many instances", json.dumps({"instances": [[0] * 64] * 600}).encode(), 413),
    ("oversize body", b'{"instances": [' + b"0," * 300_000 + b"0]}", 413),
    ("more values than fit", b'{"instances": [' + b"0," * 40_000 + b"0]}", 413),
]


def _tensor(shape: list[int], datatype: str, data: list[object]) -> dict[str, object]:
    return {"inputs": [{"name": "input-0", "shape": shape, "datatype": datatype, "data": data}]}


BAD_V2 = [
    ("malformed JSON", b'{"inputs": [{"name": "x"', 422),
    ("wrong shape", _tensor([1, 63], "FP32", [0.0] * 63), 400),
    ("shape and data disagree", _tensor([2, 64], "FP32", [0.0] * 64), 400),
    ("wrong dtype", _tensor([1, 64], "BYTES", ["a"] * 64), 400),
    ("strings as FP32", _tensor([1, 64], "FP32", ["a"] * 64), 400),
]
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(("case", "body", "status"), BAD_V1, ids=[c[0] for c in BAD_V1])
def test_bad_v1_requests_get_4xx_and_the_server_keeps_serving(server: Server, trained: Trained, case, body, status):
    with server.client() as client:
        response = client.post(f"/v1/models/{MODEL}:predict", content=body, headers=JSON)
        assert response.status_code == status, f"{case}: {response.text}"
        assert "error" in response.json()
        if case == "more values than fit":  # refused by the look before parsing, not after building 40,000 ints
            assert "fit in one request" in response.json()["error"]
        assert v1(client, trained.x_test[:3]).status_code == 200
    assert server.process.poll() is None


@pytest.mark.parametrize(("case", "body", "status"), BAD_V2, ids=[c[0] for c in BAD_V2])
def test_bad_v2_requests_get_4xx_and_the_server_keeps_serving(server: Server, trained: Trained, case, body, status):
    with server.client() as client:
        if isinstance(body, bytes):
            response = client.post(f"/v2/models/{MODEL}/infer", content=body, headers=JSON)
        else:
            response = client.post(f"/v2/models/{MODEL}/infer", json=body)
        assert response.status_code == status, f"{case}: {response.text}"
        assert v2(client, trained.x_test[:3]).status_code == 200
    assert server.process.poll() is None


def test_metrics_move_with_requests(server: Server, trained: Trained):
    labels = {"model": MODEL, "version": "1"}
    with server.client() as client:

        def read() -> dict[str, float]:
            names = {
                "ok": ("slipway_requests_total", {"code": "200"}),
                "bad": ("slipway_requests_total", {"code": "400"}),
                "shape": ("slipway_errors_total", {"kind": "shape"}),
                "latency": ("slipway_request_duration_seconds_count", {}),
                "confidence": ("slipway_prediction_confidence_count", {}),
                "batches": ("slipway_batch_size_count", {}),
            }
            values = {k: metric(client, n, **labels, **extra) or 0.0 for k, (n, extra) in names.items()}
            for digit in range(10):
                value = metric(client, "slipway_predictions_total", **labels, **{"class": str(digit)})
                values[f"class{digit}"] = value or 0.0
            return values

        before = read()
        rows = trained.x_test[:20]
        assert v1(client, rows).status_code == 200
        assert v2(client, rows).status_code == 200
        assert v1(client, np.zeros((1, 63), dtype=np.float32)).status_code == 400
        after = read()
    assert after["ok"] - before["ok"] == 2
    assert after["bad"] - before["bad"] == 1
    assert after["shape"] - before["shape"] == 1
    assert after["latency"] - before["latency"] == 3
    assert after["confidence"] - before["confidence"] == 40
    assert after["batches"] - before["batches"] == 2
    assert sum(after[f"class{d}"] - before[f"class{d}"] for d in range(10)) == 40
    # One slipway_requests_total series per status code, not per path or model name asked for.
    with server.client() as client:
        client.post("/v1/models/no-such-model:predict", json={"instances": [[0] * 64]})
        text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("slipway_requests_total{")]
    assert all(f'model="{MODEL}"' in line for line in series)


def test_drift_low_in_distribution_and_high_when_shifted(server: Server, trained: Trained):
    labels = {"model": MODEL, "version": "1"}
    with server.client() as client:
        for start in range(0, HELD_OUT, 90):  # the window (360) now holds exactly the held-out set
            assert v1(client, trained.x_test[start : start + 90]).status_code == 200
        assert metric(client, "slipway_drift_window_samples", **labels) == HELD_OUT
        calm = metric(client, "slipway_model_drift_score", **labels)
        assert calm is not None and calm < 0.1, calm
        assert metric(client, "slipway_feature_drift_psi", **labels, feature="pixel_3_4") is not None

        faded = trained.x_test * 0.5  # faded ink: every stroke half as dark
        for start in range(0, HELD_OUT, 90):
            assert v1(client, faded[start : start + 90]).status_code == 200
        shifted = metric(client, "slipway_model_drift_score", **labels)
        assert shifted is not None and shifted > DRIFT_ALERT, shifted
        names = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
        per_feature = [metric(client, "slipway_feature_drift_psi", **labels, feature=n) for n in names]
        assert all(v is not None for v in per_feature)
        assert max(v for v in per_feature if v is not None) > DRIFT_ALERT


@pytest.fixture(scope="module")
def batching_server(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The same model from its local path, with dynamic batching."""
    tmp = tmp_path_factory.mktemp("batching")
    args = ["--model-uri", str(trained.local_path), "--model-version", "1",
            "--max-batch-size", "16", "--max-latency-ms", "20"]  # fmt: skip
    with _start(tmp, "batching", args, trained.tracking_uri) as server:
        yield server


def test_dynamic_batching_answers_each_request_with_its_own_rows(batching_server: Server, trained: Trained):
    rows = trained.x_test[:96]

    def one(i: int) -> int:
        with batching_server.client() as client:
            response = client.post(f"/v1/models/{MODEL}:predict", json={"instances": [rows[i].tolist()]})
            assert response.status_code == 200, response.text
            return int(response.json()["predictions"][0])

    with ThreadPoolExecutor(max_workers=16) as pool:
        predictions = list(pool.map(one, range(len(rows))))
    with batching_server.client() as client:
        direct = v1(client, rows).json()["predictions"]
        batches = metric(client, "slipway_batch_size_count", model=MODEL, version="1")
    assert predictions == direct  # same answers alone or batched, in the right order
    assert float(np.mean(np.array(predictions) == trained.y_test[:96])) > 0.85
    assert batches is not None and batches < len(rows)  # some requests shared a model call


def test_a_model_that_cannot_load_exits_with_an_error(tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(REPO / "serving"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    command = [sys.executable, "-m", "slipway_serving", "--model-uri", str(tmp_path / "nothing-here"),
               "--model-name", MODEL, "--host", "127.0.0.1", "--http-port", str(_free_port())]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "does not exist" in proc.stderr


def test_serves_what_slipway_training_logs(tmp_path: Path):
    """The contract with training: its entry point's logged model, signature and baseline serve as-is."""
    pytest.importorskip("slipway_training.digits_cnn")
    import mlflow
    from sklearn.datasets import load_digits

    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLIPWAY_"))}
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "training-jobs"), env.get("PYTHONPATH")) if p),
    )
    train = subprocess.run(
        [sys.executable, "-m", "slipway_training.digits_cnn", "--epochs", "1", "--threads", "1"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-3000:]
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    model_uri = run.data.tags["slipway.model_uri"]

    args = ["--model-uri", model_uri, "--download-dir", str(tmp_path / "download"), "--model-version", "1",
            "--drift-min-samples", "100"]  # fmt: skip
    with _start(tmp_path, "training-contract", args, tracking_uri) as server:
        x, y = load_digits(return_X_y=True)
        with server.client() as client:
            response = v1(client, x[:200].astype(np.float32))
            assert response.status_code == 200, response.text
            assert float(np.mean(np.array(response.json()["predictions"]) == y[:200])) > 0.85
            labels = {"model": MODEL, "version": "1"}
            assert metric(client, "slipway_drift_window_samples", **labels) == 200
            assert metric(client, "slipway_feature_drift_psi", **labels, feature="pixel_0_0") is not None


# --------------------------------------------------------------------------- the most common V2 client: tritonclient


@pytest.mark.parametrize("binary_data", [False, True], ids=["json", "binary"])
def test_tritonclient_http_infers_in_json_and_binary_mode(server: Server, trained: Trained, binary_data: bool):
    """``tritonclient.http`` as users call it: JSON mode sends no Content-Type; binary mode sends raw tensors."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=server.url.removeprefix("http://"), network_timeout=30.0)
    try:
        assert client.is_model_ready(MODEL)
        rows = trained.x_test[:40].astype(np.float32)
        tensor = httpclient.InferInput("input-0", list(rows.shape), "FP32")
        tensor.set_data_from_numpy(rows, binary_data=binary_data)
        outputs = [
            httpclient.InferRequestedOutput("predictions", binary_data=binary_data),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary_data),
        ]
        result = client.infer(MODEL, [tensor], outputs=outputs)
    finally:
        client.close()
    predictions, probabilities = result.as_numpy("predictions"), result.as_numpy("probabilities")
    assert predictions is not None and probabilities is not None
    assert predictions.shape == (40,) and probabilities.shape == (40, 10)
    assert np.allclose(probabilities.sum(axis=1), 1, atol=1e-4)
    assert float(np.mean(predictions == trained.y_test[:40])) > 0.85


def test_v2_json_without_content_type_is_read_as_json(server: Server, trained: Trained):
    rows = trained.x_test[:3]
    tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
    with server.client() as client:
        response = client.post(f"/v2/models/{MODEL}/infer", content=json.dumps({"inputs": [tensor]}).encode())
        assert "content-type" not in response.request.headers
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["shape"] in ([3], [3, 10])
        not_json = client.post(f"/v2/models/{MODEL}/infer", content=b"\x00\x01 not json")
        assert not_json.status_code in (400, 422), not_json.text
        assert client.get(f"/v2/models/{MODEL}/ready").status_code == 200, "still serving"
