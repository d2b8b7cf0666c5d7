"""Helpers the chart's RBAC tests share: helm against the test bed, a kubeconfig of a ServiceAccount's token."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

CHART = Path(__file__).resolve().parents[2] / "charts" / "slipway"


def helm(testbed: Any, *args: str) -> str:
    """Run helm against the test bed; its stdout (fails the test if helm fails)."""
    proc = subprocess.run(
        [str(testbed.helm), "--kubeconfig", str(testbed.kubeconfig), *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def service_account_kubeconfig(testbed: Any, kubectl: Any, namespace: str, sa: str, path: Path) -> Path:
    """A kubeconfig that authenticates with a real token of the ServiceAccount (TokenRequest API)."""
    token = kubectl("create", "token", sa, "--duration=1h").stdout.strip()
    config = yaml.safe_load(testbed.kubeconfig.read_text())
    config["users"] = [{"name": sa, "user": {"token": token}}]
    config["contexts"][0]["context"].update(user=sa, namespace=namespace)
    path.write_text(json.dumps(config))
    return path
