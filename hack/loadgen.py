"""A bounded load generator that sends requests to the Gateway like any client: held-out or shifted digits.

It is a client and nothing else: every request is a V2 ``/infer`` with a batch of digits sent
to the Gateway's listener (``Gateway.url``, on this machine's loopback), with the Host the
HTTPRoute's ``hostnames`` ask for (``Gateway.host``) and the path ``/v2/models/<model>/infer``.
The gateway (Traefik on the test bed) picks the version by the route's weights and matches; the
generator never reads the route. The version that answered is the ``model_version`` of the
answer; the model servers count what they answered themselves (``slipway_requests_total``,
scraped by Prometheus), which is what the demo's summary shows next to these counts.

- ``held-out``: the test split the training entry points never trained on (same split seed),
  so live accuracy per version can be measured against the labels;
- ``shifted``: the same digits with inverted ink and a little noise (``16 - x + N(0, 1)``,
  clipped to 0..16) — the kind of input shift the drift alert is for.

``segments`` make a share of the simulated clients carry a header or cookie (``--header
x-variant=b --share 0.3``), which the route's A/B rule matches. In ``held-out`` mode the
generator knows the true labels and, given a :class:`Labeller`, reports them as a labelling
service inside the cluster would: ``POST /v2/models/{m}/feedback`` with the answer's
``x-request-id`` and the deployment's bearer token, straight to the answering version's predictor
pods (from the endpoints of its Service), because the route forwards inference paths only. The
id is known only to the pod that issued it, so the report goes to each ready pod of that version
until one takes it.

It sends at most ``rate`` requests per second (never bursting to catch up) and stops after
``duration`` seconds, or earlier when told to.

``python hack/loadgen.py --gateway http://127.0.0.1:PORT --model digits --rate 8 --duration 60 --mode shifted``
prints one JSON summary line per version; ``hack/demo.py`` drives it as a library.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
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


class NotLoopback(ValueError):
    """A gateway URL that is not on this machine's loopback: the generator refuses to send there."""


def check_loopback(url: str) -> str:
    """The URL itself, if it points at loopback; NotLoopback otherwise."""
    host = urlparse(url).hostname or ""
    if host not in LOOPBACK:
        raise NotLoopback(f"{url}: the load generator only sends to loopback")
    return url


@dataclass(frozen=True)
class Gateway:
    """Where clients send: the Gateway listener's URL, the model's name in the path, the Host the route matches."""

    url: str
    model: str
    host: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Host": self.host} if self.host else {}


@dataclass(frozen=True)
class Labeller:
    """Who reports ground truth: the deployment's feedback token and where each version's predictor pods are."""

    token: str
    endpoints: Callable[[str], list[str]]
    """version → base URLs of its ready predictor pods."""


class PredictorEndpoints:
    """The ready pods of a version's predictor Service, from its EndpointSlices (as kube-proxy would route)."""

    def __init__(self, kubeconfig: str, namespace: str, deployment: str, ttl: float = 2.0) -> None:
        from kubernetes import client, config

        self.api = client.DiscoveryV1Api(config.new_client_from_config(config_file=kubeconfig))
        self.namespace, self.deployment, self.ttl = namespace, deployment, ttl
        self.cache: dict[str, tuple[float, list[str]]] = {}
        self.lock = threading.Lock()

    def __call__(self, version: str) -> list[str]:
        with self.lock:
            at, urls = self.cache.get(version, (0.0, []))
            if time.monotonic() - at < self.ttl:
                return urls
        service = f"{self.deployment}-v{version}-predictor"
        slices = self.api.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"kubernetes.io/service-name={service}", _request_timeout=5
        ).items
        urls = []
        for sl in slices:
            port = next((p.port for p in sl.ports or [] if p.port), None)
            for ep in sl.endpoints or []:
                if port and ep.conditions is not None and ep.conditions.ready:
                    urls += [f"http://{address}:{port}" for address in ep.addresses]
        with self.lock:
            self.cache[version] = (time.monotonic(), urls)
        return urls


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
    """Counts per answering version, requests no version answered, and when each request was answered by whom."""

    by_version: dict[str, VersionStats] = field(default_factory=dict)
    no_backend: int = 0
    unanswered: dict[str, int] = field(default_factory=dict)
    sent: list[tuple[float, str, Mode]] = field(default_factory=list)

    def version(self, v: str) -> VersionStats:
        return self.by_version.setdefault(v, VersionStats())

    def since(self, t: float) -> dict[str, int]:
        """Requests per answering version sent at or after monotonic time `t`."""
        out: dict[str, int] = {}
        for at, v, _ in self.sent:
            if at >= t:
                out[v] = out.get(v, 0) + 1
        return out


