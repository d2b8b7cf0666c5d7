"""Alertmanager's webhook (payload version 4): bearer-token check, idempotent intake, firing alerts handed on."""

from __future__ import annotations

import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from slipway.rollout.alerts import Alert

log = logging.getLogger(__name__)
PATH = "/webhooks/alertmanager"
AlertHandler = Callable[[Alert], Awaitable[None]]


class _Model(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore")


class WebhookAlert(_Model):
    """One alert of the payload."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    starts_at: datetime | None = Field(None, alias="startsAt")
    ends_at: datetime | None = Field(None, alias="endsAt")
    generator_url: str = Field("", alias="generatorURL")
    fingerprint: str = ""


class WebhookPayload(_Model):
    """Alertmanager's webhook body, version 4."""

    version: Literal["4"]
    group_key: str = Field("", alias="groupKey")
    status: Literal["firing", "resolved"]
    receiver: str = ""
    alerts: list[WebhookAlert]


class Seen:
    """Keys of alerts already handed on, so repeated deliveries act once (bounded, time-limited)."""

    def __init__(self, ttl: float = 3600.0, size: int = 10_000) -> None:
        self._ttl, self._size = ttl, size
        self._keys: OrderedDict[tuple[str, str], float] = OrderedDict()

    def first_time(self, key: tuple[str, str], now: float | None = None) -> bool:
        """Record `key`; True only the first time within the TTL."""
        now = time.monotonic() if now is None else now
        while self._keys and (len(self._keys) >= self._size or next(iter(self._keys.values())) < now - self._ttl):
            self._keys.popitem(last=False)
        if key in self._keys:
            return False
        self._keys[key] = now
        return True

    def forget(self, key: tuple[str, str]) -> None:
        """Drop `key`, so that a delivery that could not be handled acts when it comes again."""
        self._keys.pop(key, None)


def to_alerts(payload: WebhookPayload, source: str = "alertmanager", received: float | None = None) -> list[Alert]:
    """The firing alerts of a payload (resolved ones never roll anything back)."""
    return [
        Alert(
            name=a.labels.get("alertname", ""),
            labels=a.labels,
            starts_at=a.starts_at,
            fingerprint=a.fingerprint,
            source=source,
            annotations=a.annotations,
            received=received,
        )
        for a in payload.alerts
        if a.status == "firing"
    ]


class AlertmanagerReceiver:
    """POST /webhooks/alertmanager: 401 without the bearer token, 400 on a bad body, 200 once handed on.

    When ``handle`` raises, the alert is forgotten and the answer is 503, so that Alertmanager
    delivers it again (it retries failed notifications) instead of the rollback being lost.
    """

    def __init__(self, token: str, handle: AlertHandler, seen: Seen | None = None) -> None:
        self._token = token
        self._handle = handle
        self.seen = seen or Seen()

    def authorised(self, header: str | None) -> bool:
        """Constant-time check of `Authorization: Bearer <token>`."""
        if not self._token or not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header.removeprefix("Bearer ").encode(), self._token.encode())

    async def __call__(self, request: web.Request) -> web.Response:
        received = time.monotonic()
        if not self._token:
            return web.json_response({"error": "alert webhook disabled: no SLIPWAY_ALERTMANAGER_TOKEN"}, status=503)
        if not self.authorised(request.headers.get("Authorization")):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401)
        try:
            payload = WebhookPayload.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": f"not an Alertmanager v4 payload: {exc.errors()[0]['msg']}"}, status=400)
        handed = 0
        for alert in to_alerts(payload, received=received):
            if self.seen.first_time(alert.key):
                try:
                    await self._handle(alert)
                except Exception as exc:
                    self.seen.forget(alert.key)
                    log.warning("alert %s not handled, asking Alertmanager to retry: %s", alert.name, exc)
                    return web.json_response({"error": f"alert {alert.name} not handled: {exc}"}, status=503)
                handed += 1
        return web.json_response({"received": len(payload.alerts), "new": handed})
