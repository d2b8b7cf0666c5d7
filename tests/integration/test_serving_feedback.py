"""Ground-truth feedback over real HTTP: a real ``python -m slipway_serving`` process serving a scikit-learn model.

The model (logistic regression on scikit-learn's digits, saved with MLflow with a signature)
is served from its local path. Requests get an ``x-request-id`` (theirs, or one made up) back;
feedback by that id is compared with what was predicted and counted in ``/metrics``.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

pytestmark = pytest.mark.integration

MODEL = "digits"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def save_digits_model(path: Path, train_rows: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A logistic regression on the first ``train_rows`` digits, saved as an MLflow model; the rest held out."""
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    model = LogisticRegression(max_iter=2000).fit(x[:train_rows], y[:train_rows])
    mlflow.sklearn.save_model(
        model, str(path), signature=infer_signature(x[:2], model.predict(x[:2])), input_example=x[:2]
    )
    return x[train_rows:], y[train_rows:]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    tmp = tmp_path_factory.mktemp("feedback")
    x, y = save_digits_model(tmp / "model")
    port = _free_port()
    log = (tmp / "server.log").open("wb")
    command = [sys.executable, "-m", "slipway_serving", "--model-name", MODEL, "--model-version", "3",
               "--model-uri", str(tmp / "model"), "--host", "127.0.0.1", "--http-port", str(port)]  # fmt: skip
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(f"{url}/v2/models/{MODEL}/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (tmp / "server.log").read_text()[-3000:]
            time.sleep(0.3)
        yield url, x, y
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def infer(client: httpx.Client, rows: np.ndarray, request_id: str | None = None) -> httpx.Response:
    body = {
        "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}]
    }
    headers = {"x-request-id": request_id} if request_id else {}
    return client.post(f"/v2/models/{MODEL}/infer", json=body, headers=headers)


def counter(text: str, name: str) -> float:
    hit = re.search(rf'^{name}{{model="{MODEL}",version="3"}} ([0-9.e+]+)$', text, re.M)
    return float(hit.group(1)) if hit else 0.0


def test_feedback_counts_correct_predictions_per_version(served: tuple[str, np.ndarray, np.ndarray]):
    url, x, y = served
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/metrics").text
        ours = infer(client, x[:20], "client-id-1")
        assert ours.status_code == 200 and ours.headers["x-request-id"] == "client-id-1"
        predicted = np.asarray({o["name"]: o for o in ours.json()["outputs"]}["predictions"]["data"])
        made_up = infer(client, x[20:21])
        rid = made_up.headers["x-request-id"]
        assert made_up.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", rid)

        answer = client.post(f"/v2/models/{MODEL}/feedback", json={"id": "client-id-1", "labels": y[:20].tolist()})
        assert answer.status_code == 200, answer.text
        correct = int((predicted == y[:20]).sum())
        assert answer.json() == {"id": "client-id-1", "compared": 20, "correct": correct}
        wrong = (int(predicted_one(made_up)) + 1) % 10
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": rid, "label": wrong}).json()["correct"] == 0

        again = client.post(f"/v2/models/{MODEL}/feedback", json={"id": "client-id-1", "labels": y[:20].tolist()})
        assert again.status_code == 404  # counted once
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": "nobody", "label": 1}).status_code == 404
        infer(client, x[:2], "two")
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": "two", "labels": [1]}).status_code == 400
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"labels": [1]}).status_code == 400
        assert client.post("/v2/models/other/feedback", json={"id": "x", "label": 1}).status_code == 404
        after = client.get("/metrics").text

    assert counter(after, "slipway_feedback_total") - counter(before, "slipway_feedback_total") == 21
    assert (
        counter(after, "slipway_feedback_correct_total") - counter(before, "slipway_feedback_correct_total") == correct
    )
    assert counter(after, "slipway_feedback_unmatched_total") - counter(before, "slipway_feedback_unmatched_total") == 2
    assert correct >= 15  # the model is a decent classifier: the comparison is not trivially 0


def predicted_one(response: httpx.Response) -> int:
    return int({o["name"]: o for o in response.json()["outputs"]}["predictions"]["data"][0])
