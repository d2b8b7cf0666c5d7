"""The objects the operator's watches last delivered, so a reconcile pass observes without asking the API server.

kopf already watches what a pass reads (ModelDeployments, ModelVersions, InferenceServices, the
predictor Deployments, and the children's kinds whose names a first apply checks): its indexing
handlers put each object here as it arrives (:mod:`slipway.handlers.watch_cache`), and a pass
reads its observations from memory
(:meth:`slipway.clients.kube.Kube.observed_get`, :meth:`~slipway.clients.kube.Kube.observed_list`).

- **Complete before use.** kopf runs no handler before every indexed kind has delivered its
  initial listing; the first handler to run marks the cache ``primed``. Until then every read
  goes to the API server.
- **Never older than what the operator wrote.** The objects the operator writes (a
  ModelDeployment's status, its annotations) go in as the API server answered, and an event
  older than the copy held (a smaller ``resourceVersion``: etcd's revision, which only grows)
  does not replace it. A pass therefore never starts from a status older than the operator's
  last write of it (passes on one object never overlap, and the operator alone writes its
  status). An alert's pass also makes its status write conditional on the copy's
  ``resourceVersion`` (a newer object: 409, the pass runs again on a fresh read).
- **Small.** Kinds read for a few fields keep only those (``KINDS``): metadata and the status
  fields the readiness read looks at; HorizontalPodAutoscalers and HTTPRoutes, metadata alone
  (existence and owner, for the ownership check before a first apply).
- **Held as JSON text.** Each object is kept as its JSON (a string), with its revision and
  labels beside it, and decoded afresh for each read (the caller's own copy, as fast as copying
  a tree of dicts). A string is a seventh of the memory of the same object as dicts and lists, and
  it is not a container: Python's cyclic garbage collector, which stops every thread while it
  walks all containers, never walks the cache (at ten thousand deployments, millions of dicts).
- **Lists by label in O(matches).** Objects are indexed by namespace and by each label, so a
  pass's list of one deployment's InferenceServices does not scan ten thousand others.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import prometheus_client

from slipway.api.names import API_VERSION

Manifest = dict[str, Any]
Kind = tuple[str, str]  # apiVersion, kind
Trim = Callable[[Mapping[str, Any]], Manifest]

READS = prometheus_client.Counter(
    "slipway_watch_cache_reads",
    "A pass's reads answered from the watch cache (hit) or sent to the API server (miss: kind not cached yet).",
    ["kind", "result"],
)
OBJECTS = prometheus_client.Gauge("slipway_watch_cache_objects", "Objects held in the watch cache.", ["kind"])
TOMBSTONES = 10_000
"""Deleted objects remembered (their last revision), so a write's late answer does not bring one back."""

_META_KEEP = ("name", "namespace", "uid", "resourceVersion", "generation", "labels", "ownerReferences")


def _metadata(obj: Mapping[str, Any]) -> Manifest:
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in _META_KEEP if k in meta}


def trim_deployment(obj: Mapping[str, Any]) -> Manifest:
    """A Deployment as the readiness read needs it: metadata and the replica counts of its status."""
    status = obj.get("status") or {}
    keep = {k: status[k] for k in ("replicas", "readyReplicas", "availableReplicas", "updatedReplicas") if k in status}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": _metadata(obj), "status": keep}


def trim_inference_service(obj: Mapping[str, Any]) -> Manifest:
    """An InferenceService as a pass observes it: metadata and its status conditions."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "metadata": _metadata(obj),
        "status": {"conditions": conditions},
    }


def trim_to_metadata(obj: Mapping[str, Any]) -> Manifest:
    """An object as the ownership check needs it: whether it exists, and who owns it."""
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": _metadata(obj)}


KINDS: dict[Kind, Trim | None] = {
    (API_VERSION, "ModelDeployment"): None,
    (API_VERSION, "ModelVersion"): None,
    ("serving.kserve.io/v1beta1", "InferenceService"): trim_inference_service,
    ("apps/v1", "Deployment"): trim_deployment,
    ("autoscaling/v2", "HorizontalPodAutoscaler"): trim_to_metadata,
    ("gateway.networking.k8s.io/v1", "HTTPRoute"): trim_to_metadata,
}
"""What a reconcile pass reads, and how much of each is kept (None: the whole object).

A trim picks fields without copying them: the cache keeps the JSON text it makes of them at once.

