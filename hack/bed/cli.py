"""The ``hack/testbed`` command line: ``up [--with mlflow,prometheus]``, ``down``, ``status``, ``build``, ``env``."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

from bed.base import TestbedError
from bed.builds import build
from bed.lifecycle import EXTRAS, down, env_lines, is_up, up
from bed.procs import alive
from bed.state import State, testbed_dir

DESCRIPTION = (
    "The local test bed: a real Kubernetes control plane, kwok nodes, MLflow, Prometheus and Alertmanager on loopback."
)


def status() -> int:
    """Print what runs; exit 0 when everything recorded is alive."""
    state = State.load(testbed_dir())
    if state is None:
        print("test bed: down")
        return 1
    ok = True
    for name, pid in state.pids.items():
        running = alive(pid, state.identities[name])
        ok &= running
        port = state.ports.get(name) or state.ports.get(name.replace("kube-", ""))
        print(f"{name:<24} pid {pid:<8} {'running' if running else 'DEAD':<8} {f'127.0.0.1:{port}' if port else ''}")
    for line in env_lines(state):
        print(line)
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    """Run one ``hack/testbed`` command; the exit code."""
    parser = argparse.ArgumentParser(prog="hack/testbed", description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", required=True)
    up_p = sub.add_parser("up", help="start the test bed")
    up_p.add_argument(
        "--with", dest="extras", default="", help=f"comma-separated extras to start too: {', '.join(EXTRAS)}"
    )
    sub.add_parser("down", help="stop everything it started")
    sub.add_parser("status", help="say what runs")
    sub.add_parser("build", help="build the binaries (cached by version)")
    sub.add_parser("env", help="print export lines for the running test bed")
    args = parser.parse_args(argv)
    try:
        if args.command == "up":
            extras = tuple(e for e in args.extras.split(",") if e)
            unknown = set(extras) - set(EXTRAS)
            if unknown:
                parser.error(f"--with: unknown extra(s) {', '.join(sorted(unknown))}; choose from {', '.join(EXTRAS)}")
            for line in env_lines(up(extras)):
                print(line)
        elif args.command == "down":
            down()
        elif args.command == "status":
            return status()
        elif args.command == "build":
            bins = build()
            for name, path in asdict(bins).items():
                print(f"{name}: {path}")
        elif args.command == "env":
            state = State.load(testbed_dir())
            if not is_up(state) or state is None:
                print("test bed is not up", file=sys.stderr)
                return 1
            for line in env_lines(state):
                print(line)
    except TestbedError as exc:
        print(f"testbed: error: {exc}", file=sys.stderr)
        return 1
    return 0
