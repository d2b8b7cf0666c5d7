"""A bounded loopback load generator that splits traffic as an HTTPRoute's weights say: held-out or shifted digits.

It plays the gateway and the clients at once. Every request picks a backend of the route's
first rule at random in proportion to its weight (a ``RequestMirror`` filter also copies that
percent of requests to the mirror backend, whose answers are discarded), maps the backend
Service ``<isvc>-predictor`` to the InferenceService's local URL (``status.address.url``, which
``hack/local_kserve.py`` writes) and sends a V2 ``/infer`` request with a batch of digits:

- ``held-out``: the test split the training entry points never trained on (same split seed),
  so live accuracy per version can be measured against the labels;
- ``shifted``: the same digits with inverted ink and a little noise (``16 - x + N(0, 1)``,
  clipped to 0..16) — the kind of input shift the drift alert is for.

Header and cookie matches are honoured: a rule of the route with ``matches`` (header matches,
Exact or RegularExpression, on e.g. ``x-variant`` or ``Cookie``) takes the requests that carry
them, like a gateway's precedence does; ``segments`` make a share of the simulated clients carry
a header or cookie (``--header x-variant=b --share 0.3``). In ``held-out`` mode the generator
knows the true labels, so after each answer it reports them to the version that answered
(``POST /v2/models/{m}/feedback`` with the response's ``x-request-id`` and the deployment's
feedback token, ``feedback_token`` / ``--feedback-token``): the serving runtime counts live
accuracy per version from that ground truth.

The route and the URLs are re-read every half second, so a weight change or a rollback is
followed within about that, like a gateway would; a request refused by a backend that just went
away is retried once wherever the route points after a fresh read (``retried_elsewhere`` counts
them on the version that refused). It only talks to loopback URLs, sends at most
``rate`` requests per second (never bursting to catch up) and stops after ``duration``
seconds, or earlier when told to.

``python hack/loadgen.py --kubeconfig K -n NS --route digits --rate 8 --duration 60 --mode shifted``
prints one JSON summary line per version; ``hack/demo.py`` drives it as a library.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlparse

import httpx
import numpy as np
import numpy.typing as npt

Mode = Literal["held-out", "shifted"]
MODES: tuple[Mode, ...] = ("held-out", "shifted")
LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_RATE, MAX_DURATION, MAX_BATCH = 100.0, 1800.0, 256
PREDICTOR_SUFFIX = "-predictor"
VERSION_LABEL = "ml.slipway.dev/version"


class NotLoopback(ValueError):
    """A backend URL that is not on this machine's loopback: the generator refuses to send there."""


@dataclass(frozen=True)
class Backend:
    """One weighted backend of the route, resolved to the model server behind it."""

    service: str
    version: str
    weight: int
    url: str | None
    model: str


@dataclass(frozen=True)
class HeaderCondition:
    """One header of an HTTPRouteMatch: Exact or RegularExpression (names compare case-insensitively)."""

    name: str
    value: str
    type: str = "Exact"

    def holds(self, headers: dict[str, str]) -> bool:
        got = next((v for k, v in headers.items() if k.lower() == self.name.lower()), None)
        if got is None:
            return False
        return re.search(self.value, got) is not None if self.type == "RegularExpression" else got == self.value


@dataclass(frozen=True)
class MatchRule:
    """A rule with matches: a request fitting any one match (all its headers) goes to its backends."""

    matches: tuple[tuple[HeaderCondition, ...], ...]
    backends: tuple[Backend, ...]

    def fits(self, headers: dict[str, str]) -> bool:
        return any(all(c.holds(headers) for c in match) for match in self.matches)


def _draw(backends: tuple[Backend, ...], rng: random.Random) -> Backend | None:
    live = [b for b in backends if b.weight > 0]
    if not live:
        return None
    return rng.choices(live, weights=[b.weight for b in live])[0]


@dataclass(frozen=True)
class RouteView:
    """The route as last read: the plain rule's weighted backends, its optional mirror, and rules with matches."""

    backends: tuple[Backend, ...] = ()
    mirror: tuple[Backend, int] | None = None
    matched: tuple[MatchRule, ...] = ()

    def pick(self, rng: random.Random, headers: dict[str, str] | None = None) -> Backend | None:
        """A backend for a request with these headers: a fitting rule with matches (the one with the
        most header conditions, as Gateway API precedence has it) or else the plain rule, drawn by weight
        (None when every weight is 0 or there is no route)."""
        if headers:
            fitting = [r for r in self.matched if r.fits(headers)]
            if fitting:
                best = max(fitting, key=lambda r: max(len(m) for m in r.matches))
                return _draw(best.backends, rng)
        return _draw(self.backends, rng)

    def weights(self) -> dict[str, int]:
        """version → weight."""
        return {b.version: b.weight for b in self.backends}


