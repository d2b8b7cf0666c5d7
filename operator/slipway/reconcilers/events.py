"""Post core/v1 Events about an object from outside kopf's handlers (alert intake, write-back, follow-up passes)."""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from slipway.clients.kube import Kube, off_loop

from .notifier import notify
from .status import Event, now_iso

log = logging.getLogger(__name__)
_HOST = socket.gethostname()


def event_manifest(body: Mapping[str, Any], event: Event, now: datetime | None = None) -> dict[str, Any]:
    """The Event object kopf would post for ``body`` (kopf.event needs a handler's context; these run outside)."""
    meta = body.get("metadata") or {}
    stamp = now_iso(now or datetime.now(UTC))
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta.get('name')}.", "namespace": meta.get("namespace")},
        "involvedObject": {
            "apiVersion": body.get("apiVersion"),
            "kind": body.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "reason": event.reason,
        "message": event.message[:1024],
        "type": event.type,
        "source": {"component": "slipway"},
        "reportingComponent": "slipway",
        "reportingInstance": _HOST,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


async def post_events(
    kube: Kube, body: Mapping[str, Any], events: list[Event], status: Mapping[str, Any] | None = None
) -> None:
    """Post each event (and notify them; ``status``: the one just written); a failure is logged, never raised."""
    notify(body, events, status)
    for event in events:
        manifest = event_manifest(body, event)
        namespace = manifest["metadata"]["namespace"]
        try:
            await off_loop(kube.create, manifest)
        except Exception as exc:
            meta = body.get("metadata") or {}
            log.warning("could not post event %s on %s/%s: %s", event.reason, namespace, meta.get("name"), exc)
