"""The local demo: the test bed with MLflow, Prometheus and Alertmanager, Slipway's CRDs, the operator, the story.

Run by `make demo` (through hack/demo, which does the set-up first). It prints a timeline as
things happen and a summary at the end, exits 0 on success and cleans up after itself
(`--keep` leaves the test bed and the operator running for a look around).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))

import testbed as tb  # noqa: E402

T0 = time.monotonic()


def say(msg: str) -> None:
    """One timeline line, stamped with seconds since the demo started."""
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


def kubectl(state: tb.State, *args: str, input: str | None = None, check: bool = True) -> str:
    proc = subprocess.run(
        [state.kubectl, "--kubeconfig", state.kubeconfig, *args],
        input=input,
        capture_output=True,
        text=True,
        check=False,
    )
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def start_operator(state: tb.State, namespace: str) -> tuple[subprocess.Popen[bytes], int]:
    """`python -m slipway` against the test bed, watching the demo namespace."""
    port = tb.free_port()
    env = dict(
        os.environ,
        KUBECONFIG=state.kubeconfig,
        SLIPWAY_MLFLOW_URI=state.urls.get("mlflow", ""),
        SLIPWAY_PROMETHEUS_URL=state.urls.get("prometheus", ""),
        SLIPWAY_HTTP_PORT=str(port),
        SLIPWAY_HTTP_HOST="127.0.0.1",
        SLIPWAY_MLFLOW_POLL_SECONDS="2",
    )
    log = open(Path(state.dir) / "logs" / "operator.log", "ab")  # noqa: SIM115 - lives as long as the process
    proc = subprocess.Popen(
        [sys.executable, "-m", "slipway", "-n", namespace, "--liveness", ""],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"demo: the operator exited ({proc.returncode}); see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                return proc, port
        except OSError:
            time.sleep(0.3)
    raise SystemExit("demo: the operator did not start within 60s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--keep", action="store_true", help="leave the test bed and the operator running")
    parser.add_argument("--namespace", default="slipway-demo")
    args = parser.parse_args(argv)

    say("bringing up the test bed: etcd, kube-apiserver, controller-manager, scheduler, kwok, MLflow, Prometheus")
    state = tb.up(("mlflow", "prometheus"))
    say(f"test bed up — KUBECONFIG={state.kubeconfig}")
    kubectl(state, "apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kubectl(state, "wait", "--for=condition=Established", "--timeout=60s", "-f", str(REPO / "crds"))
    names = kubectl(state, "get", "-f", str(REPO / "crds"), "-o", "name").split()
    say("Slipway CRDs installed: " + ", ".join(n.split("/", 1)[1] for n in names))
    kubectl(state, "create", "namespace", args.namespace, check=False)
    operator, port = start_operator(state, args.namespace)
    say(f"operator running (pid {operator.pid}); metrics on http://127.0.0.1:{port}/metrics")
    ok = True
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
            ok = resp.status == 200
        say("kubectl get slipway -A:\n" + kubectl(state, "get", "slipway", "-A", check=False))
    finally:
        if args.keep:
            say(f"left running; `hack/testbed down` stops the test bed; kill the operator with `kill {operator.pid}`")
        else:
            operator.terminate()
            operator.wait(timeout=30)
            tb.down()
            say("cleaned up")
    say("summary: test bed, CRDs and operator came up and answered" if ok else "summary: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