def check_loopback(url: str) -> str:
    """The URL itself, if it points at loopback; NotLoopback otherwise."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise NotLoopback(f"{url}: the load generator only sends to loopback")
    return url


def _model_name(isvc: dict[str, Any]) -> str:
    containers = ((isvc.get("spec") or {}).get("predictor") or {}).get("containers") or [{}]
    args = [str(a) for a in containers[0].get("args") or []]
    for i, a in enumerate(args[:-1]):
        if a == "--model-name":
            return args[i + 1]
    return str(isvc["metadata"]["name"])


class RouteReader:
    """Reads the HTTPRoute and the InferenceServices behind its backends from the API server."""

    def __init__(self, kubeconfig: str, namespace: str, route: str) -> None:
        from kubernetes import client, config

        self.api = client.CustomObjectsApi(config.new_client_from_config(config_file=kubeconfig))
        self.namespace = namespace
        self.route = route

    def _backend(self, ref: dict[str, Any], isvcs: dict[str, dict[str, Any]], weight: int) -> Backend:
        service = str(ref.get("name", ""))
        isvc = isvcs.get(service.removesuffix(PREDICTOR_SUFFIX))
        if isvc is None:
            return Backend(service, service, weight, None, "")
        url = ((isvc.get("status") or {}).get("address") or {}).get("url")
        version = (isvc["metadata"].get("labels") or {}).get(VERSION_LABEL) or service
        return Backend(service, str(version), weight, check_loopback(url) if url else None, _model_name(isvc))

    def read(self) -> RouteView:
        """The route now (an empty view when the route does not exist yet)."""
        from kubernetes.client.exceptions import ApiException

        try:
            route = self.api.get_namespaced_custom_object(
                "gateway.networking.k8s.io", "v1", self.namespace, "httproutes", self.route
            )
        except ApiException as exc:
            if exc.status == 404:
                return RouteView()
            raise
        rules = (route.get("spec") or {}).get("rules") or [{}]
        listed = self.api.list_namespaced_custom_object(
            "serving.kserve.io", "v1beta1", self.namespace, "inferenceservices"
        )
        isvcs = {str(i["metadata"]["name"]): i for i in listed.get("items") or []}

        def backends_of(rule: dict[str, Any]) -> tuple[Backend, ...]:
            return tuple(self._backend(ref, isvcs, int(ref.get("weight", 1))) for ref in rule.get("backendRefs") or [])

        plain = next((r for r in rules if not _header_matches(r)), rules[0])
        mirror = None
        for f in plain.get("filters") or []:
            if f.get("type") == "RequestMirror":
                spec = f.get("requestMirror") or {}
                mirror = (self._backend(spec.get("backendRef") or {}, isvcs, 0), int(spec.get("percent", 100)))
        matched = tuple(MatchRule(_header_matches(r), backends_of(r)) for r in rules if _header_matches(r))
        return RouteView(backends_of(plain), mirror, matched)


def _header_matches(rule: dict[str, Any]) -> tuple[tuple[HeaderCondition, ...], ...]:
    """A rule's matches that test headers (path-only matches are the plain rule's concern)."""
    out = []
    for match in rule.get("matches") or []:
        headers = tuple(
            HeaderCondition(str(h.get("name", "")), str(h.get("value", "")), str(h.get("type", "Exact")))
            for h in match.get("headers") or []
        )
        if headers:
            out.append(headers)
    return tuple(out)


def held_out_digits() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The test split of the training entry points (default fractions and split seed): never trained on."""
    from slipway_training.config import TrainConfig
    from slipway_training.data import load_digits

    cfg = TrainConfig()
    digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=cfg.split_seed)
    return digits.test.x, digits.test.y


