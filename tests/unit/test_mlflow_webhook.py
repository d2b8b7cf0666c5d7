"""MLflow webhook receiver: signature and timestamp verification, and what a delivery triggers."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from slipway.receivers.mlflow_webhook import MlflowWebhookReceiver, WebhookRejected, model_of, sign, verify

SECRET = "s3cret"
NOW = 1_800_000_000
BODY = json.dumps(
    {
        "entity": "model_version_alias",
        "action": "created",
        "data": {"name": "digits", "alias": "champion", "version": "2"},
    }
).encode()


def test_signature_matches_mlflows_own_signer() -> None:
    from mlflow.webhooks.delivery import _generate_hmac_signature

    assert sign(SECRET, "d-1", str(NOW), BODY) == _generate_hmac_signature(SECRET, "d-1", str(NOW), BODY.decode())


def test_valid_delivery_is_accepted() -> None:
    verify(SECRET, "d-1", str(NOW), sign(SECRET, "d-1", str(NOW), BODY), BODY, now=NOW + 299)


@pytest.mark.parametrize(
    ("secret", "delivery", "timestamp", "signature", "body", "status"),
    [
        (SECRET, "d-1", str(NOW), sign("other", "d-1", str(NOW), BODY), BODY, 401),  # wrong secret
        (SECRET, "d-1", str(NOW), sign(SECRET, "d-1", str(NOW), BODY), BODY + b" ", 401),  # body tampered
        (SECRET, "d-2", str(NOW), sign(SECRET, "d-1", str(NOW), BODY), BODY, 401),  # delivery id swapped
        (SECRET, "d-1", str(NOW - 301), sign(SECRET, "d-1", str(NOW - 301), BODY), BODY, 401),  # stale
        (SECRET, "d-1", str(NOW + 301), sign(SECRET, "d-1", str(NOW + 301), BODY), BODY, 401),  # from the future
        (SECRET, "d-1", str(NOW), None, BODY, 401),  # unsigned
        ("", "d-1", str(NOW), sign("", "d-1", str(NOW), BODY), BODY, 401),  # no secret configured
        (SECRET, None, str(NOW), "v1,AAAA", BODY, 400),
        (SECRET, "d-1", None, "v1,AAAA", BODY, 400),
        (SECRET, "d-1", "yesterday", "v1,AAAA", BODY, 400),
        (SECRET, "d-1", str(NOW), "v2,AAAA", BODY, 400),
        (SECRET, "d-1", str(NOW), "v1,not base64!", BODY, 400),
    ],
)
def test_bad_deliveries_are_rejected(
    secret: str, delivery: str | None, timestamp: str | None, signature: str | None, body: bytes, status: int
) -> None:
    with pytest.raises(WebhookRejected) as err:
        verify(secret, delivery, timestamp, signature, body, now=NOW)
    assert err.value.status == status


def test_model_of_registry_and_other_events() -> None:
    assert model_of(BODY) == "digits"
    assert model_of(json.dumps({"entity": "model_version_tag", "data": {"name": "m"}}).encode()) == "m"
    assert model_of(json.dumps({"entity": "prompt", "data": {"name": "p"}}).encode()) is None
    for bad in (b"not json", b"[1]", json.dumps({"entity": "model_version", "data": {}}).encode()):
        with pytest.raises(WebhookRejected) as err:
            model_of(bad)
        assert err.value.status == 400


async def _post(receiver: MlflowWebhookReceiver, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str]]:
    app = web.Application()
    app.router.add_post("/webhooks/mlflow", receiver.handle)
    async with TestClient(TestServer(app)) as client:
        resp = await client.post("/webhooks/mlflow", data=body, headers=headers)
        return resp.status, await resp.json()


def _headers(body: bytes, secret: str = SECRET, timestamp: int = NOW) -> dict[str, str]:
    return {
        "X-MLflow-Delivery-Id": "d-1",
        "X-MLflow-Timestamp": str(timestamp),
        "X-MLflow-Signature": sign(secret, "d-1", str(timestamp), body),
        "Content-Type": "application/json",
    }


async def test_endpoint_triggers_a_resync_only_for_signed_fresh_deliveries() -> None:
    seen: list[str] = []
    receiver = MlflowWebhookReceiver(clock=lambda: NOW)
    receiver.configure(SECRET, lambda model: seen.append(model) or model == "digits")

    assert await _post(receiver, _headers(BODY), BODY) == (200, {"message": "resync", "model": "digits"})
    status, _ = await _post(receiver, _headers(BODY, secret="forged"), BODY)
    assert status == 401
    status, _ = await _post(receiver, _headers(BODY, timestamp=NOW - 3600), BODY)
    assert status == 401
    other = json.dumps({"entity": "model_version", "action": "created", "data": {"name": "x", "version": "1"}}).encode()
    status, _ = await _post(receiver, _headers(other), other)
    assert status == 202  # valid, but nobody tracks model x
    assert seen == ["digits", "x"]


async def test_endpoint_is_unavailable_until_the_sync_runs() -> None:
    receiver = MlflowWebhookReceiver(secret=SECRET, clock=lambda: NOW)
    status, _ = await _post(receiver, _headers(BODY), BODY)
    assert status == 503
