"""Outputs, metrics and the HTTP middleware: classes, confidences, codes, bounded labels."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from fastapi import FastAPI, Request
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

from slipway_serving.drift import DriftReport
from slipway_serving.errors import ShapeMismatch, install_exception_handlers
from slipway_serving.metrics import DriftCollector, ModelMetrics, kind_for_status
from slipway_serving.middleware import InFlight, ServingMiddleware, is_inference_path
from slipway_serving.outputs import OutputKind, classify, interpret, softmax


def sample(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


# -- outputs ---------------------------------------------------------------------------------


def test_probabilities_are_kept_and_logits_softmaxed():
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.25, 0.25]], dtype=np.float32)
    assert classify(probs) is OutputKind.PROBABILITIES
    out = interpret(probs)
    assert out.predictions.tolist() == [1, 0]
    assert out.confidence is not None and np.allclose(out.confidence, [0.7, 0.5])
    logits = np.array([[0.0, 3.0, -1.0]])
    assert classify(logits) is OutputKind.LOGITS
    out = interpret(logits)
    assert out.probabilities is not None and np.allclose(out.probabilities, softmax(logits))
    assert out.predictions.tolist() == [1]


def test_labels_and_values_pass_through():
    assert classify(np.array([3, 1])) is OutputKind.LABELS
    assert interpret(np.array([3, 1])).classes is not None
    regression = interpret(np.array([[0.5], [1.5]]))
    assert classify(np.array([[0.5], [1.5]])) is OutputKind.VALUES
    assert regression.classes is None and regression.predictions.shape == (2, 1)


def test_a_kind_that_does_not_fit_is_detected_again():
    out = interpret(np.array([2, 0]), OutputKind.LOGITS)
    assert out.predictions.tolist() == [2, 0] and out.confidence is None


# -- metrics ---------------------------------------------------------------------------------


def test_class_labels_are_bounded():
    metrics = ModelMetrics("bounded", "1", max_classes=3)
    metrics.predicted(np.array([0, 1, 2, 2]), None)
    metrics.predicted(np.array([7, 1000, 2, -1]), None)
    metrics.predicted(np.array([5]), None)
    labels = {"model": "bounded", "version": "1"}
    assert sample("slipway_predictions_total", {**labels, "class": "2"}) == 3
    assert sample("slipway_predictions_total", {**labels, "class": "other"}) == 4
    assert sample("slipway_predictions_total", {**labels, "class": "7"}) is None


def test_confidence_histogram_counts_every_instance():
    metrics = ModelMetrics("conf", "1")
    metrics.predicted(np.array([1, 1]), np.array([0.95, 0.35]))
    labels = {"model": "conf", "version": "1"}
    assert sample("slipway_prediction_confidence_count", labels) == 2
    assert sample("slipway_prediction_confidence_bucket", {**labels, "le": "0.4"}) == 1


def test_requests_and_errors_by_code_and_kind():
    metrics = ModelMetrics("codes", "2")
    metrics.request_done(200, 0.001, None)
    metrics.request_done(400, 0.001, "shape")
    metrics.request_done(422, 0.001, None)
    metrics.request_done(500, 0.002, None)
    labels = {"model": "codes", "version": "2"}
    for code, count in (("200", 1), ("400", 1), ("422", 1), ("500", 1)):
        assert sample("slipway_requests_total", {**labels, "code": code}) == count
    assert sample("slipway_errors_total", {**labels, "kind": "shape"}) == 1
    assert sample("slipway_errors_total", {**labels, "kind": "invalid_request"}) == 1
    assert sample("slipway_errors_total", {**labels, "kind": "internal"}) == 1
    assert sample("slipway_request_duration_seconds_count", labels) == 4
    assert kind_for_status(418) == "client_error"


def test_drift_collector_exports_per_feature_and_score():
    registry = CollectorRegistry()
    report: DriftReport | None = None
    collector = DriftCollector("m", "3", ("a", "b"), lambda: report, lambda: 42)
    registry.register(collector)
    text = generate_latest(registry).decode()
    assert 'slipway_drift_window_samples{model="m",version="3"} 42.0' in text
    assert "slipway_model_drift_score" not in text
    report = DriftReport(feature_psi=(0.1, 0.3), score=0.2, samples=42)
    text = generate_latest(registry).decode()
    assert 'slipway_model_drift_score{model="m",version="3"} 0.2' in text
    assert 'slipway_feature_drift_psi{feature="b",model="m",version="3"} 0.3' in text


def test_drift_collector_drops_per_feature_gauges_for_wide_inputs():
    registry = CollectorRegistry()
    report = DriftReport(feature_psi=(0.1,) * 5, score=0.1, samples=10)
    names = tuple(f"f{i}" for i in range(5))
    registry.register(DriftCollector("m", "1", names, lambda: report, lambda: 10, max_features=4))
    text = generate_latest(registry).decode()
    assert "slipway_model_drift_score" in text and "slipway_feature_drift_psi" not in text


# -- middleware ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/m:predict", True),
        ("/v1/models/m:explain", True),
        ("/v2/models/m/infer", True),
        ("/v2/models/m/versions/3/infer", True),
        ("/v2/models/m/ready", False),
        ("/metrics", False),
        ("/v1/models/m", False),
    ],
)
def test_inference_paths(path, expected):
    assert is_inference_path(path) is expected


def make_app(records: list[tuple[int, str | None]], in_flight: InFlight) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/models/m:predict")
    async def predict(request: Request) -> dict[str, int]:
        body = await request.body()
        if body == b"bad":
            raise ShapeMismatch("wrong shape")
        if body == b"crash":
            raise RuntimeError("unexpected")
        if body == b"wait":
            assert in_flight() == 1
        return {"size": len(body)}

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    app.add_middleware(
        ServingMiddleware,
        max_body_bytes=100,
        on_request=lambda code, seconds, kind: records.append((code, kind)),
        in_flight=in_flight,
        model_version="7",
    )
    install_exception_handlers(app)
    return app


async def test_middleware_counts_codes_and_limits_bodies():
    records: list[tuple[int, str | None]] = []
    in_flight = InFlight()
    transport = httpx.ASGITransport(app=make_app(records, in_flight), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/v1/models/m:predict", content=b"wait")
        assert ok.status_code == 200
        bad = await client.post("/v1/models/m:predict", content=b"bad")
        assert bad.status_code == 400 and bad.json() == {"error": "wrong shape"}
        # every answer names the version that gave it, errors included (clients behind a split can tell)
        assert ok.headers["x-model-version"] == bad.headers["x-model-version"] == "7"
        big = await client.post("/v1/models/m:predict", content=b"x" * 101)
        assert big.status_code == 413 and "limit of 100 bytes" in big.json()["error"]

        async def chunks():
            for _ in range(5):
                yield b"x" * 30
                await asyncio.sleep(0)

        chunked = await client.post("/v1/models/m:predict", content=chunks())
        assert chunked.status_code == 413
        crash = await client.post("/v1/models/m:predict", content=b"crash")
        assert crash.status_code == 500
        assert (await client.get("/v2/health/live")).status_code == 200
    assert records == [(200, None), (400, "shape"), (413, "too_large"), (413, "too_large"),
                       (500, None)]  # fmt: skip
    assert in_flight() == 0


async def test_beyond_the_in_flight_cap_requests_are_answered_503_before_their_body_is_read():
    """Two held at once (running or queued): the third gets 503 + Retry-After, counted; then room again."""
    records: list[tuple[int, str | None]] = []
    release = asyncio.Event()
    read: list[bytes] = []
    app = FastAPI()

    @app.post("/v2/models/m/infer")
    async def infer(request: Request) -> dict[str, int]:
        read.append(await request.body())
        await release.wait()
        return {"ok": 1}

    app.add_middleware(
        ServingMiddleware,
        max_body_bytes=1000,
        on_request=lambda code, seconds, kind: records.append((code, kind)),
        max_in_flight=2,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        held = [asyncio.create_task(client.post("/v2/models/m/infer", content=b"held")) for _ in range(2)]
        while len(read) < 2:
            await asyncio.sleep(0.01)
        over = await client.post("/v2/models/m/infer", content=b"over")
        assert over.status_code == 503 and over.headers["retry-after"] == "1" and "overloaded" in over.json()["error"]
        assert read == [b"held", b"held"], "the refused body was never read"
        release.set()
        assert [(await t).status_code for t in held] == [200, 200]
        assert (await client.post("/v2/models/m/infer", content=b"again")).status_code == 200
    assert (503, "overloaded") in records


async def test_json_bodies_are_looked_at_before_they_are_parsed():
    """Not an object, or more values than fit: refused without the application reading a parsed body."""
    records: list[tuple[int, str | None]] = []
    parsed: list[bytes] = []
    app = FastAPI()

    @app.post("/v2/models/m/infer")
    async def infer(request: Request) -> dict[str, int]:
        parsed.append(await request.body())
        return {"ok": 1}

    app.add_middleware(
        ServingMiddleware,
        max_body_bytes=1_000_000,
        on_request=lambda code, seconds, kind: records.append((code, kind)),
        max_values=lambda: 1000,
    )
    transport = httpx.ASGITransport(app=app)
    fits = b'{"inputs": [{"name": "x", "shape": [10, 100], "datatype": "FP32", "data": [' + b"0," * 999 + b"0]}]}"
    too_many = b'{"inputs": [{"data": [' + b"0," * 5000 + b"0]}]}"
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        ok = await client.post("/v2/models/m/infer", content=fits, headers={"content-type": "application/json"})
        assert ok.status_code == 200 and parsed == [fits], "the body read ahead is handed on whole"
        big = await client.post("/v2/models/m/infer", content=too_many, headers={"content-type": "application/json"})
        assert big.status_code == 413 and "at most 1000 fit" in big.json()["error"]
        array = await client.post("/v2/models/m/infer", content=b"  [1, 2]")
        assert array.status_code == 400 and "must be a JSON object" in array.json()["error"]

        async def chunks():
            yield fits[:100]
            await asyncio.sleep(0)
            yield fits[100:]

        chunked = await client.post("/v2/models/m/infer", content=chunks())
        assert chunked.status_code == 200 and parsed[-1] == fits
        binary = await client.post(
            "/v2/models/m/infer", content=b"[binary]", headers={"inference-header-content-length": "3"}
        )
        assert binary.status_code == 200, "V2's binary format is not JSON: not looked at"
    assert parsed == [fits, fits, b"[binary]"]
    assert records == [(200, None), (413, "too_large"), (400, "invalid_request"), (200, None), (200, None)]
