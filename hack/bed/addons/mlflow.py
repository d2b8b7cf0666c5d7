"""MLflow on the test bed: ``mlflow server`` with a SQLite backend, its artifacts in the test bed's S3 bucket."""

from __future__ import annotations

import base64
import os
import shutil
import sys
from pathlib import Path

from bed.addons.s3 import S3_BUCKET, s3_env, start_s3
from bed.base import TestbedError
from bed.procs import free_port, http_ok, spawn, wait
from bed.state import State


def _venv_bin(name: str) -> str:
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if not found:
        raise TestbedError(f"{name} not found next to {sys.executable} or on PATH (run hack/setup)")
    return found


def start_mlflow(state: State, versitygw: str) -> None:
    """`mlflow server` with a SQLite backend, its artifacts in an S3 bucket of versitygw (started first)."""
    start_s3(state, versitygw)
    tb = Path(state.dir) / "mlflow"
    shutil.rmtree(tb, ignore_errors=True)
    tb.mkdir(parents=True)
    artifacts = state.urls["mlflow-artifacts"] = f"s3://{S3_BUCKET}/artifacts"
    port = free_port()
    state.ports["mlflow"] = port
    url = f"http://127.0.0.1:{port}"
    state.urls["mlflow"] = url
    env = dict(os.environ)
    env.update(
        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
        MLFLOW_WEBHOOK_ALLOWED_SCHEMES="http,https",
        MLFLOW_WEBHOOK_ALLOW_PRIVATE_IPS="true",
        MLFLOW_WEBHOOK_SECRET_ENCRYPTION_KEY=base64.urlsafe_b64encode(os.urandom(32)).decode(),
        MLFLOW_WEBHOOK_CACHE_TTL="1",
        **s3_env(state),
    )
    spawn(
        state,
        "mlflow",
        [
            _venv_bin("mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{tb / 'mlflow.db'}",
            "--artifacts-destination",
            artifacts,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        env=env,
    )
    wait(state, "mlflow", lambda: http_ok(f"{url}/health"), 120, "/health")
