"""Prometheus /api/v1/alerts: the fallback source of firing alerts when no Alertmanager webhook arrives."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx

from slipway.rollout.alerts import Alert


class AlertsUnavailable(RuntimeError):
    """Prometheus could not be asked for its alerts (down, slow or answering an error)."""


def parse_alerts(body: dict[str, Any]) -> list[Alert]:
    """Firing alerts out of a /api/v1/alerts answer (pending ones are not alerts yet)."""
    if body.get("status") != "success":
        raise AlertsUnavailable(f"Prometheus answered {body.get('status')}: {body.get('error', '')}")
    out = []
    for a in body.get("data", {}).get("alerts", []):
        if a.get("state") != "firing":
            continue
        labels = {str(k): str(v) for k, v in (a.get("labels") or {}).items()}
        active = a.get("activeAt")
        started = datetime.fromisoformat(active.replace("Z", "+00:00")) if active else None
        out.append(
            Alert(
                name=labels.get("alertname", ""),
                labels=labels,
                starts_at=started,
                source="prometheus",
                annotations=a.get("annotations") or {},
            )
        )
    return out


async def firing_alerts(prometheus_url: str, timeout: float = 5.0) -> list[Alert]:
    """The alerts firing in Prometheus now."""
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.get(f"{prometheus_url.rstrip('/')}/api/v1/alerts")
            resp.raise_for_status()
            body = resp.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise AlertsUnavailable(f"GET {prometheus_url}/api/v1/alerts: {exc}") from exc
    return parse_alerts(body)
