"""The whole test bed's life: ``up`` (reusing a running one), ``down``, ``restart`` of one process, its env lines."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

from bed.addons.gateway import gateway_env, start_gateway
from bed.addons.kserve import start_kserve
from bed.addons.mlflow import start_mlflow
from bed.addons.monitoring import start_prometheus
from bed.base import TestbedError, log
from bed.builds import ETCD_VERSION, GATEWAY_API_VERSION, KSERVE_VERSION, KUBERNETES_VERSION, KWOK_VERSION, build
from bed.controlplane import start_control_plane
from bed.procs import alive, exited, spawn
from bed.state import State, testbed_dir

EXTRAS = ("mlflow", "prometheus")


def is_up(state: State | None) -> bool:
    """Whether every process the state names is still running."""
    return bool(state and state.pids and all(alive(pid, state.identities[n]) for n, pid in state.pids.items()))


def up(with_extras: tuple[str, ...] = ()) -> State:
    """Start the test bed (reusing a running one that has every part asked for)."""
    tb = testbed_dir()
    existing = State.load(tb)
    wanted = {
        "kube-apiserver",
        "kserve-manager",
        *(("mlflow", "s3") if "mlflow" in with_extras else ()),
        *(("prometheus", "alertmanager") if "prometheus" in with_extras else ()),
    }
    if existing and is_up(existing) and wanted <= set(existing.pids):
        log(f"already up ({', '.join(existing.pids)})")
        return existing
    if existing:
        down()
    bins = build()
    started = time.monotonic()
    tb.mkdir(parents=True, exist_ok=True)
    state = State(
        dir=str(tb),
        started_at=time.time(),
        versions={
            "kubernetes": KUBERNETES_VERSION,
            "etcd": ETCD_VERSION,
            "kwok": KWOK_VERSION,
            "kserve": KSERVE_VERSION,
            "gateway-api-crds": GATEWAY_API_VERSION,
        },
    )
    state.save()
    try:
        start_control_plane(state, bins)
        start_kserve(state, bins.kserve_manager)  # KServe's own controller-manager, its config and webhooks
        start_gateway(state, Path(bins.traefik))
        if "mlflow" in with_extras:
            start_mlflow(state, bins.versitygw)
        if "prometheus" in with_extras:
            start_prometheus(state)
    except BaseException:
        down()
        raise
    state.save()
    log(f"up in {time.monotonic() - started:.1f}s: {', '.join(state.pids)}")
    return state


def down() -> None:
    """Stop every process the state file names, by pid, newest first."""
    tb = testbed_dir()
    state = State.load(tb)
    if state is None:
        log("nothing to stop")
        return
    for name, pid in reversed(list(state.pids.items())):
        if alive(pid, state.identities.get(name, "")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + 15
    for name, pid in reversed(list(state.pids.items())):
        while alive(pid, state.identities.get(name, "")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid, state.identities.get(name, "")):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
    (tb / "state.json").unlink(missing_ok=True)
    log(f"stopped {', '.join(state.pids) or 'nothing'}")


def restart(name: str, sig: int = signal.SIGKILL, state: State | None = None) -> State:
    """Kill one recorded process (SIGKILL by default) and start it again with the same command line and environment.

    For resilience tests, e.g. ``restart("kube-apiserver")`` (etcd and its data are kept). It does
    not wait for the new process to be ready; the caller checks what it needs.
    """
    state = state or State.load(testbed_dir())
    if state is None or not alive(state.pids.get(name, 0), state.identities.get(name, "")):
        raise TestbedError(f"{name} is not running in the test bed")
    pid = state.pids[name]
    argv = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:-1]]
    env = dict(e.decode().split("=", 1) for e in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in e)
    os.killpg(pid, sig)
    deadline = time.monotonic() + 30
    while not exited(pid, state.identities[name]):
        if time.monotonic() > deadline:
            raise TestbedError(f"{name} (pid {pid}) did not exit after signal {sig}")
        time.sleep(0.05)
    spawn(state, name, argv, env)
    return state


def env_lines(state: State) -> Iterator[str]:
    """Shell `export` lines for the running test bed."""
    yield f"export KUBECONFIG={state.kubeconfig}"
    if "mlflow" in state.urls:
        yield f"export MLFLOW_TRACKING_URI={state.urls['mlflow']}"
    if "prometheus" in state.urls:
        yield f"export SLIPWAY_PROMETHEUS_URL={state.urls['prometheus']}"
        yield f"export SLIPWAY_ALERTMANAGER_URL={state.urls['alertmanager']}"
    for key, value in gateway_env(state).items():
        yield f"export {key}={value}"
