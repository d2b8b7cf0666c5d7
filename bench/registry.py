"""Registry sync cost: MLflow requests and MLflow server CPU per poll interval, and sync lag, for 10-500 tracked models.

    python bench/registry.py [--sizes 10,100,500] [--intervals 3] [--trials 8] [--poll-seconds 10]
                             [--operator-src DIR]

Uses the running test bed with MLflow (``mlflow server``, SQLite, one worker) or brings one up
with ``hack/testbed`` and takes it down after. Creates max(sizes) registered models with the
MLflow client, each with two versions (one run's tiny MLmodel artifact behind all of them) and
the alias ``champion`` on v1. Then starts the real operator (``python -m slipway -n <ns>``, poll
``--poll-seconds``, webhook secret set) and, for each N in ``--sizes`` (ascending), makes N models
tracked by creating the two ModelVersion objects of each (a user's own mirrors: the sync tracks
their model as it does a model a ModelDeployment names, without also running N rollouts), waits
until all 2N say ``Synced``, lets one poll interval pass, and measures over ``--intervals`` poll
intervals, with nothing but the operator talking to MLflow:

- **requests** per interval, counted on the server side: the lines MLflow's HTTP server writes to
  its access log (the test bed's ``logs/mlflow.log``) during the window, by endpoint;
- **MLflow server CPU** per interval, as a share of one core: utime+stime of the ``mlflow server``
  process and all its descendants (the uvicorn worker) from ``/proc``, before and after; an idle
  window measured first (no operator running) is printed and subtracted;
- **sync lag**, registry change → ModelVersion status: ``--trials`` alias moves (champion v1↔v2
  on a different model each time) with an MLflow webhook pointing at the operator, then the same
  with the webhook deleted, i.e. by polling (a random pause of up to one interval before each
  polling trial samples the poll phase evenly). The clock starts before the set-alias call and
  stops when both ModelVersions show the alias where it now is.

Baseline, measured in the same run: one **naive poll** — what the sync did per model before
batching, ``get_registered_model`` + ``search_model_versions`` for each model — timed the same
way over 50 models; "naive at N" is N of them per interval. Prints a table and the ratios
(requests and CPU against naive polling of the same N) and the target from issue 4: 500 tracked
models within 10 % of one core of the MLflow server. ``--operator-src`` runs another checkout's
operator (e.g. a worktree of an older commit, to measure before/after). Bounded: about 10 minutes
with the defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import common  # test bed, CRD, operator and percentile helpers
from kubernetes import client, config

from bed import lifecycle
from bed.state import State

REPO = common.REPO
GROUP, VERSION = common.GROUP, common.VERSION
ALIAS = "champion"
SECRET = "bench-" + uuid.uuid4().hex
NAIVE_SAMPLE = 50
REQUEST_LINE = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) (/[^ ?"]*)[^"]* HTTP/1\.[01]"')
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- measuring the MLflow server ---------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """The pid and every live descendant (gunicorn/uvicorn workers) of a process."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = (entry / "stat").read_text()
            ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


def cpu_seconds(root: int) -> float:
    """utime+stime of the process tree (children that exited and were reaped count in cutime/cstime)."""
    total = 0.0
    for pid in process_tree(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += sum(int(f) for f in fields[11:15]) / CLOCK_TICKS  # utime stime cutime cstime
    return total


class ServerMeter:
    """CPU seconds and access-log requests of the MLflow server between two points in time."""

    def __init__(self, pid: int, log: Path) -> None:
        self.pid, self.log = pid, log

    def mark(self) -> tuple[float, float, int]:
        return time.monotonic(), cpu_seconds(self.pid), self.log.stat().st_size

    def since(self, mark: tuple[float, float, int]) -> tuple[float, float, dict[str, int]]:
        """(wall seconds, server CPU seconds, requests by endpoint) since the mark."""
        wall, cpu, offset = mark
        now_wall, now_cpu = time.monotonic(), cpu_seconds(self.pid)
        with self.log.open("rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        counts: dict[str, int] = {}
        for match in REQUEST_LINE.finditer(text):
            endpoint = match.group(2).removeprefix("/api/2.0/mlflow/")
            counts[endpoint] = counts.get(endpoint, 0) + 1
        return now_wall - wall, now_cpu - cpu, counts


# --- the registry and the operator ------------------------------------------------------------


def create_models(mlflow: Any, count: int, tag: str) -> list[str]:
    """``count`` registered models with two versions each and champion → v1 (4 MLflow writes a model)."""
    run_id, source = common.tiny_model_run(mlflow)
    names = [f"bench-reg-{tag}-{i:03d}" for i in range(count)]

    def one(name: str) -> None:
        mlflow.create_registered_model(name)
        for _ in range(2):
            mlflow.create_model_version(name, source=source, run_id=run_id, await_creation_for=0)
        mlflow.set_registered_model_alias(name, ALIAS, "1")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, names))
    return names


