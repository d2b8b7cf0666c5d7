"""After a rollback, tell MLflow what happened (spec.rollback.registry): nothing, a tag, or the alias moved back.

``tag`` sets ``slipway.rolled-back=<reason>`` on the version taken out. ``revertAlias`` does that
too and points the tracked alias back at the version now serving, so that MLflow and the
cluster agree (Argo Rollouts leaves Git on the aborted version; this does not leave MLflow
there). The alias is moved only if it still points at the version rolled back — a data
scientist who already moved it elsewhere is not overruled. Moving the alias does not start
anything: the tracked version becomes the stable one (a hold), and a blocked version stays
blocked, because only a spec change or the retry action unblocks.

The write-back runs after status and traffic are written, off the alert's critical path,
with a few retries when MLflow is unavailable; its result is an event on the ModelDeployment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from slipway.clients.kube import Kube
from slipway.clients.mlflow import MlflowRegistry, RegistryError, RegistryUnavailable

from .events import post_events
from .status import Event

log = logging.getLogger(__name__)
TAG = "slipway.rolled-back"
TAG_VALUE_LIMIT = 250


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


class WriteBack:
    """Writes a rollback back to the MLflow registry as ``spec.rollback.registry`` asks, then posts an event."""

    def __init__(
        self,
        kube: Kube,
        registry: MlflowRegistry | None,
        resync: Callable[[str], object] | None = None,
        attempts: int = 3,
        retry_seconds: float = 1.0,
    ) -> None:
        self.kube = kube
        self.registry = registry
        self.resync = resync
        self.attempts = attempts
        self.retry_seconds = retry_seconds

    async def after_rollback(self, body: dict[str, Any], status: dict[str, Any]) -> None:
        """Driver hook: write back the rollback ``status`` records (its reason is the tag's value)."""
        what = rolled_back(status)
        if what is not None:
            await self.write(body, what, what.reason)

    async def write(self, body: dict[str, Any], what: RolledBack, reason: str) -> list[Event]:
        """Tag (and maybe move the alias) per the object's spec.rollback.registry; returns the events posted."""
        spec = body.get("spec") or {}
        mode = (spec.get("rollback") or {}).get("registry") or "tag"
        model = (spec.get("model") or {}).get("name") or ""
        alias = ((spec.get("model") or {}).get("track") or {}).get("alias")
        if mode == "none":
            return []
        meta = body.get("metadata") or {}
        where = f"{meta.get('namespace')}/{meta.get('name')}"
        if self.registry is None:
            log.warning("%s: rollback of v%s not written back to MLflow: no MLflow URI configured", where, what.version)
            return []
        value = f"{reason} in {where}"[:TAG_VALUE_LIMIT]
        events: list[Event] = []
        try:
            await self._retrying(self.registry.set_version_tag, model, what.version, TAG, value)
            done = [f"tagged {model} v{what.version} {TAG}={value!r}"]
            if mode == "revertAlias" and alias and what.restored:
                done.append(await self._revert_alias(model, alias, what.version, what.restored))
            events.append(Event("RegistryUpdated", "; ".join(done)))
        except RegistryError as exc:
            events.append(Event("RegistryWriteBackFailed", f"MLflow write-back of v{what.version}: {exc}", "Warning"))
        if self.resync is not None:
            self.resync(model)
        await post_events(self.kube, body, events)
        for event in events:
            log.info("%s: %s: %s", where, event.reason, event.message)
        return events

    async def _revert_alias(self, model: str, alias: str, failed: str, restored: str) -> str:
        assert self.registry is not None
        snapshot = await self._retrying(self.registry.snapshot, model)
        now = snapshot.aliases.get(alias)
        if now != failed:
            return f"alias {alias} left on v{now} (it no longer points at v{failed})"
        await self._retrying(self.registry.set_alias, model, alias, restored)
        return f"alias {alias} moved back from v{failed} to v{restored}"

    async def _retrying(self, call: Callable[..., Any], *args: Any) -> Any:
        for attempt in range(1, self.attempts + 1):
            try:
                return await call(*args)
            except RegistryUnavailable:
                if attempt == self.attempts:
                    raise
                await asyncio.sleep(self.retry_seconds * attempt)
        raise AssertionError("unreachable")