class LoadGenerator:
    """Sends batches of digits to the Gateway at a bounded rate for a bounded time."""

    def __init__(
        self,
        gateway: Gateway,
        *,
        rate: float = 8.0,
        batch: int = 16,
        duration: float = 60.0,
        mode: Mode = "held-out",
        seed: int = 0,
        segments: tuple[tuple[float, dict[str, str]], ...] = (),
        labeller: Labeller | None = None,
    ) -> None:
        if not 0 < rate <= MAX_RATE or not 0 < duration <= MAX_DURATION or not 0 < batch <= MAX_BATCH:
            raise ValueError(f"rate (0, {MAX_RATE}], duration (0, {MAX_DURATION}] s and batch (0, {MAX_BATCH}]")
        check_loopback(gateway.url)
        self.gateway = gateway
        self.rate, self.batch, self.duration = rate, batch, duration
        self.mode: Mode = mode
        if sum(share for share, _ in segments) > 1 or any(share < 0 for share, _ in segments):
            raise ValueError("segment shares must be non-negative and add up to at most 1")
        self.segments = segments
        self.labeller = labeller
        self.rng = random.Random(seed)
        self.np_rng = np.random.default_rng(seed)
        self.x, self.y = held_out_digits()
        self.stats = Stats()
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

    def _feedback(self, http: httpx.Client, resp: httpx.Response, version: str, labels: npt.NDArray[Any]) -> bool:
        """Report the true labels of an answered request to the pod of ``version`` that answered it."""
        request_id = resp.headers.get("x-request-id")
        if not request_id or self.labeller is None:
            return False
        for base in self.labeller.endpoints(version):
            try:
                answer = http.post(
                    f"{base}/v2/models/{self.gateway.model}/feedback",
                    json={"id": request_id, "labels": labels.tolist()},
                    headers={"Authorization": f"Bearer {self.labeller.token}"},
                )
            except httpx.HTTPError:
                continue
            if answer.status_code == 200:
                return True
        return False

    def _send(self, http: httpx.Client, mode: Mode, at: float, client: dict[str, str] | None = None) -> None:
        client = client or {}
        headers = {**self.gateway.headers(), **client}
        idx = self.np_rng.integers(0, len(self.x), self.batch)
        rows, labels = self.x[idx], self.y[idx]
        if mode == "shifted":
            rows = shift(rows, self.np_rng)
        try:
            resp = http.post(
                f"{self.gateway.url}/v2/models/{self.gateway.model}/infer", json=self._body(rows), headers=headers
            )
        except httpx.HTTPError:
            with self.lock:
                self.stats.unanswered["transport"] = self.stats.unanswered.get("transport", 0) + 1
            return
        version = resp.headers.get("x-model-version", "")  # the server names itself, errors included
        predictions: npt.NDArray[Any] | None = None
        if resp.status_code == 200:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                answer = resp.json()
                version = str(answer["model_version"])
                outputs = {o["name"]: o for o in answer.get("outputs", [])}
                predictions = np.asarray(outputs.get("predictions", {}).get("data", []))
        if not version:  # the gateway answered (no route, no ready endpoint) or a server failed before its model
            code = str(resp.status_code)
            with self.lock:
                self.stats.unanswered[code] = self.stats.unanswered.get(code, 0) + 1
                self.stats.no_backend += resp.status_code in (404, 502, 503)
            return
        if resp.status_code != 200:  # a model server's own error, counted on its version
            with self.lock:
                st = self.stats.version(version)
                st.requests += 1
                st.errors += 1
                st.codes[str(resp.status_code)] = st.codes.get(str(resp.status_code), 0) + 1
                self.stats.sent.append((at, version, mode))
            return
        fed_back = self._feedback(http, resp, version, labels) if self.labeller and mode == "held-out" else None
        with self.lock:
            st = self.stats.version(version)
            st.requests += 1
            st.matched += bool(client)
            self.stats.sent.append((at, version, mode))
            st.codes["200"] = st.codes.get("200", 0) + 1
            st.ok += 1
            st.instances += len(rows)
            if mode == "held-out" and predictions is not None and len(predictions) == len(labels):
                st.correct += int((predictions == labels).sum())
                st.labelled += len(labels)
            if fed_back is not None:
                st.feedback += fed_back
                st.feedback_failed += not fed_back

    def run(self) -> None:
        """The loop: send on a fixed tick, stop at the deadline."""
        start = time.monotonic()
        deadline = start + self.duration
        next_send = start
        with httpx.Client(timeout=5.0, trust_env=False) as http:
            while not self.stopped.is_set():
                now = time.monotonic()
                if now >= deadline:
                    break
                if now < next_send:
                    self.stopped.wait(next_send - now)
                    continue
                next_send = max(next_send + 1.0 / self.rate, now)  # never burst to catch up
                self._send(http, self.mode, now, self.client_headers())


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
                "matched": st.matched,
                "feedback": st.feedback,
                "feedback_failed": st.feedback_failed,
                "instances": st.instances,
                "accuracy": round(st.accuracy, 4) if st.accuracy is not None else None,
            }
        )
    rows.append({"version": None, "no_backend": stats.no_backend, "unanswered": stats.unanswered})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loadgen", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--gateway", required=True, help="the Gateway listener's URL (loopback)")
    parser.add_argument("--model", required=True, help="the model's name in the path (the ModelDeployment's name)")
    parser.add_argument("--host", default=None, help="the Host header (one of the HTTPRoute's hostnames)")
    parser.add_argument("--rate", type=float, default=8.0, help=f"requests per second (at most {MAX_RATE:g})")
    parser.add_argument("--batch", type=int, default=16, help=f"digits per request (at most {MAX_BATCH})")
    parser.add_argument("--duration", type=float, default=60.0, help=f"seconds (at most {MAX_DURATION:g})")
    parser.add_argument("--mode", choices=MODES, default="held-out")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--header", action="append", default=[], help="NAME=VALUE a share of clients carry")
    parser.add_argument("--cookie", action="append", default=[], help="NAME=VALUE a share of clients carry")
    parser.add_argument("--share", type=float, default=0.2, help="share of clients with those headers/cookies")
    parser.add_argument("--kubeconfig", default=None, help="to find the predictor pods feedback goes to")
    parser.add_argument("--namespace", default="default", help="the ModelDeployment's namespace")
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
    try:
        gen = LoadGenerator(
            Gateway(args.gateway, args.model, args.host),
            rate=args.rate,
            batch=args.batch,
            duration=args.duration,
            mode=args.mode,
            seed=args.seed,
            segments=segments,
            labeller=None
            if args.no_feedback or not args.kubeconfig
            else Labeller(args.feedback_token, PredictorEndpoints(args.kubeconfig, args.namespace, args.model)),
        )
    except ValueError as exc:
        parser.error(str(exc))
    gen.run()
    for row in summary(gen.stats):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
