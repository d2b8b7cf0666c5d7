"""The registry sync: discover which MLflow models a namespace uses, poll each once per interval, mirror them.

Discovery. A namespace *references* a registered model when a ModelDeployment names it
(``spec.model.name``) or a TrainingRun registers into it (``spec.register.model``). For each
referenced (namespace, model) the sync creates one ModelVersion per MLflow version, named
``<slug>-v<version>`` and labelled ``ml.slipway.dev/model: <slug>``, ``ml.slipway.dev/version:
"<version>"`` and ``app.kubernetes.io/managed-by: slipway`` (see :func:`model_slug`). ModelVersions
that users create themselves are mirrored too (the sync tracks their model) but never deleted.

Ownership without owner references or finalizers. Many objects can reference one model and
none of them owns its versions, so the mirrors carry labels instead of owner references. When
no object in a namespace references a model any more — for ``gc_grace_seconds``, counted from
the operator's start too, so that a restart first re-learns every reference — the sync deletes
the managed mirrors of that model in that namespace. Nothing else is ever deleted: a version
that disappears from MLflow keeps its mirror with ``Synced=False, reason NotFound``, and an
MLflow outage changes only the ``Synced`` condition.

Change detection. One loop polls all tracked models together, once per poll interval: one
batched ``search_registered_models`` (``name IN (…)``, one request per few hundred names) reads
every model's head — aliases and ``last_updated_timestamp``, which a stage transition or a new
or deleted version bumps. Only models whose head changed, plus the stalest share of the rest
(so that every model's versions — tags, descriptions, which change no head — are re-read at
least once per ``resync_seconds``), get their versions read, again batched
(``search_model_versions`` with ``name IN (…)``). A steady poll of 500 models is thus two or
three requests, not a thousand. Each model's last read fans out to every namespace that tracks
it. When MLflow is down or slow the next poll backs off exponentially (to
``max_backoff_seconds``) and the mirrors say so in ``Synced``; the first read that succeeds
re-reads every model. A webhook (or a new object) calls :meth:`RegistrySync.trigger`, which
reads that model at once (two requests); polling stays as the safety net because stage
transitions have no webhook and deliveries can be lost.

The informer: ModelDeployment, TrainingRun and ModelVersion watch events are fed in by the kopf
handlers (:meth:`RegistrySync.observe`), so a poll reads the cluster from memory and writes to
the API server only what changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import prometheus_client

from slipway.api import names
from slipway.api.names import API_VERSION, LABEL_MANAGED_BY, LABEL_MODEL, LABEL_VERSION, sanitise_model_name
from slipway.clients.kube import Kube, off_loop
from slipway.clients.mlflow import MlflowRegistry, ModelHead, ModelSnapshot, RegistryError, RegistryUnavailable
from slipway.reconcilers import modelversion
from slipway.reconcilers.events import post_events
from slipway.reconcilers.status import status_changed

log = logging.getLogger(__name__)

MODEL_LABEL = LABEL_MODEL
VERSION_LABEL = LABEL_VERSION
MANAGED_BY_LABEL = LABEL_MANAGED_BY
MANAGED_BY = names.MANAGED_BY
KIND = "ModelVersion"

Observer = Callable[[str], modelversion.Observation]
"""What the last read says about one version number."""

SYNC_SECONDS = prometheus_client.Histogram(
    "slipway_registry_sync_seconds",
    "Duration of one registry sync of one model: the MLflow reads plus the writes to Kubernetes.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SYNC_ERRORS = prometheus_client.Counter(
    "slipway_registry_sync_errors_total",
    "Registry syncs that failed, by reason (unavailable, error, kube).",
    ["reason"],
)
TRACKED_MODELS = prometheus_client.Gauge("slipway_registry_tracked_models", "Registered models the sync polls.")


def model_slug(model: str) -> str:
    """The DNS- and label-safe form of a registered-model name, used in ModelVersion names and labels.

    The one definition is ``api.names.sanitise_model_name`` (shared with the ModelDeployment
    and TrainingRun reconcilers): lower-cased, runs of other characters than ``a-z0-9.-`` become
    one dash, at most 63 characters. It is lossy (``Digits_CNN`` and ``digits-cnn`` share a slug),
    so whoever selects by the label must also compare ``spec.model``; the sync itself keys
    everything by the exact name.
    """
    return sanitise_model_name(model)


def modelversion_name(model: str, version: str | int) -> str:
    """Name of the ModelVersion mirroring one MLflow version: ``<slug>-v<version>``."""
    return names.modelversion_name(model, version)


def modelversion_labels(model: str, version: str | int) -> dict[str, str]:
    """Labels of a managed ModelVersion (select a model's versions with the first one)."""
    return {MODEL_LABEL: model_slug(model), VERSION_LABEL: str(version), MANAGED_BY_LABEL: MANAGED_BY}


def modelversion_manifest(namespace: str, model: str, version: str) -> dict[str, Any]:
    """The managed ModelVersion for one MLflow version (spec only: the sync writes status)."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": modelversion_name(model, version),
            "namespace": namespace,
            "labels": modelversion_labels(model, version),
        },
        "spec": {"model": model, "version": str(version)},
    }


def referenced_model(kind: str, body: Mapping[str, Any]) -> str | None:
    """The registered model a ModelDeployment or TrainingRun refers to, if any."""
    spec = body.get("spec") or {}
    if kind == "ModelDeployment":
        name = (spec.get("model") or {}).get("name")
    elif kind == "TrainingRun":
        name = (spec.get("register") or {}).get("model")
    else:
        name = None
    return str(name) if name else None


def backoff(poll_seconds: float, failures: int, max_seconds: float) -> float:
    """Seconds until the next attempt after ``failures`` failed or slow polls in a row."""
    if failures <= 0:
        return poll_seconds
    return min(poll_seconds * 2.0**failures, max(max_seconds, poll_seconds))


def _rv(body: Mapping[str, Any]) -> int:
    try:
        return int((body.get("metadata") or {}).get("resourceVersion") or 0)
    except ValueError:
        return 0


class ClusterView:
    """What the watches told us: who references which model, and the ModelVersion objects (an informer)."""

    def __init__(self) -> None:
        self._refs: dict[str, dict[tuple[str, str], str]] = {}
        self._mirrors: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
        self._model_of: dict[tuple[str, str], str] = {}
        self._uses: dict[str, dict[str, int]] = {}

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> tuple[str | None, bool]:
        """Record one watch event; returns the model it concerns and whether its namespace is new to it."""
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        gone = event_type == "DELETED"
        if kind == KIND:
            return self._observe_mirror(namespace, name, None if gone else body)
        refs = self._refs.setdefault(namespace, {})
        old = refs.pop((kind, name), None)
        if old is not None:
            self._use(old, namespace, -1)
        model = None if gone else referenced_model(kind, body)
        if model is None:
            return old, False
        refs[(kind, name)] = model
        return model, self._use(model, namespace, +1)

    def _observe_mirror(self, namespace: str, name: str, body: Mapping[str, Any] | None) -> tuple[str | None, bool]:
        key = (namespace, name)
        model = modelversion.spec_of(body)[0] or None if body is not None else None
        old = self._model_of.get(key)
        if old is not None and old == model and body is not None:
            objs = self._mirrors[(namespace, model)]
            if _rv(body) >= _rv(objs.get(name, {})):
                objs[name] = dict(body)
            return model, False
        if old is not None:
            objs = self._mirrors.get((namespace, old), {})
            objs.pop(name, None)
            if not objs:
                self._mirrors.pop((namespace, old), None)
            self._model_of.pop(key)
            self._use(old, namespace, -1)
        if body is None or model is None:
            return old, False
        self._mirrors.setdefault((namespace, model), {})[name] = dict(body)
        self._model_of[key] = model
        return model, self._use(model, namespace, +1)

    def _use(self, model: str, namespace: str, delta: int) -> bool:
        """Count one more (or one fewer) use of a model in a namespace; True when the first use appears."""
        uses = self._uses.setdefault(model, {})
        count = uses.get(namespace, 0) + delta
        if count > 0:
            uses[namespace] = count
        else:
            uses.pop(namespace, None)
            if not uses:
                self._uses.pop(model, None)
        return delta > 0 and count == 1

    def stored(self, body: Mapping[str, Any]) -> None:
        """Remember what the API server returned for our own write (ahead of its watch event)."""
        self.observe(KIND, "MODIFIED", body)

    def referenced(self, namespace: str, model: str) -> bool:
        """Whether a ModelDeployment or TrainingRun in the namespace names the model."""
        return model in self._refs.get(namespace, {}).values()

    def model_named(self, namespace: str, name: str) -> str | None:
        """The model the ModelVersion of this name mirrors, if one exists."""
        return self._model_of.get((namespace, name))

    def mirrors(self, namespace: str, model: str) -> list[dict[str, Any]]:
        """ModelVersion objects of a model in a namespace (managed or not)."""
        return list(self._mirrors.get((namespace, model), {}).values())

    def namespaces(self, model: str) -> list[str]:
        """Namespaces that reference the model or hold a ModelVersion of it."""
        return sorted(self._uses.get(model, {}))

    def tracked(self) -> set[str]:
        """Models some namespace references or mirrors."""
        return set(self._uses)

    def is_tracked(self, model: str) -> bool:
        return model in self._uses

    def unreferenced_managed(self) -> set[tuple[str, str]]:
        """(namespace, model) pairs with managed mirrors but no referencing object."""
        out: set[tuple[str, str]] = set()
        for (namespace, model), objs in self._mirrors.items():
            if self.referenced(namespace, model):
                continue
            if any(_managed(body) for body in objs.values()):
                out.add((namespace, model))
        return out


def _managed(body: Mapping[str, Any]) -> bool:
    labels = (body.get("metadata") or {}).get("labels") or {}
    return bool(labels.get(MANAGED_BY_LABEL) == MANAGED_BY)


@dataclass
class _Known:
    """The last read of one model: its head (None: not in MLflow) and its versions."""

    head: ModelHead | None
    snapshot: ModelSnapshot
    read_at: float


class RegistrySync:
    """The loop that keeps ModelVersion objects in step with the MLflow registry."""

    def __init__(
        self,
        kube: Kube,
        registry: MlflowRegistry,
        *,
        poll_seconds: float = 10.0,
        resync_seconds: float = 60.0,
        max_backoff_seconds: float = 60.0,
        slow_seconds: float = 2.0,
        gc_grace_seconds: float = 60.0,
        concurrency: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.registry = registry
        self.poll_seconds = poll_seconds
        self.resync_seconds = resync_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.slow_seconds = slow_seconds
        self.gc_grace_seconds = gc_grace_seconds
        self.view = ClusterView()
        self.failures = 0
        """Failed or slow reads in a row (the backoff's exponent)."""
        self.next_poll = 0.0
        self._clock = clock
        self._started = clock()
        self._known: dict[str, _Known] = {}
        self._last_poll: float | None = None
        self._credit = 0.0
        """Models' worth of version re-reads owed to the resync (it accrues with time, so load is even)."""
        self._asked: set[str] = set()
        self._unreferenced_since: dict[tuple[str, str], float] = {}
        self._clashes: set[tuple[str, str]] = set()
        self._wake = asyncio.Event()
        self._limit = asyncio.Semaphore(concurrency)
        self._stopping = False

    # --- inputs -------------------------------------------------------------------------------

    def observe(self, kind: str, event_type: str | None, body: Mapping[str, Any]) -> None:
        """Feed one watch event (ModelDeployment, TrainingRun or ModelVersion); new models sync at once."""
        model, new_here = self.view.observe(kind, event_type, body)
        if model and new_here:
            self.trigger(model)

    def trigger(self, model: str) -> bool:
        """Resync a model now (a webhook said it changed); False if no namespace tracks it."""
        if not self.view.is_tracked(model):
            return False
        self._asked.add(model)
        if self.failures:
            self.next_poll = 0.0  # a delivery means MLflow is back: do the full poll now, not after the backoff
        self._wake.set()
        return True

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Poll forever (until :meth:`stop`)."""
        while not self._stopping:
            self._wake.clear()
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("registry sync failed")
                SYNC_ERRORS.labels("error").inc()
                self._asked.clear()
                self.next_poll = self._clock() + self.poll_seconds
            wait = self.next_poll - self._clock()
            if self._asked and not self.failures:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=max(0.01, min(wait, self.poll_seconds)))

    async def stop(self) -> None:
        """Stop the loop (the pass in flight is cancelled by the caller's task cancellation)."""
        self._stopping = True
        self._wake.set()

    async def step(self) -> None:
        """One pass: the full poll when it is due, else a read of the models webhooks or new objects asked for."""
        now = self._clock()
        tracked = self.view.tracked()
        TRACKED_MODELS.set(len(tracked))
        for model in [m for m in self._known if m not in tracked]:
            self._known.pop(model)
        self._asked &= tracked
        if now >= self.next_poll:
            await self.poll(tracked)
        elif self._asked and not self.failures:
            await self.refresh(set(self._asked))
        await self._collect_garbage(now)

    async def poll(self, tracked: set[str]) -> None:
        """Read every tracked model's head; re-read the versions of the changed, the asked-for and the stalest."""
        asked = set(self._asked)
        self._asked -= asked
        await self._sync(tracked, lambda heads, start: self._due(tracked, heads, start) | asked, full=True)

    async def refresh(self, models: set[str]) -> None:
        """Read these models now, head and versions (a webhook or a new reference asked)."""
        self._asked -= models
        await self._sync(models, lambda _heads, _start: set(models), full=False)

    async def _sync(
        self, models: set[str], choose: Callable[[Mapping[str, ModelHead], float], set[str]], *, full: bool
    ) -> None:
        start = self._clock()
        recovering = self.failures > 0
        try:
            heads = await self.registry.heads(models)
            reread = set(models) if recovering else choose(heads.heads, start) & models
            existing = {m: heads.heads[m] for m in reread if m in heads.heads}
            snapshots = await self.registry.snapshots(existing) if existing else {}
        except RegistryError as exc:
            await self._failed(models, exc)
            return
        seconds = max([heads.seconds, *(s.seconds for s in snapshots.values())])
        slow = self._pace(seconds, start, full=full)
        for model in reread:
            snapshot = snapshots.get(model) or ModelSnapshot(model, False, {}, {})
            self._known[model] = _Known(heads.heads.get(model), snapshot, start)
        fan_out = sorted(m for m in models if m in self._known)
        for model in fan_out:  # one at a time: two models that share a slug must not race for the names
            await self._create_all_missing(model)
        await asyncio.gather(*(self._fan_out(model, slow) for model in fan_out))
        SYNC_SECONDS.observe(self._clock() - start)

    def _due(self, tracked: set[str], heads: Mapping[str, ModelHead], now: float) -> set[str]:
        """Models whose versions to re-read: head changed (or never read), plus the stalest share of the rest.

        MLflow bumps a registered model's ``last_updated_timestamp`` on stage transitions and on
        version creation and deletion, and the head carries the aliases; version tags and
        descriptions change nothing in the head, so every model's versions are also re-read at
        least once per ``resync_seconds``, spread evenly over the polls in between.
        """
        changed = {m for m in tracked if m not in self._known or self._known[m].head != heads.get(m)}
        rest = sorted((m for m in tracked if m not in changed), key=lambda m: (self._known[m].read_at, m))
        if self.resync_seconds <= self.poll_seconds:
            return changed | set(rest)
        elapsed = now - self._last_poll if self._last_poll is not None else 0.0
        self._last_poll = now
        self._credit = min(self._credit + len(tracked) * elapsed / self.resync_seconds, float(len(tracked)))
        share = math.floor(self._credit)
        self._credit -= share
        overdue = {m for m in rest if now - self._known[m].read_at >= self.resync_seconds}
        return changed | overdue | set(rest[:share])

    def _pace(self, seconds: float, now: float, *, full: bool) -> str:
        """Count a slow answer as a failure for the backoff; schedule the next poll. Returns the slow note."""
        slow = ""
        if seconds > self.slow_seconds:
            self.failures += 1
            delay = backoff(self.poll_seconds, self.failures, self.max_backoff_seconds)
            slow = f"MLflow took {seconds:.1f}s to answer; polling every {delay:.0f}s until it is faster"
            log.warning("MLflow slow: %s", slow)
            self.next_poll = now + delay
        elif self.failures:
            log.info("MLflow answers again: every tracked model was read")
            self.failures = 0
            self.next_poll = now + self.poll_seconds
        elif full:
            self.next_poll = now + self.poll_seconds
        return slow

    async def _failed(self, models: set[str], exc: RegistryError) -> None:
        """MLflow could not be read: back off, and say so on every mirror of the models (nothing else changes)."""
        self.failures += 1
        delay = backoff(self.poll_seconds, self.failures, self.max_backoff_seconds)
        self.next_poll = self._clock() + delay
        if isinstance(exc, RegistryUnavailable):
            SYNC_ERRORS.labels("unavailable").inc()
            log.warning("MLflow unavailable (attempt %d, next in %.0fs): %s", self.failures, delay, exc)
            obs = modelversion.failed(
                "RegistryUnavailable", f"MLflow unavailable: {_short(exc)}; retrying in {delay:.0f}s"
            )
        else:
            SYNC_ERRORS.labels("error").inc()
            log.warning("MLflow refused the read: %s", exc)
            obs = modelversion.failed("RegistryError", f"MLflow refused the read: {_short(exc)}")
        for model in sorted(models):
            for namespace in self.view.namespaces(model):
                for body in self.view.mirrors(namespace, model):
                    await self._write(body, obs)

    async def _create_all_missing(self, model: str) -> None:
        """Discovery: a managed mirror for each version of the model in each namespace that references it."""
        snapshot = self._known[model].snapshot
        if snapshot.exists:
            for namespace in self.view.namespaces(model):
                if self.view.referenced(namespace, model):
                    await self._create_missing(namespace, model, snapshot)

    async def _fan_out(self, model: str, slow: str) -> None:
        """Bring every namespace's mirrors of one model in step with its last read (writes only what changed)."""
        snapshot = self._known[model].snapshot
        observe = _observer(snapshot, slow)
        async with self._limit:
            for namespace in self.view.namespaces(model):
                for body in self.view.mirrors(namespace, model):
                    await self._write(body, observe(modelversion.spec_of(body)[1]))

    # --- writes -------------------------------------------------------------------------------

    async def _create_missing(self, namespace: str, model: str, snapshot: ModelSnapshot) -> None:
        have = {modelversion.spec_of(b)[1] for b in self.view.mirrors(namespace, model)}
        for version in sorted(set(snapshot.versions) - have, key=int):
            manifest = modelversion_manifest(namespace, model, version)
            taken = self.view.model_named(namespace, manifest["metadata"]["name"])
            if taken is not None and taken != model:
                if (namespace, model) not in self._clashes:
                    self._clashes.add((namespace, model))
                    log.warning(
                        "not mirroring %s in %s: its ModelVersion names are taken by model %s (same slug %s)",
                        model,
                        namespace,
                        taken,
                        model_slug(model),
                    )
                continue
            try:
                stored = await off_loop(self.kube.apply, manifest)
            except Exception as exc:
                SYNC_ERRORS.labels("kube").inc()
                log.warning("could not create ModelVersion %s/%s: %s", namespace, manifest["metadata"]["name"], exc)
                continue
            self.view.stored(stored)

    async def _write(self, body: dict[str, Any], observation: modelversion.Observation) -> None:
        outcome = modelversion.reconcile(body, observation)
        meta = body.get("metadata") or {}
        if status_changed(body.get("status"), outcome.status):
            try:
                stored = await off_loop(
                    self.kube.patch_status, API_VERSION, KIND, meta["name"], meta["namespace"], outcome.status
                )
            except Exception as exc:
                SYNC_ERRORS.labels("kube").inc()
                log.warning("could not write status of ModelVersion %s/%s: %s", meta["namespace"], meta["name"], exc)
                return
            self.view.stored(stored)
        await post_events(self.kube, {**body, "apiVersion": API_VERSION, "kind": KIND}, outcome.events)

    async def _collect_garbage(self, now: float) -> None:
        """Delete managed mirrors of models no object in their namespace has referenced for the grace period."""
        orphans = self.view.unreferenced_managed()
        for key in [k for k in self._unreferenced_since if k not in orphans]:
            self._unreferenced_since.pop(key)
        for namespace, model in sorted(orphans):
            since = self._unreferenced_since.setdefault((namespace, model), now)
            if now - max(since, self._started) < self.gc_grace_seconds:
                continue
            for body in self.view.mirrors(namespace, model):
                if not _managed(body):
                    continue
                name = body["metadata"]["name"]
                try:
                    await off_loop(self.kube.delete, API_VERSION, KIND, name, namespace)
                except Exception as exc:
                    SYNC_ERRORS.labels("kube").inc()
                    log.warning("could not delete ModelVersion %s/%s: %s", namespace, name, exc)
                    continue
                log.info("deleted ModelVersion %s/%s: no object references model %s", namespace, name, model)
                self.view.observe(KIND, "DELETED", body)
            self._unreferenced_since.pop((namespace, model), None)


def _constant(obs: modelversion.Observation) -> Observer:
    return lambda _version: obs


def _observer(snapshot: ModelSnapshot, slow: str) -> Observer:
    def observe(version: str) -> modelversion.Observation:
        if not snapshot.exists:
            return modelversion.missing(f"registered model {snapshot.name} is not in MLflow")
        record = snapshot.versions.get(version)
        if record is None:
            return modelversion.missing(f"version {version} of {snapshot.name} is not in MLflow")
        return modelversion.found(record, snapshot.aliases, slow)

    return observe


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
