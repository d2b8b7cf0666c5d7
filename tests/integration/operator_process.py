"""The operator as a real subprocess (``python -m slipway -n NS``) for integration tests: start, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 60.0


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OperatorProcess:
    """One operator watching one namespace on a loopback port kept across restarts, logging to a file a test can show.

    Without ``mlflow_uri`` it mirrors no registry; ``env`` is applied last (e.g. SLIPWAY_ALERT_POLL_SECONDS).
    The caller's SLIPWAY_* and MLFLOW_* variables are not passed on.
    """

    def __init__(
        self,
        kubeconfig: Path | str,
        namespace: str,
        log_dir: Path,
        prometheus_url: str = "",
        env: dict[str, str] | None = None,
        *,
        mlflow_uri: str = "",
        poll_seconds: float = 1.0,
        webhook_secret: str = "",
        artifacts_destination: str = "",
    ) -> None:
        self.kubeconfig = Path(kubeconfig)
        self.namespace = namespace
        self.port = free_port()
        self.log_path = log_dir / f"operator-{namespace}-{self.port}.log"
        self.prometheus_url = prometheus_url
        self.mlflow_uri = mlflow_uri
        self.poll_seconds = poll_seconds
        self.webhook_secret = webhook_secret
        self.artifacts_destination = artifacts_destination
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_mark = 0  # where the log of the current run starts

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> OperatorProcess:
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_"))}
        paths = [str(REPO / "operator"), str(REPO / "serving"), environ.get("PYTHONPATH", "")]
        environ.update(
            KUBECONFIG=str(self.kubeconfig),
            PYTHONPATH=os.pathsep.join(p for p in paths if p),
            SLIPWAY_PROMETHEUS_URL=self.prometheus_url,
            SLIPWAY_HTTP_HOST="127.0.0.1",
            SLIPWAY_HTTP_PORT=str(self.port),
        )
        if self.mlflow_uri:
            environ.update(
                SLIPWAY_MLFLOW_URI=self.mlflow_uri,
                SLIPWAY_MLFLOW_POLL_SECONDS=str(self.poll_seconds),
                SLIPWAY_MLFLOW_WEBHOOK_SECRET=self.webhook_secret,
                SLIPWAY_MLFLOW_ARTIFACTS_DESTINATION=self.artifacts_destination,
            )
        environ.update(self.env)
        self._log_mark = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slipway", "-n", self.namespace, "--liveness", ""],
                env=environ,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(REPO),
            )
        return self

    def wait_healthy(self, timeout: float = START_TIMEOUT) -> OperatorProcess:
        """Until /healthz answers 200 and this run's startup handlers (the registry sync among them) succeeded."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                code = None if self.proc is None else self.proc.returncode
                raise AssertionError(f"operator exited with {code}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1) as resp:
                    healthy = resp.status == 200
            except OSError:
                healthy = False
            if healthy and "'start_registry_sync' succeeded" in self._run_log():
                return self
            time.sleep(0.2)
        raise AssertionError(f"operator not ready within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGINT, then SIGKILL after a grace period."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

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
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def _run_log(self) -> str:
        with self.log_path.open("rb") as log:
            log.seek(self._log_mark)
            return log.read().decode(errors="replace")


def wait_until(predicate, timeout: float = 60.0, what: str = "condition", interval: float = 0.3):  # type: ignore[no-untyped-def]
    """Poll until predicate() is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
