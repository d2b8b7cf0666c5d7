"""Integration fixtures of the API: the Slipway CRDs installed in the test bed's API server."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CRD_DIR = REPO / "crds"


@pytest.fixture(scope="session")
def slipway_crds(testbed: Any) -> list[str]:
    """Install crds/ with server-side apply and wait until each CRD is Established.

    Returns the CRD names. The CRDs are left installed (other tests and a reused test bed
    want them); applying again is idempotent.
    """
    base = [str(testbed.kubectl), "--kubeconfig", str(testbed.kubeconfig)]
    apply = subprocess.run(
        [
            *base,
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager=slipway-crds",
            "-f",
            str(CRD_DIR),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if apply.returncode != 0:
        raise AssertionError(f"installing the CRDs failed:\n{apply.stderr}")
    names = sorted(p.name.removesuffix(".yaml") for p in CRD_DIR.glob("*.yaml"))
    wait = subprocess.run(
        [
            *base,
            "wait",
            "--for=condition=Established",
            "--timeout=60s",
            *(f"crd/{n}" for n in names),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if wait.returncode != 0:
        raise AssertionError(f"CRDs not Established:\n{wait.stdout}\n{wait.stderr}")
    return names
