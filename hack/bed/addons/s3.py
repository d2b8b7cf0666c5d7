"""S3 on the test bed: versitygw over a local folder, MLflow's artifact store, and the credentials clients need."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from bed.procs import free_port, port_open, spawn, wait
from bed.state import State

S3_BUCKET = "mlflow"
S3_REGION = "us-east-1"
S3_ACCESS_KEY = "slipway-testbed"


def s3_secret_key(state: State) -> str:
    """The test bed's S3 secret key (derived from its admin token: new with each test bed)."""
    return f"{state.token}-s3"


def start_s3(state: State, versitygw: str) -> None:
    """versitygw on loopback over ``<testbed>/s3``, with the bucket MLflow's artifacts go to.

    versitygw (``github.com/versity/versitygw``) is an S3 gateway over a local folder, so that
    models live where a user's do and KServe's storage initializer downloads them over S3.
    """
    root = Path(state.dir) / "s3"
    shutil.rmtree(root, ignore_errors=True)
    (root / S3_BUCKET).mkdir(parents=True)  # the posix backend serves each top-level folder as a bucket
    port = free_port()
    state.ports["s3"] = port
    state.urls["s3"] = f"http://127.0.0.1:{port}"
    env = dict(os.environ, ROOT_ACCESS_KEY=S3_ACCESS_KEY, ROOT_SECRET_KEY=s3_secret_key(state))
    spawn(state, "s3", [versitygw, "--port", f"127.0.0.1:{port}", "posix", str(root)], env=env)
    wait(state, "s3", lambda: port_open(port), 30, "its port")


def s3_credentials(state: State, service_account: str = "models") -> list[dict[str, Any]]:
    """A Secret and ServiceAccount as KServe takes S3 credentials (its ``s3-*`` annotations) for the storage
    initializer; name the ServiceAccount in a ModelDeployment's ``spec.serving.serviceAccountName``."""
    env = s3_env(state)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{service_account}-s3",
            "annotations": {
                "serving.kserve.io/s3-endpoint": env["MLFLOW_S3_ENDPOINT_URL"].removeprefix("http://"),
                "serving.kserve.io/s3-usehttps": "0",
                "serving.kserve.io/s3-region": env["AWS_DEFAULT_REGION"],
            },
        },
        "stringData": {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")},
    }
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": service_account},
        "secrets": [{"name": f"{service_account}-s3"}],
    }
    return [secret, account]


def s3_env(state: State) -> dict[str, str]:
    """What an S3 client (MLflow, boto3) needs to reach the test bed's versitygw."""
    return {
        "MLFLOW_S3_ENDPOINT_URL": state.urls["s3"],
        "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": s3_secret_key(state),
        "AWS_DEFAULT_REGION": S3_REGION,
    }
