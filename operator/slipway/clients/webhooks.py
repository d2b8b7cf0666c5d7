"""Notification webhooks on the wire: Slack, Teams and signed JSON payloads, HMAC-SHA256 signing, one POST."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import httpx

TargetType = Literal["slack", "teams", "webhook"]
ID_HEADER = "X-Slipway-Event-Id"
TIMESTAMP_HEADER = "X-Slipway-Timestamp"
SIGNATURE_HEADER = "X-Slipway-Signature"
SCHEMA = "slipway.dev/notification/v1"


@dataclass(frozen=True)
class Message:
    """One notification: what happened to which object, with a stable id receivers deduplicate on."""

    id: str
    event: str
    reason: str
    severity: Literal["Normal", "Warning"]
    kind: str
    namespace: str
    name: str
    uid: str
    message: str
    time: str
    details: dict[str, str] = field(default_factory=dict)

    @property
    def title(self) -> str:
        """A one-line headline: ``RolledBack: ModelDeployment ns/name``."""
        return f"{self.event}: {self.kind} {self.namespace}/{self.name}"


def json_payload(message: Message) -> dict[str, Any]:
    """The generic webhook's body: every field, with a schema name to version it by."""
    return {"schema": SCHEMA, **asdict(message)}


def _facts(message: Message) -> list[tuple[str, str]]:
    return [("Reason", message.reason), *message.details.items(), ("Event id", message.id)]


def slack_payload(message: Message) -> dict[str, Any]:
    """A Slack incoming-webhook body (``text`` for clients without blocks, Block Kit for the rest)."""
    icon = ":warning:" if message.severity == "Warning" else ":information_source:"
    facts = "\n".join(f"*{k}:* {v}" for k, v in _facts(message)[:-1])
    return {
        "text": f"{icon} {message.title}: {message.message}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": message.title[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": message.message[:3000]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": facts[:3000]}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": f"event id {message.id} · {message.time}"}]},
        ],
    }


def teams_payload(message: Message) -> dict[str, Any]:
    """A Teams message with one Adaptive Card: what Teams incoming webhooks and workflows both accept."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {
                "type": "TextBlock",
                "text": message.title,
                "weight": "Bolder",
                "size": "Medium",
                "wrap": True,
                "color": "Attention" if message.severity == "Warning" else "Default",
            },
            {"type": "TextBlock", "text": message.message, "wrap": True},
            {"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in _facts(message)]},
        ],
    }
    return {
        "type": "message",
        "summary": message.title,
        "attachments": [
            {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}
        ],
    }


def payload(target: TargetType, message: Message) -> dict[str, Any]:
    """The body for a target type."""
    if target == "slack":
        return slack_payload(message)
    if target == "teams":
        return teams_payload(message)
    return json_payload(message)


def signature(key: bytes, timestamp: str, body: bytes) -> str:
    """``sha256=`` and the hex HMAC-SHA256 of ``<timestamp>.<body>`` under ``key`` (the timestamp stops replays)."""
    return "sha256=" + hmac.new(key, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


def verify(key: bytes, timestamp: str, body: bytes, signed: str) -> bool:
    """Whether ``signed`` (the signature header) is ``body``'s signature at ``timestamp`` (constant-time compare)."""
    return hmac.compare_digest(signature(key, timestamp, body), signed)


def request(
    target: TargetType, message: Message, timestamp: int, signing_key: bytes | None = None
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery; a webhook's are signed when a key is given."""
    body = json.dumps(payload(target, message), separators=(",", ":"), sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "slipway-notifier",
        ID_HEADER: message.id,
        TIMESTAMP_HEADER: str(timestamp),
    }
    if signing_key is not None:
        headers[SIGNATURE_HEADER] = signature(signing_key, str(timestamp), body)
    return body, headers


class DeliveryFailed(RuntimeError):
    """A delivery did not get a 2xx; ``retry`` says whether trying again can help (not for a 4xx but 408/429)."""

    def __init__(self, message: str, *, retry: bool) -> None:
        super().__init__(message)
        self.retry = retry


async def post(client: httpx.AsyncClient, url: str, body: bytes, headers: dict[str, str]) -> int:
    """POST one delivery; returns the 2xx status, raises DeliveryFailed otherwise."""
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        raise DeliveryFailed(f"{type(exc).__name__}: {exc}", retry=True) from exc
    status = response.status_code
    if 200 <= status < 300:
        return status
    retry = status >= 500 or status in (408, 429)
    raise DeliveryFailed(f"HTTP {status}: {response.text[:200]}", retry=retry)
