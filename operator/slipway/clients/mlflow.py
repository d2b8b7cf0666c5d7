"""MLflow registry I/O: models, versions, aliases, stages, tags, run metrics and KServe-loadable storage URIs.

Reads come back as plain frozen dataclasses. The registry sync reads many models at once:

- :meth:`MlflowRegistry.heads` — one ``search_registered_models`` with ``name IN (…)`` per chunk
  of names (at most :data:`MAX_FILTER_CHARS` of filter, so the GET's URL stays short): each
  model's aliases (``search_registered_models`` returns them; ``search_model_versions`` leaves
  them empty on the SQL store) and ``last_updated_timestamp``, which MLflow bumps on a stage
  transition and on a version's creation or deletion — but not on an alias move (the aliases
  themselves are compared) nor on a version tag or description change (webhooks, or the sync's
  periodic full re-read, catch those);
- :meth:`MlflowRegistry.snapshots` — the versions of the models whose head changed, one
  ``search_model_versions`` with ``name IN (…)`` per chunk, paged.

:meth:`MlflowRegistry.snapshot` reads one model the old way (``get_registered_model`` plus
``search_model_versions``). What never changes once known — the finished run's metrics and
params, the resolved artifact location and the flavors of a version's artifacts — is fetched
once per version and cached, so a steady-state poll of any number of unchanged models costs one
request per chunk of names.

Storage URIs. KServe cannot load ``models:/``, ``runs:/`` or ``mlflow-artifacts:/`` URIs
(kserve#3555), so a version's ``source`` is resolved in two steps:

1. to the artifact URI MLflow stores — ``models:/m-<id>`` (an MLflow 3 logged model) → the
   logged model's ``artifact_location``; ``models:/<name>/<version|stage|latest>`` and
   ``models:/<name>@<alias>`` → that version's source, resolved again; ``runs:/<run>/<path>`` →
   the run's ``artifact_uri`` + ``/<path>``;
2. to what KServe's storage initializer understands (:func:`storage_uri`): ``s3://``, ``gs://``,
   ``pvc://``, ``hdfs://``, ``webhdfs://``, ``hf://``, ``oci://`` and ``http(s)://`` pass through;
   local paths become ``file://`` URIs; ``mlflow-artifacts:/<path>`` — and the same path behind
   the server's HTTP artifact proxy, ``<mlflow>/api/2.0/mlflow-artifacts/artifacts/<path>`` —
   become ``<artifacts destination>/<path>``, where the destination is the MLflow server's
   ``--artifacts-destination`` (``s3://bucket/prefix``, ``pvc://claim/prefix`` or a local
   folder), which the operator must be told because MLflow does not publish it. Anything else
   (``dbfs:/``, a relative path, a proxied URI without a configured destination) is unresolved.

All MLflow calls are blocking; they run on a small dedicated thread pool so that a hanging
MLflow server can neither block the event loop nor starve the Kubernetes client's threads.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import prometheus_client
import requests
import yaml
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException, RestException

log = logging.getLogger(__name__)
T = TypeVar("T")

MLFLOW_REQUESTS = prometheus_client.Counter(
    "slipway_mlflow_requests_total", "Requests the operator sent to MLflow, by client method.", ["method"]
)

PASS_THROUGH_SCHEMES = frozenset({"s3", "gs", "pvc", "hdfs", "webhdfs", "hf", "oci", "http", "https"})
PROXY_PATH = "/api/2.0/mlflow-artifacts/artifacts/"
TERMINAL_RUN_STATES = frozenset({"FINISHED", "FAILED", "KILLED"})
_TRANSIENT_CODES = frozenset(
    {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED", "DEADLINE_EXCEEDED", "ABORTED"}
)
_LOGGED_MODEL_ID = re.compile(r"^m-[0-9a-f]+$")
MAX_FILTER_CHARS = 6000
"""Longest ``name IN (…)`` filter one search sends (MLflow's server refuses URLs of about 64 KiB; proxies less)."""
SEARCH_MODELS_PAGE = 1000  # MLflow's maximum for search_registered_models
SEARCH_VERSIONS_PAGE = 10000


class RegistryError(Exception):
    """MLflow refused a request for a reason retrying will not fix (permissions, bad input)."""


MlflowError = RegistryError


class RegistryUnavailable(RegistryError):
    """MLflow is unreachable, timed out or answered 5xx/429: try again later."""


MlflowUnavailable = RegistryUnavailable


class NotFound(RegistryError):
    """The registered model, version, run or alias does not exist."""


@dataclass(frozen=True)
class RunData:
    """What the run that produced a version logged: final metrics and params."""

    run_id: str
    status: str
    artifact_uri: str
    metrics: Mapping[str, float] = field(default_factory=dict)
    params: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VersionInfo:
    """One registered-model version as the registry reports it (aliases filled in from the model)."""

    name: str
    version: str
    stage: str
    aliases: tuple[str, ...]
    tags: Mapping[str, str]
    run_id: str | None
    source: str | None
    status: str | None
    description: str | None
    created_ms: int | None
    updated_ms: int | None


@dataclass(frozen=True)
class VersionRecord:
    """A version plus what the operator derives from it: run data, storage URI and flavors."""

    info: VersionInfo
    run: RunData | None
    artifact_uri: str | None
    storage_uri: str | None
    flavors: tuple[str, ...]


@dataclass(frozen=True)
class ModelSnapshot:
    """A registered model and all its versions, read in one batched poll."""

    name: str
    exists: bool
    aliases: Mapping[str, str]
    """alias → version number."""
    versions: Mapping[str, VersionRecord]
    """version number → record."""
    seconds: float = 0.0
    """How long the two registry reads took."""


@dataclass(frozen=True)
class ModelHead:
    """What ``search_registered_models`` says of one registered model: enough to tell whether it changed."""

    name: str
    updated_ms: int | None
    aliases: Mapping[str, str]
    """alias → version number."""


@dataclass(frozen=True)
class Heads:
    """The heads of the registered models that exist among those asked for, from one batched read."""

    heads: Mapping[str, ModelHead]
    seconds: float = 0.0
    """The slowest single request of the read."""
    requests: int = 0


def name_filters(names: Collection[str], max_chars: int = MAX_FILTER_CHARS) -> Iterator[str]:
    """``name IN (…)`` filters covering ``names``, each at most ``max_chars`` long (one name may exceed it alone).

    MLflow parses the list with :func:`ast.literal_eval`, so Python string literals quote any
    name (``name = '…'`` cannot match a name with a quote in it; ``IN`` can).
    """
    chunk: list[str] = []
    size = len("name IN ()")
    for name in sorted(names):
        literal = repr(str(name))
        if chunk and size + len(literal) + 2 > max_chars:
            yield f"name IN ({', '.join(chunk)})"
            chunk, size = [], len("name IN ()")
        chunk.append(literal)
        size += len(literal) + 2
    if chunk:
        yield f"name IN ({', '.join(chunk)})"


def storage_uri(artifact_uri: str | None, artifacts_destination: str = "", tracking_uri: str = "") -> str | None:
    """Map an artifact URI stored by MLflow to one KServe can load, or None if there is none (see module doc)."""
    if not artifact_uri:
        return None
    parsed = urlparse(artifact_uri)
    scheme = parsed.scheme.lower()
    if scheme == "mlflow-artifacts":
        return _under_destination(parsed.path, artifacts_destination)
    if scheme in ("http", "https") and PROXY_PATH in parsed.path and _same_server(artifact_uri, tracking_uri):
        return _under_destination(parsed.path.split(PROXY_PATH, 1)[1], artifacts_destination)
    if scheme in PASS_THROUGH_SCHEMES:
        return artifact_uri
    if scheme == "file":
        return _file_uri(parsed.path) if parsed.path.startswith("/") else None
    if scheme == "" and artifact_uri.startswith("/"):
        return _file_uri(artifact_uri)
    return None


def _under_destination(path: str, destination: str) -> str | None:
    if not destination:
        return None
    rel = path.lstrip("/")
    base = destination.rstrip("/")
    if "://" not in base:
        base = _file_uri(base) if base.startswith("/") else ""
        if not base:
            return None
    return f"{base}/{rel}" if rel else base


def _file_uri(path: str) -> str:
    return "file://" + os.path.normpath(path)


def _same_server(uri: str, tracking_uri: str) -> bool:
    if not tracking_uri:
        return True
    a, b = urlparse(uri), urlparse(tracking_uri)
    return (a.scheme, a.netloc) == (b.scheme, b.netloc)


def _finite(metrics: Mapping[str, float]) -> dict[str, float]:
    """Kubernetes stores JSON, which has no NaN or infinity."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


def _quick_failing_http() -> None:
    """An operator polls again soon: make MLflow's HTTP client fail fast instead of retrying for minutes.

    MLflow reads these at each request; a value set by the deployment wins.
    """
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


def quote(value: str) -> str:
    """A value for the inside of a single-quoted string in an MLflow search filter."""
    return value.replace("\\", "\\\\").replace("'", "\\'")


class Mlflow:
    """The operator's one MLflow client: an MlflowClient, its thread pool, its errors mapped to ours, requests counted.

    Async: every call runs on the client's own threads (a hanging MLflow server blocks neither the
    event loop nor the Kubernetes client). The registry and the TrainingRun clients build on it;
    with ``connection`` they share that client's MlflowClient and threads (the operator makes one).
    """

    def __init__(
        self,
        tracking_uri: str,
        *,
        max_workers: int = 4,
        client_factory: Callable[[str], Any] | None = None,
        thread_name_prefix: str = "mlflow",
        connection: Mlflow | None = None,
    ) -> None:
        self.tracking_uri = tracking_uri
        self._owner = connection is None
        self._client: Any
        self._pool: ThreadPoolExecutor
        if connection is not None:
            self._client, self._pool = connection._client, connection._pool
            return
        _quick_failing_http()
        self._client = (client_factory or (lambda uri: MlflowClient(tracking_uri=uri, registry_uri=uri)))(tracking_uri)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=thread_name_prefix)

    def close(self) -> None:
        """Stop the thread pool (pending calls finish); a client sharing another's leaves it to its owner."""
        if self._owner:
            self._pool.shutdown(wait=False, cancel_futures=True)

    async def _off_loop(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """One MLflow client call, counted, with MLflow's errors mapped to ours."""
        MLFLOW_REQUESTS.labels(method).inc()
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except RestException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise NotFound(exc.message) from exc
            if exc.error_code in _TRANSIENT_CODES:
                raise RegistryUnavailable(f"MLflow {method}: {exc.message}") from exc
            raise RegistryError(f"MLflow {method}: {exc.message}") from exc
        except MlflowException as exc:  # transport failures: refused, reset, timed out
            raise RegistryUnavailable(f"MLflow {method}: {exc.message}") from exc
        except (requests.RequestException, OSError) as exc:
            raise RegistryUnavailable(f"MLflow {method}: {exc}") from exc


class MlflowRegistry(Mlflow):
    """The operator's MLflow model-registry client: batched reads, cached run data and artifacts, writes."""

    def __init__(
        self,
        tracking_uri: str,
        *,
        artifacts_destination: str = "",
        max_workers: int = 4,
        client_factory: Callable[[str], Any] | None = None,
        connection: Mlflow | None = None,
    ) -> None:
        super().__init__(tracking_uri, max_workers=max_workers, client_factory=client_factory, connection=connection)
        self.artifacts_destination = artifacts_destination
        self._lock = threading.Lock()
        self._runs: dict[str, RunData | None] = {}
        self._artifacts: dict[str, str] = {}
        self._flavors: dict[str, tuple[str, ...]] = {}

    # --- reads --------------------------------------------------------------------------------

    async def snapshot(self, name: str) -> ModelSnapshot:
        """The model with all its versions (exists=False if it is not registered)."""
        return await self._off_loop(self._snapshot, name)

    async def version(self, name: str, version: str) -> VersionRecord:
        """One version, with aliases (raises NotFound)."""
        return await self._off_loop(self._version, name, version)

    async def heads(self, names: Collection[str]) -> Heads:
        """Aliases and last-update time of each named model that exists (batched: one search per chunk)."""
        return await self._off_loop(self._heads, tuple(names))

    async def snapshots(self, heads: Mapping[str, ModelHead]) -> dict[str, ModelSnapshot]:
        """Full snapshots of the models whose heads are given (batched: one version search per chunk)."""
        return await self._off_loop(self._snapshots, dict(heads))

    def _heads(self, names: tuple[str, ...]) -> Heads:
        wanted, out, slowest, requests = set(names), {}, 0.0, 0
        for flt in name_filters(wanted):
            token: str | None = None
            while True:
                start = time.monotonic()
                page = self._call(
                    "search_registered_models", filter_string=flt, max_results=SEARCH_MODELS_PAGE, page_token=token
                )
                slowest, requests = max(slowest, time.monotonic() - start), requests + 1
                for model in page:
                    if str(model.name) in wanted:
                        aliases = {str(a): str(v) for a, v in (model.aliases or {}).items()}
                        updated = int(model.last_updated_timestamp) if model.last_updated_timestamp else None
                        out[str(model.name)] = ModelHead(str(model.name), updated, aliases)
                token = page.token or None
                if not token:
                    break
        return Heads(out, slowest, requests)

    def _snapshots(self, heads: dict[str, ModelHead]) -> dict[str, ModelSnapshot]:
        found: dict[str, list[Any]] = {name: [] for name in heads}
        seconds: dict[str, float] = dict.fromkeys(heads, 0.0)
        for flt in name_filters(heads):
            token: str | None = None
            while True:
                start = time.monotonic()
                page = self._call(
                    "search_model_versions", filter_string=flt, max_results=SEARCH_VERSIONS_PAGE, page_token=token
                )
                took = time.monotonic() - start
                for v in page:
                    if str(v.name) in found:
                        found[str(v.name)].append(v)
                        seconds[str(v.name)] = max(seconds[str(v.name)], took)
                token = page.token or None
                if not token:
                    break
        out = {}
        for name, head in heads.items():
            by_version = _invert(head.aliases)
            versions = {
                str(v.version): self._record(_version_info(v, by_version.get(str(v.version), ()))) for v in found[name]
            }
            out[name] = ModelSnapshot(name, True, dict(head.aliases), versions, seconds[name])
        return out

    def _snapshot(self, name: str) -> ModelSnapshot:
        start = time.monotonic()
        try:
            model = self._call("get_registered_model", name)
        except NotFound:
            return ModelSnapshot(name, False, {}, {}, time.monotonic() - start)
        found = self._call("search_model_versions", f"name = '{quote(name)}'")
        seconds = time.monotonic() - start
        aliases = {str(a): str(v) for a, v in (model.aliases or {}).items()}
        by_version = _invert(aliases)
        versions = {str(v.version): self._record(_version_info(v, by_version.get(str(v.version), ()))) for v in found}
        return ModelSnapshot(name, True, aliases, versions, seconds)

    def _version(self, name: str, version: str) -> VersionRecord:
        found = self._call("get_model_version", name, version)
        return self._record(_version_info(found, tuple(sorted(found.aliases or ()))))

    def _record(self, info: VersionInfo) -> VersionRecord:
        run = self._run(info.run_id) if info.run_id else None
        artifact_uri = self._artifact_uri(info.source, run)
        flavors = self._flavors_of(artifact_uri) if artifact_uri else ()
        uri = storage_uri(artifact_uri, self.artifacts_destination, self.tracking_uri)
        return VersionRecord(info, run, artifact_uri, uri, flavors)

    def _run(self, run_id: str) -> RunData | None:
        with self._lock:
            if run_id in self._runs:
                return self._runs[run_id]
        try:
            run = self._call("get_run", run_id)
        except NotFound:
            data: RunData | None = None
        else:
            data = RunData(
                run_id=run_id,
                status=str(run.info.status),
                artifact_uri=str(run.info.artifact_uri or ""),
                metrics=_finite(run.data.metrics or {}),
                params={str(k): str(v) for k, v in (run.data.params or {}).items()},
            )
        if data is None or data.status in TERMINAL_RUN_STATES:
            with self._lock:
                self._runs[run_id] = data
        return data

    def _artifact_uri(self, source: str | None, run: RunData | None, depth: int = 0) -> str | None:
        """The artifact URI behind a version's source (step 1 of the module doc); None if unresolvable."""
        if not source or depth > 3:
            return None
        with self._lock:
            if source in self._artifacts:
                return self._artifacts[source]
        parsed = urlparse(source)
        cacheable = True
        try:
            if parsed.scheme == "models":
                ref = source[len("models:/") :].lstrip("/")
                if _LOGGED_MODEL_ID.match(ref):
                    out: str | None = str(self._call("get_logged_model", ref).artifact_location)
                elif "@" in ref:
                    cacheable = False  # aliases move
                    model, alias = ref.split("@", 1)
                    mv = self._call("get_model_version_by_alias", model, alias)
                    out = self._artifact_uri(mv.source, None, depth + 1)
                else:
                    model, _, which = ref.rpartition("/")
                    if which.isdigit():
                        mv = self._call("get_model_version", model, which)
                    else:
                        cacheable = False  # stages and "latest" move
                        stages = None if which.lower() == "latest" else [which]
                        latest = self._call("get_latest_versions", model, stages)
                        if not latest:
                            return None
                        mv = max(latest, key=lambda v: int(v.version))
                    out = self._artifact_uri(mv.source, None, depth + 1)
            elif parsed.scheme == "runs":
                run_id, _, path = parsed.path.lstrip("/").partition("/")
                data = run if run is not None and run.run_id == run_id else self._run(run_id)
                out = f"{data.artifact_uri.rstrip('/')}/{path}".rstrip("/") if data and data.artifact_uri else None
            else:
                out = source
        except NotFound:
            out = None
        if out is not None and cacheable:
            with self._lock:
                self._artifacts[source] = out
        return out

    def _flavors_of(self, artifact_uri: str) -> tuple[str, ...]:
        """Flavor names from the version's MLmodel file (read once per artifact URI)."""
        with self._lock:
            if artifact_uri in self._flavors:
                return self._flavors[artifact_uri]
        from mlflow.artifacts import download_artifacts

        MLFLOW_REQUESTS.labels("download_artifacts").inc()
        try:
            with tempfile.TemporaryDirectory(prefix="slipway-mlmodel-") as tmp:
                path = download_artifacts(
                    artifact_uri=f"{artifact_uri.rstrip('/')}/MLmodel", dst_path=tmp, tracking_uri=self.tracking_uri
                )
                doc = yaml.safe_load(Path(path).read_text())
        except Exception as exc:
            if isinstance(exc, ImportError):
                log.warning("cannot read flavors of %s: %s (the operator lacks that store's client)", artifact_uri, exc)
                flavors: tuple[str, ...] = ()
            elif isinstance(exc, RestException | FileNotFoundError) or "404" in str(exc):
                flavors = ()  # no MLmodel: not an MLflow model, remember that
            else:
                log.info("could not read flavors of %s (will retry): %s", artifact_uri, exc)
                return ()
        else:
            flavors = tuple(sorted((doc or {}).get("flavors", {}) or {}))
        with self._lock:
            self._flavors[artifact_uri] = flavors
        return flavors

    # --- writes -------------------------------------------------------------------------------

    async def set_version_tag(self, name: str, version: str, key: str, value: str) -> None:
        """Set a tag on a model version."""
        await self._off_loop(self._call, "set_model_version_tag", name, version, key, value)

    async def delete_version_tag(self, name: str, version: str, key: str) -> None:
        """Remove a tag from a model version."""
        await self._off_loop(self._call, "delete_model_version_tag", name, version, key)

    async def set_alias(self, name: str, alias: str, version: str) -> None:
        """Point an alias at a version (creating it, or moving it from wherever it pointed)."""
        await self._off_loop(self._call, "set_registered_model_alias", name, alias, version)

    async def delete_alias(self, name: str, alias: str) -> None:
        """Remove an alias."""
        await self._off_loop(self._call, "delete_registered_model_alias", name, alias)

    async def transition_stage(self, name: str, version: str, stage: str, *, archive_existing: bool = False) -> None:
        """Move a version to a stage (None, Staging, Production, Archived) — MLflow's legacy stages API."""
        await self._off_loop(self._transition, name, version, stage, archive_existing)

    def _transition(self, name: str, version: str, stage: str, archive_existing: bool) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            self._call("transition_model_version_stage", name, version, stage, archive_existing)


def _invert(aliases: Mapping[str, str]) -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for alias, version in aliases.items():
        out.setdefault(version, []).append(alias)
    return {v: tuple(sorted(a)) for v, a in out.items()}


def _version_info(v: Any, aliases: tuple[str, ...]) -> VersionInfo:
    return VersionInfo(
        name=str(v.name),
        version=str(v.version),
        stage=str(v.current_stage or "None"),
        aliases=aliases,
        tags={str(k): str(val) for k, val in (v.tags or {}).items()},
        run_id=str(v.run_id) if v.run_id else None,
        source=str(v.source) if v.source else None,
        status=str(v.status) if v.status else None,
        description=str(v.description) if v.description else None,
        created_ms=int(v.creation_timestamp) if v.creation_timestamp else None,
        updated_ms=int(v.last_updated_timestamp) if v.last_updated_timestamp else None,
    )
