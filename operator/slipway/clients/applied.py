"""What the operator last applied to each child, so a pass can skip a server-side apply that would change nothing.

A pass re-applies every child of a ModelDeployment each time it runs (every 30 s when nothing
moves, and every second while a rollout does). Most of those applies are no-ops that still cost
the API server a full apply: decode, managed-fields merge, validation with the CRD's CEL rules.
This cache remembers, per object, the digest of the manifest last applied and the
``metadata.generation`` the server answered with. A manifest with the same digest is applied
again only when

- the watch saw the object deleted, or at another generation (someone edited its spec), which
  :meth:`AppliedCache.observed` reports so the caller can make the deployment due at once; for
  kinds the API server keeps no generation for (HorizontalPodAutoscalers), an edit is a live spec
  that no longer holds every field the operator applied (the server's defaults may add fields;
  status writes by the HPA controller change nothing here);
- ``reassert_seconds`` have passed since the last apply (labels or annotations edited by hand do
  not move the generation; nothing stays unasserted for long);
- the process restarted (the cache is memory only).
"""

from __future__ import annotations

import copy
import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client
from kubernetes.utils.quantity import parse_quantity

Key = tuple[str, str, str, str]  # apiVersion, kind, namespace, name

APPLIES = prometheus_client.Counter(
    "slipway_child_applies",
    "Server-side applies of children by result: applied (sent), unchanged (skipped: same manifest, same generation).",
    ["kind", "result"],
)


def key_of(manifest: dict[str, Any]) -> Key:
    """The cache key of a manifest: apiVersion, kind, namespace and name."""
    meta = manifest["metadata"]
    return manifest["apiVersion"], manifest["kind"], meta.get("namespace") or "", meta["name"]


def digest_of(manifest: dict[str, Any]) -> str:
    """A digest of the manifest's content, independent of key order."""
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Applied:
    """One object as the operator last applied it."""

    digest: str
    generation: int | None
    at: float
    spec: Any = None


def holds(live: Any, applied: Any) -> bool:
    """Whether ``live`` still has every field and value of ``applied`` (extra fields, e.g. defaults, allowed)."""
    if isinstance(applied, dict):
        return isinstance(live, dict) and all(k in live and holds(live[k], v) for k, v in applied.items())
    if isinstance(applied, list):
        return isinstance(live, list) and len(live) == len(applied) and all(map(holds, live, applied))
    if live == applied:
        return True
    if isinstance(live, str) and isinstance(applied, str):  # quantities the server rewrote: 0.5 → 500m
        try:
            return bool(parse_quantity(live) == parse_quantity(applied))
        except ValueError:
            return False
    return False


class AppliedCache:
    """Digests and generations of the operator's last applies; safe to use from the loop and worker threads."""

    def __init__(self, reassert_seconds: float = 600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.reassert_seconds = reassert_seconds
        self._clock = clock
        self._entries: dict[Key, Applied] = {}
        self._lock = threading.Lock()

    def unchanged(self, manifest: dict[str, Any]) -> bool:
        """Whether applying this manifest now would change nothing the operator knows of."""
        if self.reassert_seconds <= 0:
            return False
        with self._lock:
            entry = self._entries.get(key_of(manifest))
        if entry is None or self._clock() - entry.at >= self.reassert_seconds:
            return False
        return entry.digest == digest_of(manifest)

    def known(self, key: Key) -> bool:
        """Whether this process applied the object (so it is ours) and has not seen it deleted or changed since.

        Within the reassert period, as :meth:`unchanged`: after it, the caller looks again.
        """
        if self.reassert_seconds <= 0:
            return False
        with self._lock:
            entry = self._entries.get(key)
        return entry is not None and self._clock() - entry.at < self.reassert_seconds

    def record(self, manifest: dict[str, Any], stored: dict[str, Any]) -> None:
        """Remember an apply the server answered; ``stored`` is the object it returned."""
        generation = (stored.get("metadata") or {}).get("generation")
        spec = copy.deepcopy(manifest.get("spec")) if generation is None else None
        entry = Applied(digest_of(manifest), generation, self._clock(), spec)
        with self._lock:
            self._entries[key_of(manifest)] = entry

    def forget(self, key: Key) -> bool:
        """Drop what is known of an object (deleted by the operator, or written by another path); True if known."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def observed(self, key: Key, live: dict[str, Any] | None) -> bool:
        """The watch saw the object as ``live`` (None: deleted). True if it changed since the operator's apply.

        Changed: deleted, at a later generation, or (kinds without a generation) a spec that lost
        what was applied. The entry is then dropped, so the next pass applies again; the caller
        makes that pass come soon.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if live is not None:
                generation = (live.get("metadata") or {}).get("generation")
                if generation is not None and entry.generation is not None:
                    if generation <= entry.generation:
                        return False  # the operator's own write, or an event from before it
                elif entry.spec is not None and holds(live.get("spec"), entry.spec):
                    return False
            del self._entries[key]
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
