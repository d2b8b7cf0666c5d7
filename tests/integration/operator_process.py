"""The operator as a real subprocess (``python -m slipway -n NS``) for integration tests: start, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


class OperatorProcess:
    """One operator process watching one namespace, logging to a file the test can show on failure."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        log_dir: Path,
        prometheus_url: str = "",
        env: dict[str, str] | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.log_path = log_dir / f"operator-{namespace}.log"
        self.prometheus_url = prometheus_url
        self.env = dict(env or {})  # extra environment, applied last (e.g. SLIPWAY_ALERT_POLL_SECONDS)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> OperatorProcess:
        env = dict(os.environ)
        paths = [str(REPO / "operator"), str(REPO / "serving"), env.get("PYTHONPATH", "")]
        env.update(
            KUBECONFIG=str(self.kubeconfig),
            SLIPWAY_PROMETHEUS_URL=self.prometheus_url,
            SLIPWAY_HTTP_PORT="0",
            SLIPWAY_HTTP_HOST="127.0.0.1",
            PYTHONPATH=os.pathsep.join(p for p in paths if p),
        )
        env.update(self.env)
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "slipway", "-n", self.namespace, "--liveness", ""],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=str(REPO),
        )
        log.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last status write."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 60) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


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