Every object of the children's kinds is held, the operator's or not: the ownership check before
a child's first apply asks the cache whether an object of that name exists and whose it is.
"""


def _revision(obj: Mapping[str, Any]) -> int | None:
    raw = (obj.get("metadata") or {}).get("resourceVersion")
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):  # not etcd's revision: order by arrival
        return None


_Held = tuple[int | None, tuple[tuple[str, str], ...], str]
"""One object as the cache holds it: its revision, its labels and its JSON. A plain tuple of strings and
numbers, which the garbage collector stops tracking (a NamedTuple it would keep walking)."""


def _mapping(value: Any) -> Any:
    """``json.dumps``'s fallback: kopf's mapping views as dicts."""
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _text(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), default=_mapping)


def equality_selector(selector: str | None) -> dict[str, str] | None:
    """``a=b,c=d`` as a dict ({} for none); None for anything else (set-based terms, ``!=``): not answered here."""
    if not selector:
        return {}
    out: dict[str, str] = {}
    for term in selector.split(","):
        key, sep, value = term.partition("=")
        key, value = key.strip(), value.strip().removeprefix("=")
        if not sep or not key or "!" in key or any(c in value for c in "!=()"):
            return None
        out[key] = value
    return out


class WatchCache:
    """Objects by kind, namespace and name, with a label index; thread-safe (passes run on threads)."""

    def __init__(self, kinds: Mapping[Kind, Trim | None]) -> None:
        self._trims = dict(kinds)
        self._lock = threading.Lock()
        self._objects: dict[Kind, dict[tuple[str, str], _Held]] = {kind: {} for kind in kinds}
        self._by_label: dict[tuple[Kind, str, str, str], set[str]] = defaultdict(set)
        self._deleted: OrderedDict[tuple[Kind, str, str], int | None] = OrderedDict()
        self.primed = False

    def kinds(self) -> Iterable[Kind]:
        """The kinds this cache holds."""
        return self._trims.keys()

    def covers(self, api_version: str, kind: str) -> bool:
        """Whether reads of this kind are answered here (it is cached, and the initial listings are in)."""
        return self.primed and (api_version, kind) in self._trims

    def observe(self, obj: Mapping[str, Any], deleted: bool = False) -> None:
        """An object as a watch event or a write's answer has it; an older copy than the one held is ignored."""
        kind = (str(obj.get("apiVersion")), str(obj.get("kind")))
        if kind not in self._trims:
            return
        meta = obj.get("metadata") or {}
        ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        trim = self._trims[kind]
        new = _revision(obj)
        labels = tuple(sorted((str(k), str(v)) for k, v in (meta.get("labels") or {}).items()))
        stored: _Held = (new, labels, "" if deleted else _text(trim(obj) if trim is not None else obj))
        with self._lock:
            objects = self._objects[kind]
            held = objects.get((ns, name))
            gone = self._deleted.get((kind, ns, name), -1) if held is None else -1
            old = held[0] if held is not None else gone
            if new is not None and old is not None and new <= old and (held is None or new < old):
                return  # older than the copy held, or than the deletion seen
            if held is not None:
                self._unindex(kind, ns, name, held)
            if deleted:
                objects.pop((ns, name), None)
                self._deleted[(kind, ns, name)] = new
                while len(self._deleted) > TOMBSTONES:
                    self._deleted.popitem(last=False)
            else:
                self._deleted.pop((kind, ns, name), None)
                objects[(ns, name)] = stored
                for key, value in labels:
                    self._by_label[(kind, ns, key, value)].add(name)
            OBJECTS.labels(kind[1]).set(len(objects))

    def _unindex(self, kind: Kind, ns: str, name: str, held: _Held) -> None:
        for key, value in held[1]:
            names = self._by_label.get((kind, ns, key, value))
            if names is not None:
                names.discard(name)
                if not names:
                    del self._by_label[(kind, ns, key, value)]

    def get(self, api_version: str, kind: str, name: str, namespace: str | None) -> Manifest | None:
        """A copy of the object held (None: the watch has not seen it, or saw it deleted)."""
        with self._lock:
            held = self._objects[(api_version, kind)].get((namespace or "", name))
        return dict(json.loads(held[2])) if held is not None else None

    def list(self, api_version: str, kind: str, namespace: str, labels: Mapping[str, str]) -> list[Manifest]:
        """Copies of the objects of a namespace carrying every label given (by the label index)."""
        key = (api_version, kind)
        with self._lock:
            objects = self._objects[key]
            if labels:
                sets = [self._by_label.get((key, namespace, k, v), set()) for k, v in labels.items()]
                names = set.intersection(*sets) if sets else set()
                hits = [objects[(namespace, n)][2] for n in sorted(names) if (namespace, n) in objects]
            else:
                hits = [o[2] for (ns, _), o in sorted(objects.items()) if ns == namespace]
        return [dict(json.loads(text)) for text in hits]

    def size(self, api_version: str, kind: str) -> int:
        """How many objects of a kind are held."""
        with self._lock:
            return len(self._objects.get((api_version, kind), {}))
