"""MLflow registry webhooks: verify the signed delivery, then ask for an immediate resync of the model it names.

MLflow (3.3+) signs each delivery with ``X-MLflow-Signature: v1,<base64 HMAC-SHA256(secret,
"{delivery id}.{timestamp}.{raw body}")>`` and sends ``X-MLflow-Delivery-Id`` and
``X-MLflow-Timestamp`` (Unix seconds). A delivery is accepted only with a valid signature and a
timestamp within five minutes of now, either way (replays and forgeries get 401, malformed
requests 400). The body is not trusted for anything but the model's name: the resync reads the
registry itself, so a valid delivery can at worst cause one extra poll.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import prometheus_client
from aiohttp import web

from slipway.receivers.http import server

log = logging.getLogger(__name__)

PATH = "/webhooks/mlflow"
MAX_AGE_SECONDS = 300
MAX_BODY_BYTES = 1 << 20
SIGNATURE_VERSION = "v1"
DELIVERY_HEADER = "X-MLflow-Delivery-Id"
TIMESTAMP_HEADER = "X-MLflow-Timestamp"
SIGNATURE_HEADER = "X-MLflow-Signature"
REGISTRY_ENTITIES = frozenset({"model_version", "model_version_tag", "model_version_alias", "registered_model"})

DELIVERIES = prometheus_client.Counter(
    "slipway_mlflow_webhook_deliveries",
    "MLflow webhook deliveries, by outcome: resync, ignored (not a registry event or model not tracked),"
    " rejected (bad signature, stale, malformed or too large) or unavailable (sync not running yet).",
    ["outcome"],
)


class WebhookRejected(Exception):
    """A delivery the operator refuses; ``status`` is the HTTP code to answer with."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def sign(secret: str, delivery_id: str, timestamp: str, body: bytes) -> str:
    """The signature header MLflow sends for this delivery."""
    content = delivery_id.encode() + b"." + timestamp.encode() + b"." + body
    digest = hmac.new(secret.encode(), content, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def verify(
    secret: str,
    delivery_id: str | None,
    timestamp: str | None,
    signature: str | None,
    body: bytes,
    *,
    now: float,
    max_age: float = MAX_AGE_SECONDS,
) -> None:
    """Accept a delivery or raise WebhookRejected (400: malformed, 401: unsigned, forged or stale)."""
    if not secret:
        raise WebhookRejected(401, "no webhook secret is configured: unsigned deliveries are refused")
    if not signature:
        raise WebhookRejected(401, f"unsigned delivery: no {SIGNATURE_HEADER}")
    if not delivery_id or not timestamp:
        raise WebhookRejected(400, f"missing {DELIVERY_HEADER} or {TIMESTAMP_HEADER}")
    try:
        sent_at = int(timestamp)
    except ValueError:
        raise WebhookRejected(400, f"{TIMESTAMP_HEADER} is not Unix seconds") from None
    version, _, encoded = signature.partition(",")
    if version != SIGNATURE_VERSION or not encoded:
        raise WebhookRejected(400, f"{SIGNATURE_HEADER} is not '{SIGNATURE_VERSION},<base64>'")
    try:
        base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise WebhookRejected(400, f"{SIGNATURE_HEADER} is not base64") from None
    expected = sign(secret, delivery_id, timestamp, body)
    if not hmac.compare_digest(expected.encode(), signature.encode()):
        raise WebhookRejected(401, "signature mismatch")
    if abs(now - sent_at) > max_age:
        raise WebhookRejected(401, f"timestamp is more than {int(max_age)} s from now (replay?)")


def model_of(body: bytes) -> str | None:
    """The registered-model name a registry delivery is about, or None for other entities."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise WebhookRejected(400, "body is not JSON") from None
    if not isinstance(doc, dict):
        raise WebhookRejected(400, "body is not a JSON object")
    data = doc.get("data")
    name = data.get("name") if isinstance(data, dict) else None
    if doc.get("entity") not in REGISTRY_ENTITIES:
        return None
    if not isinstance(name, str) or not name:
        raise WebhookRejected(400, "registry event without data.name")
    return name


@dataclass
class MlflowWebhookReceiver:
    """The POST /webhooks/mlflow endpoint; the operator configures the secret and the resync callback."""

    secret: str = ""
    on_change: Callable[[str], bool] | None = None
    clock: Callable[[], float] = time.time

    def configure(self, secret: str, on_change: Callable[[str], bool]) -> None:
        """Set the shared secret and what to call with a model name (returns whether the model is tracked)."""
        self.secret = secret
        self.on_change = on_change

    async def handle(self, request: web.Request) -> web.Response:
        """Verify and dispatch one delivery."""
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            DELIVERIES.labels("rejected").inc()
            return _answer(413, "body too large")
        body = await request.read()
        headers = request.headers
        try:
            verify(
                self.secret,
                headers.get(DELIVERY_HEADER),
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                body,
                now=self.clock(),
            )
            model = model_of(body)
        except WebhookRejected as exc:
            log.warning("rejected MLflow webhook delivery %s: %s", headers.get(DELIVERY_HEADER), exc.reason)
            DELIVERIES.labels("rejected").inc()
            return _answer(exc.status, exc.reason)
        if model is None:
            DELIVERIES.labels("ignored").inc()
            return _answer(202, "ignored: not a registry event")
        if self.on_change is None:
            DELIVERIES.labels("unavailable").inc()
            return _answer(503, "the registry sync is not running yet")
        tracked = self.on_change(model)
        DELIVERIES.labels("resync" if tracked else "ignored").inc()
        return _answer(200 if tracked else 202, "resync" if tracked else "ignored: model not tracked", model)


def _answer(status: int, message: str, model: str | None = None) -> web.Response:
    payload: dict[str, str] = {"message": message}
    if model is not None:
        payload["model"] = model
    return web.json_response(payload, status=status)


receiver = MlflowWebhookReceiver()
server.route("POST", PATH, receiver.handle)
