"""After a rollback, tell MLflow what happened (spec.rollback.registry): nothing, a tag, or the alias moved back.

``tag`` sets ``slipway.rolled-back=<reason>`` on the version taken out. ``revertAlias`` does that
too and points the tracked alias back at the version now serving, so that MLflow and the
cluster agree (Argo Rollouts leaves Git on the aborted version; this does not leave MLflow
there). The alias is moved only if it still points at the version rolled back — a data
scientist who already moved it elsewhere is not overruled. Moving the alias does not start
anything: the tracked version becomes the stable one (a hold), and a blocked version stays
blocked, because only a spec change or the retry action unblocks.

Durable. The status write that starts a rollback also records the write-back it owes in
``status.pendingWriteBacks`` (:func:`with_pending`), so an MLflow outage or an operator restart
loses nothing: the Driver hands every object with pending write-backs to :meth:`WriteBack.drain`,
which tries the oldest when it is due, and removes it from status once MLflow took it (or
refused it for good), else records the error and the next attempt, 2 s after the first failure
doubling to :data:`MAX_RETRY_SECONDS`. A restarted operator finds the list in status and goes on.
Its result is an event on the ModelDeployment.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from slipway.clients.kube import Kube
from slipway.clients.mlflow import MlflowRegistry, RegistryError, RegistryUnavailable

from .events import post_events
from .status import Event

log = logging.getLogger(__name__)
TAG = "slipway.rolled-back"
TAG_VALUE_LIMIT = 250
FIRST_RETRY_SECONDS = 2.0
MAX_RETRY_SECONDS = 60.0
PENDING = "pendingWriteBacks"

Locked = Callable[[Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]]], Awaitable[None]]
"""Run ``update(body)`` on a fresh read of the object under its lock; ``update`` returns the status patch or None."""


@dataclass(frozen=True)
class RolledBack:
    """A rollback just written to status: the version taken out, the one serving again, and why."""

    version: str
    restored: str | None
    reason: str


def rolled_back(status: dict[str, Any]) -> RolledBack | None:
    """The rollback that status records last (history[-1]), if that entry is one."""
    history = status.get("history") or []
    if not history or history[-1].get("outcome") not in ("RolledBack", "Aborted"):
        return None
    last = history[-1]
    return RolledBack(str(last["version"]), last.get("previousVersion"), str(last.get("reason") or "RolledBack"))


def _iso(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _time(raw: Any) -> datetime | None:
    if not raw:
        return None
    return datetime.fromisoformat(str(raw).replace("Z", "+00:00"))


def with_pending(
    spec: dict[str, Any], old: dict[str, Any], status: dict[str, Any], now: datetime, reason: str | None = None
) -> None:
    """Record in ``status`` (which starts the rollback ``status`` records) the write-back it owes, if any."""
    what = rolled_back(status)
    rollback = spec.get("rollback") or {}
    mode = rollback.get("registry") or "tag"
    if what is None or mode == "none":
        return
    model = spec.get("model") or {}
    entry = {
        "model": str(model.get("name") or ""),
        "version": what.version,
        "restoredVersion": what.restored,
        "alias": (model.get("track") or {}).get("alias") if mode == "revertAlias" else None,
        "mode": mode,
        "reason": (reason or what.reason)[:TAG_VALUE_LIMIT],
        "attempts": 0,
        "nextAttemptAt": _iso(now),
    }
    status[PENDING] = [*(old.get(PENDING) or []), {k: v for k, v in entry.items() if v is not None}]


def retry_after(attempts: int) -> float:
    """Seconds before the next attempt after ``attempts`` failed ones."""
    return float(min(FIRST_RETRY_SECONDS * 2 ** max(attempts - 1, 0), MAX_RETRY_SECONDS))


async def _peek(seen: list[dict[str, Any]], body: dict[str, Any]) -> None:
    seen.append(body)


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a.get(k) == b.get(k) for k in ("model", "version", "reason", "mode"))


class WriteBack:
    """Writes rollbacks back to the MLflow registry as ``spec.rollback.registry`` asked, then posts an event."""

    def __init__(
        self,
        kube: Kube,
        registry: MlflowRegistry | None,
        resync: Callable[[str], object] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.kube = kube
        self.registry = registry
        self.resync = resync
        self.clock = clock

    async def drain(self, locked: Locked) -> float | None:
        """Work through the object's pending write-backs, oldest first, until none is left (or MLflow is down).

        ``locked`` runs a status update on a fresh read of the object under its lock, so a pass
        that records a new write-back and this removing an old one never overwrite each other.
        Returns when the list is empty or the object is gone (None), or the next attempt is not due
        yet: then the seconds until it is (the next pass calls this again).
        """
        while True:
            seen: list[dict[str, Any]] = []
            await locked(functools.partial(_peek, seen))
            body = seen[0] if seen else None
            pending = list(((body or {}).get("status") or {}).get(PENDING) or [])
            if body is None or not pending:
                return None
            entry = pending[0]
            due = _time(entry.get("nextAttemptAt"))
            if due is not None and due > self.clock():
                return (due - self.clock()).total_seconds()
            done, error = await self.attempt(body, entry)
            await locked(functools.partial(self._settle, entry, done, error))

    async def _settle(
        self, entry: dict[str, Any], done: bool, error: str, fresh: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The status patch after one attempt on ``entry``: gone when done, else its next attempt pushed back."""
        kept: list[dict[str, Any]] = []
        for item in (fresh.get("status") or {}).get(PENDING) or []:
            if not _same(item, entry):
                kept.append(item)
            elif not done:
                attempts = int(item.get("attempts") or 0) + 1
                at = self.clock() + timedelta(seconds=retry_after(attempts))
                kept.append({**item, "attempts": attempts, "nextAttemptAt": _iso(at), "lastError": error})
        return {PENDING: kept or None}

    async def attempt(self, body: dict[str, Any], entry: dict[str, Any]) -> tuple[bool, str]:
        """One try at one pending write-back; (True, "") when settled (written, or refused for good)."""
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        if self.registry is None:
            log.warning("%s: rollback of v%s not written back: no MLflow URI configured", where, entry["version"])
            return True, ""
        events: list[Event] = []
        model, version = str(entry["model"]), str(entry["version"])
        try:
            done = await self._write(model, version, entry, f"{entry.get('reason') or 'RolledBack'} in {where}")
            events.append(Event("RegistryUpdated", "; ".join(done)))
        except RegistryUnavailable as exc:
            if not entry.get("attempts"):
                why = f"MLflow write-back of v{version} pending, retried until MLflow takes it: {exc}"
                await post_events(self.kube, body, [Event("RegistryWriteBackPending", why, "Warning")])
            log.info("%s: write-back of v%s not done (attempt %s): %s", where, version, entry.get("attempts"), exc)
            return False, str(exc)[:300]
        except RegistryError as exc:
            events.append(
                Event("RegistryWriteBackFailed", f"MLflow refused the write-back of v{version}: {exc}", "Warning")
            )
        if self.resync is not None:
            self.resync(model)
        await post_events(self.kube, body, events)
        for event in events:
            log.info("%s: %s: %s", where, event.reason, event.message)
        return True, ""

    async def _write(self, model: str, version: str, entry: dict[str, Any], value: str) -> list[str]:
        assert self.registry is not None
        value = value[:TAG_VALUE_LIMIT]
        await self.registry.set_version_tag(model, version, TAG, value)
        done = [f"tagged {model} v{version} {TAG}={value!r}"]
        alias, restored = entry.get("alias"), entry.get("restoredVersion")
        if entry.get("mode") == "revertAlias" and alias and restored:
            snapshot = await self.registry.snapshot(model)
            now = snapshot.aliases.get(alias)
            if now != version:
                done.append(f"alias {alias} left on v{now} (it no longer points at v{version})")
            else:
                await self.registry.set_alias(model, alias, str(restored))
                done.append(f"alias {alias} moved back from v{version} to v{restored}")
        return done
