"""Traffic through the real Gateway (Traefik): canary shares by weight, the A/B header, and route-rollback latency.

    python bench/traffic.py [--requests 2000] [--weights 10,25,50,75] [--trials 24]

Uses the running test bed (or brings one up and takes it down after). In a fresh namespace it
runs two predictors shaped like KServe's (``hack/predictor_pods.py``), version 1 (stable) and 2
(canary) of one small scikit-learn model, as real model-server processes on their own pod IPs
(the local kubelet), and an HTTPRoute like the operator's attached to the test bed's Gateway.
Every request is a V2 ``/infer`` sent to the Gateway's listener with the route's Host, as a
client's; the version that answered is read from the answer (``model_version``).

1. **Shares**: for each canary weight w the route is written (v1 = 100 - w, v2 = w), the first
   request after the write that reaches v2 (or 2 s) marks Traefik's new configuration, then
   ``--requests`` requests (8 client threads) are counted per version. Passes when each
   version's share is within ±3 points of its weight.
2. **A/B**: a second rule sends requests carrying ``x-variant: b`` to v2; ``--requests`` of
   them are counted (must all reach v2) next to as many without the header (which follow the
   weights).
3. **Rollback**: ``--trials`` times, with 50/50 flowing, the route is written with all weight on
   v1 (the write the operator makes on a rollback), timed; one client sends requests back to back
   from just before the write; the rollback is done when 200 consecutive answers come from v1,
   and its time is from the write's start to the sending of the first of those 200. Prints
   p50/p99 (nearest rank) of both.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from kubernetes import client as kube
from kubernetes import config as kubeconfig

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "hack"))

import predictor_pods  # noqa: E402
from common import percentile, testbed_up, wait_for  # noqa: E402

from bed import lifecycle  # noqa: E402
from bed.addons.gateway import GATEWAY_NAME, GATEWAY_NAMESPACE, THROTTLE, wait_for_route  # noqa: E402
from bed.controlplane import kubectl  # noqa: E402
from bed.state import State  # noqa: E402

BODY = {"inputs": [{"name": "input-0", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]}
PATH = "/v2/models/model/infer"
CONSECUTIVE = 200
THREADS = 8


def make_model(directory: Path) -> Path:
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=200).fit(x[:300], y[:300])
    path = directory / "m"
    mlflow.sklearn.save_model(clf, str(path), signature=infer_signature(x[:2], clf.predict(x[:2])))
    return path


class Bench:
    """The namespace, its two predictors and the route; clients to the Gateway."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.ns = f"bench-traffic-{uuid.uuid4().hex[:6]}"
        self.url = state.urls["gateway"]
        self.route: dict[str, Any] = {}
        self.host = ""
        self.local = threading.local()
        self.routes = kube.CustomObjectsApi(kubeconfig.new_client_from_config(config_file=state.kubeconfig))

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return kubectl(self.state, *args, input=input)

    def apply(self, items: list[dict[str, Any]]) -> float:
        started = time.perf_counter()
        self.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
        return time.perf_counter() - started

    def setup(self, model: Path) -> None:
        self.kubectl("create", "namespace", self.ns)
        for v in ("1", "2"):
            self.apply(predictor_pods.predictor_objects(f"digits-v{v}", self.ns, str(model), v))
        for v in ("1", "2"):
            wait_for(f"v{v} ready", lambda v=v: self.ready_endpoints(f"digits-v{v}-predictor") == 1, 300, 0.5)
        self.route = predictor_pods.http_route(
            "digits",
            self.ns,
            {"digits-v1": 50, "digits-v2": 50},
            (GATEWAY_NAMESPACE, GATEWAY_NAME),
            ("x-variant", "b", "digits-v2"),
        )
        self.host = self.route["spec"]["hostnames"][0]
        self.apply([self.route])
        wait_for_route(self.url, self.host, "/v2/models/model/ready")

    def ready_endpoints(self, service: str) -> int:
        out = json.loads(
            self.kubectl(
                "get", "endpointslices", "-n", self.ns, "-l", f"kubernetes.io/service-name={service}", "-o", "json"
            )
        )
        return sum(
            1 for s in out["items"] for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
        )

    def client(self) -> httpx.Client:
        c = getattr(self.local, "client", None)
        if c is None:
            c = self.local.client = httpx.Client(base_url=self.url, headers={"Host": self.host}, timeout=30)
        return c

    def one(self, headers: dict[str, str] | None = None) -> str:
        resp = self.client().post(PATH, json=BODY, headers=headers)
        resp.raise_for_status()
        return str(resp.json()["model_version"])

    def count(self, n: int, headers: dict[str, str] | None = None) -> Counter[str]:
        with ThreadPoolExecutor(THREADS) as pool:
            return Counter(pool.map(lambda _: self.one(headers), range(n)))

    def set_weights(self, v1: int, v2: int) -> float:
        """Patch the route's weights (one API call, what the operator's rollback write is); its duration."""
        refs = self.route["spec"]["rules"][0]["backendRefs"]
        refs[0]["weight"], refs[1]["weight"] = v1, v2
        started = time.perf_counter()
        self.routes.patch_namespaced_custom_object(
            "gateway.networking.k8s.io",
            "v1",
            self.ns,
            "httproutes",
            "digits",
            {"spec": {"rules": self.route["spec"]["rules"]}},
        )
        return time.perf_counter() - started

    def shares(self, weights: list[int], n: int) -> list[tuple[int, Counter[str]]]:
        out = []
        for w in weights:
            self.set_weights(100 - w, w)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and self.one() != "2":
                pass
            time.sleep(0.2)
            seen = self.count(n)
            out.append((w, seen))
            print(f"weight v2={w:>3}: v1 {seen['1'] / n:6.1%}  v2 {seen['2'] / n:6.1%}  (n={n})", file=sys.stderr)
        return out

    def rollback_trial(self) -> tuple[float, float]:
        """(route write seconds, write start → first of 200 consecutive v1 answers, seconds)."""
        self.set_weights(50, 50)
        wait_for("both versions answering", lambda: {self.one() for _ in range(20)} == {"1", "2"}, 10, 0)
        answers: list[tuple[float, str]] = []
        done = threading.Event()

        def client() -> None:
            run = 0
            while not done.is_set():
                sent = time.perf_counter()
                v = self.one()
                answers.append((sent, v))
                run = run + 1 if v == "1" else 0
                if run >= CONSECUTIVE and sent > start:
                    done.set()

        start = float("inf")
        thread = threading.Thread(target=client, daemon=True)
        thread.start()
        time.sleep(0.1)
        start = time.perf_counter()
        write = self.set_weights(100, 0)
        if not done.wait(30):
            raise TimeoutError("traffic never moved to v1")
        thread.join()
        first = answers[-CONSECUTIVE][0]
        return write, max(0.0, first - start)

    def teardown(self) -> None:
        self.kubectl("delete", "namespace", self.ns, "--wait=false")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000, help="requests per weight and per A/B arm")
    parser.add_argument("--weights", default="10,25,50,75", help="canary weights to measure")
    parser.add_argument("--trials", type=int, default=24, help="rollback trials (>= 20)")
    args = parser.parse_args(argv)
    state, ours = testbed_up(())
    bench = Bench(state)
    ok = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = make_model(Path(tmp))
            print(f"setting up two predictors in {bench.ns} …", file=sys.stderr)
            bench.setup(model)
            print("\n| canary weight | requests | v1 share | v2 share | off by (points) |\n|---|---|---|---|---|")
            for w, seen in bench.shares([int(w) for w in args.weights.split(",")], args.requests):
                n = sum(seen.values())
                off = abs(100 * seen["2"] / n - w)
                ok &= off <= 3
                print(f"| {w} % | {n} | {seen['1'] / n:.1%} | {seen['2'] / n:.1%} | {off:.1f} |")
            bench.set_weights(75, 25)
            time.sleep(0.5)
            with_header = bench.count(args.requests, {"x-variant": "b"})
            without = bench.count(args.requests)
            ok &= with_header == Counter({"2": args.requests})
            print(
                f"\nA/B (`x-variant: b` → v2, weights 75/25): with the header {with_header['2']}/{args.requests} "
                f"reached v2; without it {without['2']}/{args.requests} ({without['2'] / args.requests:.1%})."
            )
            writes, moves = [], []
            for i in range(args.trials):
                write, move = bench.rollback_trial()
                writes.append(write)
                moves.append(move)
                print(
                    f"rollback trial {i + 1}: write {write * 1000:.0f} ms, traffic {move * 1000:.0f} ms",
                    file=sys.stderr,
                )
            print(
                f"\n| rollback, {args.trials} trials | p50 | p99 |\n|---|---|---|\n"
                f"| route write (API server) | {percentile(writes, 0.5) * 1000:.0f} ms "
                f"| {percentile(writes, 0.99) * 1000:.0f} ms |\n"
                f"| write → {CONSECUTIVE} consecutive answers from v1 | {percentile(moves, 0.5) * 1000:.0f} ms "
                f"| {percentile(moves, 0.99) * 1000:.0f} ms |"
            )
            print(f"\n(Traefik providersThrottleDuration {THROTTLE})")
    finally:
        bench.teardown()
        if ours:
            lifecycle.down()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
