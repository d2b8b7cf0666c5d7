"""Kubernetes I/O for reconcilers: server-side apply, get, list, delete and status patches of any kind."""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import prometheus_client
import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import DynamicApiError, NotFoundError, ResourceNotFoundError
from kubernetes.dynamic.resource import Resource

from slipway.clients.applied import APPLIES, AppliedCache, key_of
from slipway.clients.watch_cache import READS, WatchCache, equality_selector

FIELD_MANAGER = "slipway"
REQUEST_TIMEOUT = (5.0, 30.0)
"""Seconds to connect and to wait for an answer: a call on a half-open connection fails instead of
holding a deployment's lock for ever (the kubernetes client sets no timeout of its own)."""
T = TypeVar("T")
REQUESTS = prometheus_client.Counter(
    "slipway_api_requests",
    "Requests this operator's Kubernetes client sent (kopf's watches aside), by verb and kind.",
    ["verb", "kind"],
)

Manifest = dict[str, Any]


class KindNotServed(RuntimeError):
    """The API server does not serve this apiVersion/kind (a CRD is missing)."""


class NotOwned(RuntimeError):
    """An object the operator would apply already exists and belongs to someone else: it is never adopted."""

    def __init__(self, kind: str, namespace: str | None, name: str) -> None:
        where = f" in namespace {namespace}" if namespace else ""
        super().__init__(
            f"{kind} {name}{where} already exists and is not owned by this resource: "
            "the operator does not adopt it; delete or rename it"
        )
        self.kind, self.namespace, self.name = kind, namespace, name


def owned_by(obj: dict[str, Any], uid: str | None) -> bool:
    """Whether an object carries an owner reference to ``uid``."""
    return uid is not None and any(
        ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or []
    )


KUBE_ERRORS: tuple[type[Exception], ...] = (
    DynamicApiError,
    ApiException,
    urllib3.exceptions.HTTPError,
    KindNotServed,
    NotOwned,
)
"""What a Kubernetes call raises when the API server refuses it or cannot be reached (not a bug of ours)."""


def _as_is(_client: object, data: Any) -> Any:
    """The dynamic client's answer as the API server's JSON decoded, not wrapped.

    Its default wraps every answer in a ``ResourceInstance`` (a tree of ``ResourceField``
    objects) that ``to_dict()`` then takes apart again: 30 times the cost of the JSON decoding
    for a ModelDeployment (1.3 ms against 0.04 ms), on every write of every pass.
    """
    return data


