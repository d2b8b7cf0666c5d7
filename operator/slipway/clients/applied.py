"""What the operator last applied to each child, so a pass can skip a server-side apply that would change nothing.

A pass re-applies every child of a ModelDeployment each time it runs (every 30 s when nothing
moves, and every second while a rollout does). Most of those applies are no-ops that still cost
the API server a full apply: decode, managed-fields merge, validation with the CRD's CEL rules.
This cache remembers, per object, the digest of the manifest last applied and the
``metadata.generation`` the server answered with. A manifest with the same digest is applied
again only when

- the watch saw the object deleted, or at another generation (someone edited its spec), which
  :meth:`AppliedCache.observed` reports so the caller can make the deployment due at once;
- ``reassert_seconds`` have passed since the last apply (labels or annotations edited by hand do
  not move the generation; nothing stays unasserted for long);
- the process restarted (the cache is memory only).
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import prometheus_client

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

    def record(self, manifest: dict[str, Any], stored: dict[str, Any]) -> None:
        """Remember an apply the server answered; ``stored`` is the object it returned."""
        generation = (stored.get("metadata") or {}).get("generation")
        entry = Applied(digest_of(manifest), generation, self._clock())
        with self._lock:
            self._entries[key_of(manifest)] = entry

    def forget(self, key: Key) -> bool:
        """Drop what is known of an object (deleted by the operator, or written by another path); True if known."""
        with self._lock:
            return self._entries.pop(key, None) is not None

    def observed(self, key: Key, generation: int | None) -> bool:
        """The watch saw the object at ``generation`` (None: deleted). True if that differs from the last apply.

        The entry is then dropped, so the next pass applies again; the caller makes that pass come soon.
        """
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return False
            if generation is not None and (entry.generation is None or generation <= entry.generation):
                return False  # the operator's own write, or an event from before it
            del self._entries[key]
            return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