def start_operator(state: State, namespace: str, poll: float, src: Path, log: Path) -> subprocess.Popen[bytes]:
    port = common.free_port()
    proc = common.spawn_operator(
        state.kubeconfig, namespace, port, log, common.mlflow_settings(state, poll, SECRET), src
    )
    proc.port = port  # type: ignore[attr-defined]
    common.wait_operator_ready(proc, port, log, "start_registry_sync")
    return proc


def slug(model: str) -> str:
    return re.sub(r"[^a-z0-9.-]+", "-", model.lower())[:63]


def create_mirrors(custom: client.CustomObjectsApi, namespace: str, models: list[str]) -> None:
    def one(model: str) -> None:
        for version in ("1", "2"):
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "ModelVersion",
                "metadata": {"name": f"{slug(model)}-v{version}"},
                "spec": {"model": model, "version": version},
            }
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", body)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, models))


def mirrors(custom: client.CustomObjectsApi, namespace: str) -> dict[str, dict[str, Any]]:
    items = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions")["items"]
    return {item["metadata"]["name"]: dict(item.get("status") or {}) for item in items}


def synced(status: dict[str, Any]) -> bool:
    return any(c["type"] == "Synced" and c["status"] == "True" for c in status.get("conditions") or [])


# --- the measurements -------------------------------------------------------------------------


def naive_poll(mlflow: Any, meter: ServerMeter, models: list[str]) -> tuple[float, float]:
    """(server CPU seconds, requests) of one naive poll of one model, averaged over the models given."""
    mark = meter.mark()
    for name in models:
        mlflow.get_registered_model(name)
        mlflow.search_model_versions(f"name = '{name}'")
    time.sleep(0.5)  # let the access log catch up
    _, cpu, counts = meter.since(mark)
    return cpu / len(models), sum(counts.values()) / len(models)


def window(meter: ServerMeter, seconds: float) -> tuple[float, float, dict[str, int]]:
    mark = meter.mark()
    time.sleep(seconds)
    return meter.since(mark)


