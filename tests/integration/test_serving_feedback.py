"""Ground-truth feedback over real HTTP: a real ``python -m slipway_serving`` process serving a scikit-learn model.

The model (logistic regression on scikit-learn's digits, saved with MLflow with a signature)
is served from its local path. Requests get an ``x-request-id`` of the server's own back (one a
client sends is replaced); feedback by that id, with the feedback token, is compared with what
was predicted and counted in ``/metrics``. Without the token, or with ids the server never
issued, nothing is counted.
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
TOKEN = "feedback-token-of-the-test"


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
    (tmp / "token").write_text(TOKEN + "\n")
    command += ["--feedback-token-file", str(tmp / "token")]
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
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=url, timeout=30, headers=auth) as client:
        before = client.get("/metrics").text
        ours = infer(client, x[:20], "client-id-1")
        rid1 = ours.headers["x-request-id"]
        assert ours.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", rid1), "the server's id, not the client's"
        predicted = np.asarray({o["name"]: o for o in ours.json()["outputs"]}["predictions"]["data"])
        made_up = infer(client, x[20:21])
        rid = made_up.headers["x-request-id"]
        assert made_up.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", rid) and rid != rid1

        chosen = client.post(f"/v2/models/{MODEL}/feedback", json={"id": "client-id-1", "labels": y[:20].tolist()})
        assert chosen.status_code == 404, "an id the client chose is not one the server issued"
        answer = client.post(f"/v2/models/{MODEL}/feedback", json={"id": rid1, "labels": y[:20].tolist()})
        assert answer.status_code == 200, answer.text
        correct = int((predicted == y[:20]).sum())
        assert answer.json() == {"id": rid1, "compared": 20, "correct": correct}
        wrong = (int(predicted_one(made_up)) + 1) % 10
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": rid, "label": wrong}).json()["correct"] == 0

        again = client.post(f"/v2/models/{MODEL}/feedback", json={"id": rid1, "labels": y[:20].tolist()})
        assert again.status_code == 404  # counted once
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": "nobody", "label": 1}).status_code == 404
        two = infer(client, x[:2]).headers["x-request-id"]
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"id": two, "labels": [1]}).status_code == 400
        assert client.post(f"/v2/models/{MODEL}/feedback", json={"labels": [1]}).status_code == 400
        assert client.post("/v2/models/other/feedback", json={"id": "x", "label": 1}).status_code == 404
        after = client.get("/metrics").text

    assert counter(after, "slipway_feedback_total") - counter(before, "slipway_feedback_total") == 21
    assert (
        counter(after, "slipway_feedback_correct_total") - counter(before, "slipway_feedback_correct_total") == correct
    )
    assert counter(after, "slipway_feedback_unmatched_total") - counter(before, "slipway_feedback_unmatched_total") == 3
    assert correct >= 15  # the model is a decent classifier: the comparison is not trivially 0


def test_feedback_without_the_token_is_refused_and_counts_nothing(served: tuple[str, np.ndarray, np.ndarray]):
    """A client that got a prediction cannot feed its own answer back as the truth without the token."""
    url, x, _ = served
    with httpx.Client(base_url=url, timeout=30) as client:
        before = client.get("/metrics").text
        response = infer(client, x[:4])
        rid = response.headers["x-request-id"]
        own = [int(v) for v in {o["name"]: o for o in response.json()["outputs"]}["predictions"]["data"]]
        body = {"id": rid, "labels": own}
        assert client.post(f"/v2/models/{MODEL}/feedback", json=body).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token"}
        assert client.post(f"/v2/models/{MODEL}/feedback", json=body, headers=wrong).status_code == 401
        after = client.get("/metrics").text
        ok = client.post(f"/v2/models/{MODEL}/feedback", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
        assert ok.status_code == 200, "the id was not used up by the refused attempts"
    for name in ("slipway_feedback_total", "slipway_feedback_correct_total", "slipway_feedback_unmatched_total"):
        assert counter(after, name) == counter(before, name), name


def predicted_one(response: httpx.Response) -> int:
    return int({o["name"]: o for o in response.json()["outputs"]}["predictions"]["data"][0])
