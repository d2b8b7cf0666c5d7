"""The real operator for integration tests: `python -m slipway` as a subprocess, watching one namespace.

Import the fixtures into a test module (``from operator_fixture import operator, start_operator``
— the ``tests/integration`` directory is on ``sys.path`` under pytest's rootdir-relative import
mode) and either take ``operator`` (1 s registry poll, webhook secret set) or call
``start_operator(namespace, poll_seconds=…, mlflow_uri=…)`` for other settings. Every operator
gets a free loopback port for its webhooks and /metrics, logs to a file that is printed when a
test fails, and is stopped (SIGINT, then SIGKILL) at teardown. ``TcpProxy`` sits between the
operator and MLflow so a test can take "MLflow" down and bring it back without touching the
shared server.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
WEBHOOK_SECRET = "slipway-test-secret"
START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OperatorProcess:
    """One running operator."""

    proc: subprocess.Popen[bytes]
    port: int
    namespace: str
    log: Path
    poll_seconds: float
    webhook_secret: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def metrics(self) -> dict[str, float]:
        """The operator's /metrics as {'name{labels}': value} (samples only)."""
        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def log_tail(self, lines: int = 80) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _wait_healthy(op: OperatorProcess) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if op.proc.poll() is not None:
            raise AssertionError(f"operator exited with {op.proc.returncode}:\n{op.log_tail()}")
        try:
            with urllib.request.urlopen(f"{op.url}/healthz", timeout=1) as resp:
                healthy = resp.status == 200
        except OSError:
            healthy = False
        if healthy and "'start_registry_sync' succeeded" in op.log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise AssertionError(f"operator not ready within {START_TIMEOUT}s:\n{op.log_tail()}")


StartOperator = Callable[..., OperatorProcess]


@pytest.fixture
def start_operator(
    testbed: Any, slipway_crds: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StartOperator]:
    """A factory: start_operator(namespace, poll_seconds=1.0, mlflow_uri=None, webhook_secret=…, env={})."""
    started: list[OperatorProcess] = []
    logs = tmp_path_factory.mktemp("operator-logs")

    def start(
        namespace: str,
        *,
        poll_seconds: float = 1.0,
        mlflow_uri: str | None = None,
        webhook_secret: str = WEBHOOK_SECRET,
        env: dict[str, str] | None = None,
    ) -> OperatorProcess:
        port = free_port()
        log = logs / f"{namespace}-{port}.log"
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_"))}
        environ.update(
            KUBECONFIG=str(testbed.kubeconfig),
            PYTHONPATH=os.pathsep.join(p for p in (str(REPO / "operator"), environ.get("PYTHONPATH")) if p),
            SLIPWAY_MLFLOW_URI=mlflow_uri or testbed.mlflow_uri,
            SLIPWAY_MLFLOW_POLL_SECONDS=str(poll_seconds),
            SLIPWAY_MLFLOW_WEBHOOK_SECRET=webhook_secret,
            SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION=str(Path(testbed.dir) / "mlflow" / "artifacts"),
            SLIPWAY_HTTP_HOST="127.0.0.1",
            SLIPWAY_HTTP_PORT=str(port),
            **(env or {}),
        )
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "slipway", "-n", namespace, "--liveness", ""],
                env=environ,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        op = OperatorProcess(proc, port, namespace, log, poll_seconds, webhook_secret)
        started.append(op)
        _wait_healthy(op)
        return op

    yield start
    for op in started:
        op.stop()
        print(f"--- operator log ({op.log}), shown by pytest only if the test failed ---\n{op.log_tail()}")


@pytest.fixture
def operator(start_operator: StartOperator, namespace: str) -> OperatorProcess:
    """The operator watching the test's namespace, polling MLflow every second."""
    return start_operator(namespace, poll_seconds=1.0)


@dataclass
class TcpProxy:
    """A loopback TCP proxy to a target address that a test can stop (connections cut) and start again."""

    target: tuple[str, int]
    port: int = field(default_factory=free_port)
    _server: socket.socket | None = None
    _conns: list[socket.socket] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def to_url(cls, url: str) -> TcpProxy:
        parsed = urlparse(url)
        return cls((parsed.hostname or "127.0.0.1", parsed.port or 80))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone does not
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
