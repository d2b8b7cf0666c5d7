"""Label-free accuracy: the runtime's estimate against the true accuracy, on held-out and shifted digits.

For each seed: ``python -m slipway_training.digits_cnn`` trains the PyTorch digits CNN and logs
it (with the baseline and its validation split) into a local MLflow store; ``python -m
slipway_serving`` serves the logged model; the held-out test split (360 digits, never seen in
training nor calibration) is sent through V1, as it is and shifted (Gaussian noise, rotations,
inverted ink). After each, the true accuracy is computed from the answers and the labels, and
``slipway_estimated_accuracy`` and ``slipway_model_drift_score`` are read from ``/metrics``: the
window (``--drift-window 360``) holds exactly that set. Prints a Markdown table per seed and the
worst error per shift.

    .venv/bin/python bench/accuracy_estimation.py [--seeds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODEL = "digits"
BATCH = 90
WINDOW = 360


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    from scipy.ndimage import rotate

    images = x.reshape(-1, 8, 8)
    turned = np.stack([rotate(im, degrees, reshape=False, order=1) for im in images])
    return np.clip(turned, 0, 16).reshape(-1, 64).astype(np.float32)


def _noise(sigma: float, seed: int) -> Callable[[np.ndarray], np.ndarray]:
    def shift(x: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return np.clip(x + rng.normal(0, sigma, x.shape), 0, 16).astype(np.float32)

    return shift


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "held-out": lambda x: x,
    "noise sd 2": _noise(2.0, 1),
    "noise sd 4": _noise(4.0, 2),
    "rotation 15 deg": lambda x: _rotate(x, 15),
    "rotation 30 deg": lambda x: _rotate(x, 30),
    "inverted ink": lambda x: (16 - x).astype(np.float32),
}


def _env(tracking_uri: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "SLIPWAY_"))}
    paths = [str(REPO / "serving"), str(REPO / "training-jobs"), env.get("PYTHONPATH", "")]
    env.update(
        MLFLOW_TRACKING_URI=tracking_uri,
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="true",
        PYTHONPATH=os.pathsep.join(p for p in paths if p),
    )
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metric(text: str, name: str) -> float | None:
    match = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def train(tmp: Path, seed: int, epochs: int) -> tuple[str, str]:
    """Train and log one model; its tracking URI and model URI."""
    import mlflow

    tracking_uri = f"sqlite:///{tmp / 'mlflow.db'}"
    command = [sys.executable, "-m", "slipway_training.digits_cnn", "--epochs", str(epochs), "--threads", "2",
               "--seed", str(seed), "--split-seed", str(seed)]  # fmt: skip
    subprocess.run(command, cwd=tmp, env=_env(tracking_uri), check=True, capture_output=True, timeout=900)
    mlflow.set_tracking_uri(tracking_uri)
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    return tracking_uri, str(run.data.tags["slipway.model_uri"])


def measure(
    tmp: Path, tracking_uri: str, model_uri: str, x: np.ndarray, y: np.ndarray
) -> list[tuple[str, float, float, float]]:
    """(shift, true accuracy, estimated accuracy, drift score) per shift, from one running server."""
    port = _free_port()
    command = [sys.executable, "-m", "slipway_serving", "--model-name", MODEL, "--model-version", "1",
               "--model-uri", model_uri, "--download-dir", str(tmp / "download"), "--host", "127.0.0.1",
               "--http-port", str(port), "--drift-window", str(WINDOW), "--drift-min-samples", "100"]  # fmt: skip
    log = (tmp / "server.log").open("wb")
    server = subprocess.Popen(command, env=_env(tracking_uri), stdout=log, stderr=subprocess.STDOUT)
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 240
            while True:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start: {(tmp / 'server.log').read_text()[-2000:]}")
                try:
                    if client.get(f"/v2/models/{MODEL}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.25)
            for name, shift in SHIFTS.items():
                shifted = shift(x)
                predictions: list[int] = []
                for start in range(0, len(shifted), BATCH):
                    body = {"instances": shifted[start : start + BATCH].tolist()}
                    response = client.post(f"/v1/models/{MODEL}:predict", json=body)
                    response.raise_for_status()
                    predictions += response.json()["predictions"]
                text = client.get("/metrics").text
                estimate = _metric(text, "slipway_estimated_accuracy")
                drift = _metric(text, "slipway_model_drift_score")
                if estimate is None or drift is None:
                    raise RuntimeError(f"no estimate or drift score after {name}")
                rows.append((name, float(np.mean(np.array(predictions) == y)), estimate, drift))
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="models trained (seed and split seed 0, 1, ...)")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO / "training-jobs"))
    from slipway_training.config import TrainConfig
    from slipway_training.data import load_digits

    cfg = TrainConfig()
    worst: dict[str, float] = {}
    for seed in range(args.seeds):
        digits = load_digits(val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, split_seed=seed)
        with tempfile.TemporaryDirectory(prefix="slipway-accuracy-") as name:
            tmp = Path(name)
            started = time.monotonic()
            tracking_uri, model_uri = train(tmp, seed, args.epochs)
            trained = time.monotonic() - started
            rows = measure(tmp, tracking_uri, model_uri, digits.test.x, digits.test.y)
        print(
            f"\nseed {seed} (trained in {trained:.0f} s; "
            f"{len(digits.val)} validation rows, {len(digits.test)} test rows)"
        )
        print("| shift | true accuracy | estimated | error | drift score (PSI) |")
        print("|---|---|---|---|---|")
        for shift, true, estimate, drift in rows:
            print(f"| {shift} | {true:.3f} | {estimate:.3f} | {estimate - true:+.3f} | {drift:.3f} |")
            worst[shift] = max(worst.get(shift, 0.0), abs(estimate - true))
        sys.stdout.flush()
    print("\nworst |error| over seeds:")
    for shift, error in worst.items():
        print(f"  {shift}: {error:.3f} {'(within 0.05)' if error <= 0.05 else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