class Kube:
    """A thin, typed facade over the kubernetes dynamic client; every call returns plain dicts.

    Writes use server-side apply with one field manager, so re-applying the same manifest is a
    no-op and an operator killed mid-reconcile never duplicates a child (names are deterministic).
    """

    def __init__(
        self,
        api_client: client.ApiClient | None = None,
        applied: AppliedCache | None = None,
        timeout: tuple[float, float] = REQUEST_TIMEOUT,
        cache: WatchCache | None = None,
    ) -> None:
        self._api = api_client or load_api_client()
        self.cache = cache
        self._timeout = timeout
        self._dyn: DynamicClient | None = None
        self._lock = threading.Lock()
        self.applied = applied if applied is not None else AppliedCache()  # an empty cache is falsy

    @property
    def api_client(self) -> client.ApiClient:
        return self._api

    def _client(self) -> DynamicClient:
        with self._lock:
            if self._dyn is None:
                self._dyn = DynamicClient(self._api)
            return self._dyn

    def resource(self, api_version: str, kind: str) -> Resource:
        """The API resource serving apiVersion/kind (discovery is cached by the dynamic client)."""
        try:
            return self._client().resources.get(api_version=api_version, kind=kind)
        except ResourceNotFoundError as exc:
            raise KindNotServed(
                f"{api_version} {kind} is not served by the API server (is its CRD installed?)"
            ) from exc

    def apply(self, manifest: Manifest, *, force: bool = True) -> Manifest:
        """Server-side apply one manifest (field manager `slipway`) and return what the server stored."""
        meta = manifest["metadata"]
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        REQUESTS.labels("APPLY", manifest["kind"]).inc()
        out = res.server_side_apply(
            body=manifest,
            name=meta["name"],
            namespace=meta.get("namespace"),
            field_manager=FIELD_MANAGER,
            force_conflicts=force,
            _request_timeout=self._timeout,
            serializer=_as_is,
        )
        stored = self._wrote(out)
        self.applied.record(manifest, stored)
        APPLIES.labels(manifest["kind"], "applied").inc()
        return stored

    def ensure(self, manifest: Manifest) -> bool:
        """Apply unless this very manifest was applied and the object has not changed since; True if applied.

        See :mod:`slipway.clients.applied` for when "not changed since" is known.
        """
        if self.applied.unchanged(manifest):
            APPLIES.labels(manifest["kind"], "unchanged").inc()
            return False
        self.apply(manifest)
        return True

    def check_owned(self, manifests: list[Manifest], owner_uid: str | None) -> None:
        """Look before applying: raise :class:`NotOwned` for the first manifest whose object exists unowned by us.

        A forced server-side apply would otherwise take over an object of the same name that
        someone else made (and the garbage collector would delete it with the owner later).
        Objects this process applied and has not seen deleted or changed since (whatever the new
        manifest says) are known to be ours: no read. Kinds the watch cache holds are looked up
        there (every object of the kind, with its owner references): no read either. An object
        made by someone else in the moment before the apply can be missed either way (a read is
        as old as a watch event by the time the apply lands); the window is the watch's delay.
        """
        for manifest in manifests:
            if self.applied.known(key_of(manifest)):
                continue
            meta = manifest["metadata"]
            live = self.observed_get(manifest["apiVersion"], manifest["kind"], meta["name"], meta.get("namespace"))
            if live is not None and not owned_by(live, owner_uid):
                raise NotOwned(manifest["kind"], meta.get("namespace"), meta["name"])

    def delete_owned(
        self, api_version: str, kind: str, name: str, namespace: str | None, owner_uid: str | None
    ) -> bool:
        """Delete one object only if it is owned by ``owner_uid``; False if it was gone or is someone else's.

        Whose it is comes from the watch cache for the kinds it holds (no read), as in :meth:`check_owned`.
        """
        live = self.observed_get(api_version, kind, name, namespace)
        if live is None or not owned_by(live, owner_uid):
            self.applied.forget((api_version, kind, namespace or "", name))
            return False
        return self.delete(api_version, kind, name, namespace)

    def create(self, manifest: Manifest) -> Manifest:
        """Create one object (an Event, a TrainingRun from the CLI); the server's copy is returned."""
        res = self.resource(manifest["apiVersion"], manifest["kind"])
        namespace = manifest["metadata"].get("namespace")
        REQUESTS.labels("POST", manifest["kind"]).inc()
        return dict(res.create(body=manifest, namespace=namespace, _request_timeout=self._timeout, serializer=_as_is))

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        """One object, or None when it does not exist."""
        REQUESTS.labels("GET", kind).inc()
        try:
            out = self.resource(api_version, kind).get(
                name=name, namespace=namespace, _request_timeout=self._timeout, serializer=_as_is
            )
        except NotFoundError:
            return None
        return dict(out)

    def observed_get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        """One object as the watch cache holds it (kinds it does not hold: read now); None when it does not exist."""
        if self.cache is not None and self.cache.covers(api_version, kind):
            READS.labels(kind, "hit").inc()
            return self.cache.get(api_version, kind, name, namespace)
        READS.labels(kind, "miss").inc()
        return self.get(api_version, kind, name, namespace)

    def observed_list(
        self, api_version: str, kind: str, namespace: str, label_selector: str | None = None
    ) -> list[Manifest]:
        """Objects of a namespace with the labels (``a=b,c=d``) as the watch cache holds them (else read now)."""
        labels = equality_selector(label_selector)
        if self.cache is not None and labels is not None and self.cache.covers(api_version, kind):
            READS.labels(kind, "hit").inc()
            return self.cache.list(api_version, kind, namespace, labels)
        READS.labels(kind, "miss").inc()
        return self.list(api_version, kind, namespace, label_selector)

    def _wrote(self, stored: Manifest) -> Manifest:
        """The API server's answer to a write: the watch cache holds it at once (never an older copy after)."""
        if self.cache is not None:
            self.cache.observe(stored)
        return stored

    def list(
        self, api_version: str, kind: str, namespace: str | None = None, label_selector: str | None = None
    ) -> list[Manifest]:
        """Objects of a kind, in a namespace (or everywhere), optionally filtered by labels."""
        REQUESTS.labels("LIST", kind).inc()
        out = self.resource(api_version, kind).get(
            namespace=namespace, label_selector=label_selector, _request_timeout=self._timeout, serializer=_as_is
        )
        return list(out.get("items") or [])

    def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete one object (foreground children left to the garbage collector); False if it was gone."""
        self.applied.forget((api_version, kind, namespace or "", name))
        REQUESTS.labels("DELETE", kind).inc()
        try:
            self.resource(api_version, kind).delete(
                name=name, namespace=namespace, _request_timeout=self._timeout, serializer=_as_is
            )
        except NotFoundError:
            return False
        return True

    def patch_status(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None,
        status: dict[str, Any],
        resource_version: str | None = None,
    ) -> Manifest:
        """Merge-patch the status subresource.

        With ``resource_version``, only if the object is still at that version: otherwise the API
        server answers 409 (``ConflictError``) and nothing is written.
        """
        res = self.resource(api_version, kind).subresources["status"]
        REQUESTS.labels("PATCH", f"{kind}/status").inc()
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        out = res.patch(
            body=body,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            _request_timeout=self._timeout,
            serializer=_as_is,
        )
        return self._wrote(out)

    def merge_patch(
        self, api_version: str, kind: str, name: str, namespace: str | None, patch: dict[str, Any]
    ) -> Manifest:
        """Merge-patch an object (e.g. an annotation asking the operator to act)."""
        REQUESTS.labels("PATCH", kind).inc()
        out = self.resource(api_version, kind).patch(
            body=patch,
            name=name,
            namespace=namespace,
            content_type="application/merge-patch+json",
            _request_timeout=self._timeout,
            serializer=_as_is,
        )
        return self._wrote(out)


def error_message(exc: BaseException) -> str:
    """What went wrong in a Kubernetes call, in the API server's own words when it answered (they name the field)."""
    import json

    body = getattr(exc, "body", None)
    status = getattr(exc, "status", None)
    if body:
        try:
            text = str(json.loads(body).get("message", body))
        except (ValueError, AttributeError, TypeError):
            text = body.decode(errors="replace") if isinstance(body, bytes) else str(body)
        return f"{status}: {text}" if isinstance(status, int) else text
    return str(exc) or type(exc).__name__


def load_api_client() -> client.ApiClient:
    """An ApiClient from the in-cluster service account, else from KUBECONFIG / ~/.kube/config."""
    try:
        config.load_incluster_config()
        return client.ApiClient()
    except config.ConfigException:
        # KUBECONFIG is read now, not when the kubernetes package was imported.
        return config.new_client_from_config(config_file=os.environ.get("KUBECONFIG") or None)


async def off_loop(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run a blocking client call in a worker thread so the operator's event loop keeps serving."""
    return await asyncio.to_thread(functools.partial(fn, *args, **kwargs))