def alias_lags(
    mlflow: Any,
    custom: client.CustomObjectsApi,
    namespace: str,
    models: list[str],
    where: dict[str, str],
    trials: int,
    pause: float,
    rng: random.Random,
) -> list[float]:
    """Move champion v1↔v2 on ``trials`` different models; seconds until both mirrors show it."""
    lags = []
    for i in range(trials):
        model = models[(i * 7919) % len(models)]
        to = "2" if where[model] == "1" else "1"
        away = "1" if to == "2" else "2"
        if pause:
            time.sleep(rng.uniform(0, pause))
        start = time.monotonic()
        mlflow.set_registered_model_alias(model, ALIAS, to)

        def seen(m: str = model, t: str = to, a: str = away) -> bool:
            new = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", f"{slug(m)}-v{t}")
            old = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, "modelversions", f"{slug(m)}-v{a}")
            return ALIAS in ((new.get("status") or {}).get("aliases") or []) and ALIAS not in (
                (old.get("status") or {}).get("aliases") or []
            )

        common.wait_for(f"alias move on {model}", seen, 120, 0.02)
        lags.append(time.monotonic() - start)
        where[model] = to
    return lags


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--sizes", default="10,100,500", help="tracked registered models, ascending")
    parser.add_argument("--intervals", type=int, default=3, help="poll intervals per measurement window")
    parser.add_argument("--trials", type=int, default=8, help="alias moves per lag mode and size")
    parser.add_argument("--poll-seconds", type=float, default=10.0)
    parser.add_argument("--operator-src", type=Path, default=REPO / "operator", help="the operator package's parent")
    args = parser.parse_args(argv)
    sizes = sorted(int(s) for s in args.sizes.split(","))
    poll = args.poll_seconds

    from mlflow import MlflowClient

    state, ours = common.testbed_up(("mlflow",))
    common.install_crds(state)
    api = config.new_client_from_config(config_file=state.kubeconfig)
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    os.environ["MLFLOW_TRACKING_URI"] = state.urls["mlflow"]
    mlflow = MlflowClient(state.urls["mlflow"])
    meter = ServerMeter(state.pids["mlflow"], Path(state.dir) / "logs" / "mlflow.log")
    logs = Path(tempfile.mkdtemp(prefix="slipway-bench-registry-"))
    tag = uuid.uuid4().hex[:6]
    rng = random.Random(4)
    ns = f"bench-registry-{tag}"
    print(f"registry sync cost: sizes {sizes}, poll {poll:g}s, {args.intervals} intervals a window; logs in {logs}")
    started = time.monotonic()
    models = create_models(mlflow, sizes[-1], tag)
    print(f"  created {len(models)} registered models x 2 versions in {time.monotonic() - started:.0f}s", flush=True)

    _, idle_cpu, idle_counts = window(meter, poll)
    idle = idle_cpu / poll
    naive_cpu, naive_requests = naive_poll(mlflow, meter, models[:NAIVE_SAMPLE])
    print(f"  idle MLflow server: {idle:.2%} of a core ({sum(idle_counts.values())} requests in {poll:g}s)")
    print(f"  one naive poll of one model: {naive_requests:.1f} requests, {naive_cpu * 1000:.1f} ms server CPU")

    core.create_namespace({"metadata": {"name": ns}})
    operator = start_operator(state, ns, poll, args.operator_src, logs / "operator.log")
    rows = []
    where = dict.fromkeys(models, "1")
    hook = None
    try:
        tracked = 0
        for n in sizes:
            create_mirrors(custom, ns, models[tracked:n])
            tracked = n
            t0 = time.monotonic()
            common.wait_for(
                f"{2 * n} ModelVersions synced",
                lambda k=n: sum(synced(s) for s in mirrors(custom, ns).values()) >= 2 * k,
                600,
                1.0,
            )
            print(f"  N={n}: all {2 * n} ModelVersions synced in {time.monotonic() - t0:.1f}s", flush=True)
            time.sleep(poll)
            wall, cpu, counts = window(meter, args.intervals * poll)
            intervals = wall / poll
            requests = sum(counts.values()) / intervals
            cpu_share = max(0.0, cpu / wall - idle)
            print(f"  N={n}: {requests:.1f} requests/interval {counts}, MLflow CPU {cpu_share:.2%} of a core")

            hook = mlflow.create_webhook(
                name=f"slipway-{ns}",
                url=f"http://127.0.0.1:{operator.port}/webhooks/mlflow",  # type: ignore[attr-defined]
                events=["model_version_alias.created", "model_version_alias.deleted"],
                secret=SECRET,
            )
            time.sleep(1.5)  # the test bed's MLflow caches its webhook list for 1 s
            by_hook = alias_lags(mlflow, custom, ns, models[:n], where, args.trials, 0.0, rng)
            mlflow.delete_webhook(hook.webhook_id)
            hook = None
            time.sleep(1.5)
            by_poll = alias_lags(mlflow, custom, ns, models[:n], where, args.trials, poll, rng)
            print(
                f"  N={n}: alias lag webhook p50 {common.percentile(by_hook, 0.5):.2f}s, "
                f"poll p50 {common.percentile(by_poll, 0.5):.2f}s",
                flush=True,
            )
            rows.append((n, requests, cpu_share, by_hook, by_poll))
    finally:
        if hook is not None:
            with contextlib.suppress(Exception):
                mlflow.delete_webhook(hook.webhook_id)
        common.stop_process(operator)
        with contextlib.suppress(Exception):
            core.delete_namespace(ns)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda m: _delete(mlflow, m), models))
        api.close()
        if ours:
            lifecycle.down()

    print(f"\nRegistry sync cost, poll every {poll:g}s (MLflow CPU net of idle {idle:.2%}; naive = 2 calls/model/poll)")
    print(
        "| N | requests / interval | naive | ratio | MLflow CPU (% of a core) | naive | ratio "
        "| lag by webhook p50 / p99 | lag by poll p50 / p99 |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for n, requests, cpu_share, by_hook, by_poll in rows:
        naive_req = n * naive_requests
        naive_share = n * naive_cpu / poll
        print(
            f"| {n} | {requests:.1f} | {naive_req:.0f} | {requests / naive_req:.3f} "
            f"| {cpu_share:.2%} | {naive_share:.1%} | {cpu_share / naive_share:.3f} "
            f"| {common.percentile(by_hook, 0.5) * 1000:.0f} / {common.percentile(by_hook, 0.99) * 1000:.0f} ms "
            f"| {common.percentile(by_poll, 0.5):.2f} / {common.percentile(by_poll, 0.99):.2f} s |"
        )
    last = rows[-1]
    verdict = "met" if last[2] <= 0.10 else "NOT met"
    print(f"target (issue 4): {last[0]} tracked models within 10% of one MLflow core: {last[2]:.2%} → {verdict}")
    print(f"lag by poll ÷ poll interval at N={last[0]}: p50 {common.percentile(last[4], 0.5) / poll:.2f}x")
    return 0


def _delete(mlflow: Any, model: str) -> None:
    with contextlib.suppress(Exception):
        mlflow.delete_registered_model(model)


if __name__ == "__main__":
    sys.exit(main())
