"""Pytest fixtures starting the real operator (``operator_process.OperatorProcess``) with MLflow, and a TCP proxy.

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
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
from operator_process import OperatorProcess, free_port

WEBHOOK_SECRET = "slipway-test-secret"
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
        op = OperatorProcess(
            testbed.kubeconfig,
            namespace,
            logs,
            env=env,
            mlflow_uri=mlflow_uri or testbed.mlflow_uri,
            poll_seconds=poll_seconds,
            webhook_secret=webhook_secret,
            artifacts_destination=testbed.state.urls["mlflow-artifacts"],
        )
        started.append(op)
        op.start().wait_healthy()
        return op

    yield start
    for op in started:
        op.stop()
        print(f"--- operator log ({op.log_path}), shown by pytest only if the test failed ---\n{op.log_tail()}")


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
