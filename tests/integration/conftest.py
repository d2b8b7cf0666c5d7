"""Integration fixtures: the Slipway CRDs installed in the test bed's API server, a small MLflow model on disk."""

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


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small scikit-learn model (digits) saved as an MLflow model (what the registry holds)."""
    import mlflow.sklearn
    import numpy as np
    from mlflow.models import infer_signature
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    clf = LogisticRegression(max_iter=200).fit(x[:300], y[:300])
    path = tmp_path_factory.mktemp("model") / "m"
    mlflow.sklearn.save_model(clf, str(path), signature=infer_signature(x[:2], clf.predict(x[:2])))
    return path