def shift(x: npt.NDArray[np.float32], rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Inverted ink plus a little noise, clipped to the pixel range 0..16."""
    return np.clip(16.0 - x + rng.normal(0.0, 1.0, x.shape), 0.0, 16.0).astype(np.float32)


@dataclass
class VersionStats:
    """What one version answered."""

    requests: int = 0
    ok: int = 0
    errors: int = 0
    instances: int = 0
    correct: int = 0
    labelled: int = 0
    retried: int = 0
    matched: int = 0
    feedback: int = 0
    feedback_failed: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None


@dataclass
class Stats:
    """Counts per version, requests that found no backend, and when each request went where."""

    by_version: dict[str, VersionStats] = field(default_factory=dict)
    no_backend: int = 0
    mirrored: int = 0
    sent: list[tuple[float, str, Mode]] = field(default_factory=list)

    def version(self, v: str) -> VersionStats:
        return self.by_version.setdefault(v, VersionStats())

    def since(self, t: float) -> dict[str, int]:
        """Requests per version sent at or after monotonic time `t`."""
        out: dict[str, int] = {}
        for at, v, _ in self.sent:
            if at >= t:
                out[v] = out.get(v, 0) + 1
        return out


class LoadGenerator:
    """Sends batches of digits at a bounded rate for a bounded time, split as the route says."""

    def __init__(
        self,
        read_route: Callable[[], RouteView],
        *,
        rate: float = 8.0,
        batch: int = 16,
        duration: float = 60.0,
        mode: Mode = "held-out",
        seed: int = 0,
        refresh_seconds: float = 0.5,
        segments: tuple[tuple[float, dict[str, str]], ...] = (),
        feedback: bool = True,
        feedback_token: str = "",
    ) -> None:
        if not 0 < rate <= MAX_RATE or not 0 < duration <= MAX_DURATION or not 0 < batch <= MAX_BATCH:
            raise ValueError(f"rate (0, {MAX_RATE}], duration (0, {MAX_DURATION}] s and batch (0, {MAX_BATCH}]")
        self.read_route = read_route
        self.rate, self.batch, self.duration = rate, batch, duration
        self.mode: Mode = mode
        self.refresh_seconds = refresh_seconds
        if sum(share for share, _ in segments) > 1 or any(share < 0 for share, _ in segments):
            raise ValueError("segment shares must be non-negative and add up to at most 1")
        self.segments = segments
        self.feedback = feedback
        self.feedback_token = feedback_token
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.x, self.y = held_out_digits()
        self.stats = Stats()
        self.view = RouteView()
        self.stopped = threading.Event()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def start(self) -> LoadGenerator:
        """Run in a daemon thread."""
        self.thread = threading.Thread(target=self.run, name="loadgen", daemon=True)
        self.thread.start()
        return self

    def stop(self) -> Stats:
        """Stop (at most one request later) and return the counts."""
        self.stopped.set()
        if self.thread is not None:
            self.thread.join(timeout=15)
        return self.stats

    def _body(self, rows: npt.NDArray[np.float32]) -> dict[str, Any]:
        tensor = {"name": "input-0", "shape": list(rows.shape), "datatype": "FP32", "data": rows.ravel().tolist()}
        return {"inputs": [tensor]}

    def client_headers(self) -> dict[str, str]:
        """The headers of one simulated client: a segment's (by its share of clients) or none."""
        draw = self.rng.random()
        for share, headers in self.segments:
            if draw < share:
                return dict(headers)
            draw -= share
        return {}

    def _feedback(self, http: httpx.Client, backend: Backend, resp: httpx.Response, labels: npt.NDArray[Any]) -> bool:
        """Report the true labels of an answered request to the version that answered it."""
        request_id = resp.headers.get("x-request-id")
        if not request_id:
            return False
        try:
            answer = http.post(
                f"{backend.url}/v2/models/{backend.model}/feedback",
                json={"id": request_id, "labels": labels.tolist()},
                headers={"Authorization": f"Bearer {self.feedback_token}"},
            )
        except httpx.HTTPError:
            return False
        return answer.status_code == 200

    def _send(
        self, http: httpx.Client, backend: Backend, mode: Mode, at: float, headers: dict[str, str] | None = None
    ) -> None:
        headers = headers or {}
        idx = self.np_rng.integers(0, len(self.x), self.batch)
        rows, labels = self.x[idx], self.y[idx]
        if mode == "shifted":
            rows = shift(rows, self.np_rng)
        if self.view.mirror is not None and self.view.mirror[0].url and self.rng.random() * 100 < self.view.mirror[1]:
            mirror = self.view.mirror[0]
            try:  # a mirror's answer is discarded, as a gateway does
                http.post(f"{mirror.url}/v2/models/{mirror.model}/infer", json=self._body(rows), headers=headers)
                self.stats.mirrored += 1
            except httpx.HTTPError:
                pass
        with self.lock:
            st = self.stats.version(backend.version)
            st.requests += 1
            st.matched += bool(headers) and backend in {b for r in self.view.matched for b in r.backends}
            self.stats.sent.append((at, backend.version, mode))
        code = "transport"
        answered = backend
        fed_back: bool | None = None
        predictions: npt.NDArray[Any] | None = None
        try:
            try:
                resp = http.post(
                    f"{backend.url}/v2/models/{backend.model}/infer", json=self._body(rows), headers=headers
                )
            except httpx.ConnectError:
                # The backend went away (a rollback removes the canary): re-read the route and retry once
                # where it points now, as a gateway retries a refused connection on another endpoint.
                self.view = self.read_route()
                again = self.view.pick(self.rng, headers)
                if again is None or not again.url or again.url == backend.url:
                    raise
                with self.lock:
                    st.requests -= 1
                    st.retried += 1
                    st = self.stats.version(again.version)
                    st.requests += 1
                    self.stats.sent[-1] = (at, again.version, mode)
                resp = http.post(f"{again.url}/v2/models/{again.model}/infer", json=self._body(rows), headers=headers)
                answered = again
            code = str(resp.status_code)
            if resp.status_code == 200:
                outputs = {o["name"]: o for o in resp.json().get("outputs", [])}
                predictions = np.asarray(outputs.get("predictions", {}).get("data", []))
                if self.feedback and mode == "held-out":
                    fed_back = self._feedback(http, answered, resp, labels)
        except (httpx.HTTPError, ValueError):
            pass
        with self.lock:
            st.codes[code] = st.codes.get(code, 0) + 1
            if code == "200":
                st.ok += 1
                st.instances += len(rows)
                if mode == "held-out" and predictions is not None and len(predictions) == len(labels):
                    st.correct += int((predictions == labels).sum())
                    st.labelled += len(labels)
                if fed_back is not None:
                    st.feedback += fed_back
                    st.feedback_failed += not fed_back
            else:
                st.errors += 1

    def run(self) -> None:
        """The loop: refresh the route every second, send on a fixed tick, stop at the deadline."""
        start = time.monotonic()
        deadline = start + self.duration
        next_send = next_refresh = start
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while not self.stopped.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if now >= next_refresh:
                    try:
                        self.view = self.read_route()
                    except Exception as exc:  # the API server busy: keep the last view
                        print(f"loadgen: reading the route failed: {exc}", file=sys.stderr)
                    next_refresh = now + self.refresh_seconds
                if now < next_send:
                    self.stopped.wait(min(next_send, next_refresh) - now)
                    continue
                next_send = max(next_send + 1.0 / self.rate, now)  # never burst to catch up
                headers = self.client_headers()
                backend = self.view.pick(self.rng, headers)
                if backend is None or not backend.url:
                    with self.lock:
                        self.stats.no_backend += 1
                    continue
                self._send(http, backend, self.mode, now, headers)


def summary(stats: Stats) -> list[dict[str, Any]]:
    """One plain dict per version (and one for requests without a backend)."""
    rows: list[dict[str, Any]] = []
    for version, st in sorted(stats.by_version.items()):
        rows.append(
            {
                "version": version,
                "requests": st.requests,
                "ok": st.ok,
                "errors": st.errors,
                "codes": st.codes,
                "retried_elsewhere": st.retried,
                "matched": st.matched,
                "feedback": st.feedback,
                "feedback_failed": st.feedback_failed,
                "instances": st.instances,
                "accuracy": round(st.accuracy, 4) if st.accuracy is not None else None,
            }
        )
    rows.append({"version": None, "no_backend": stats.no_backend, "mirrored": stats.mirrored})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadgen", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("-n", "--namespace", required=True)
    parser.add_argument("--route", required=True, help="the HTTPRoute (named like the ModelDeployment)")
    parser.add_argument("--rate", type=float, default=8.0, help=f"requests per second (at most {MAX_RATE:g})")
    parser.add_argument("--batch", type=int, default=16, help=f"digits per request (at most {MAX_BATCH})")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds (at most {MAX_DURATION:g})")
    parser.add_argument("--mode", choices=MODES, default="held-out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE a share of clients carry")
    parser.add_argument("--cookie", action="append", default=[], help="NAME=VALUE a share of clients carry")
    parser.add_argument("--share", type=float, default=0.2, help="share of clients with those headers/cookies")
    parser.add_argument("--no-feedback", action="store_true", help="do not report true labels")
    parser.add_argument(
        "--feedback-token",
        default=os.environ.get("SLIPWAY_FEEDBACK_TOKEN", ""),
        help="bearer token of the deployment's feedback (default $SLIPWAY_FEEDBACK_TOKEN)",
    )
    args = parser.parse_args(argv)
    carried = dict(h.split("=", 1) for h in args.header)
    if args.cookie:
        carried["Cookie"] = "; ".join(args.cookie)
    segments = ((args.share, carried),) if carried else ()
    reader = RouteReader(args.kubeconfig, args.namespace, args.route)
    try:
        gen = LoadGenerator(
            reader.read,
            rate=args.rate,
            batch=args.batch,
            duration=args.duration,
            mode=args.mode,
            seed=args.seed,
            segments=segments,
            feedback=not args.no_feedback,
            feedback_token=args.feedback_token,
        )
    except ValueError as exc:
        parser.error(str(exc))
    gen.run()
    for row in summary(gen.stats):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
