"""`make demo` end to end: hack/demo.py as a subprocess on a test bed of its own; it exits 0 and shows the rollback.

The demo gets its own ``SLIPWAY_TESTBED_DIR`` (under ``tmp_path``) rather than the session test
bed: it rewrites Alertmanager's receivers and Prometheus' rules, which would disturb the alert
tests sharing the session test bed, and it tears down what it starts — a fresh test bed (fresh
MLflow: the versions are 1 and 2) is also what a newcomer's ``make demo`` gets. The price is a
second control plane for the length of the test (about 50 s to start on two loaded cores).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "hack"))

from bed import lifecycle  # noqa: E402

TIMEOUT = 540  # the demo takes about 3 minutes on two loaded cores; its own waits are bounded below this
GRACE = 120  # a SIGTERM makes the demo clean up (delete, stop the operator, take the test bed down)


def run_demo(testbed_dir: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLIPWAY_", "MLFLOW_", "KUBECONFIG"))}
    env["SLIPWAY_TESTBED_DIR"] = str(testbed_dir)
    env["COLUMNS"] = "160"
    log = testbed_dir.parent / "demo.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, str(REPO / "hack" / "demo.py")], stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO
        )
        try:
            code = proc.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            code = -1
    return code, log.read_text(errors="replace")


@pytest.mark.timeout(TIMEOUT + GRACE + 60)
def test_demo_trains_serves_canaries_and_rolls_back_on_drift(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    testbed_dir = tmp_path / "testbed"
    try:
        code, out = run_demo(testbed_dir)
    finally:
        monkeypatch.setenv("SLIPWAY_TESTBED_DIR", str(testbed_dir))
        if (testbed_dir / "state.json").exists():  # the demo did not clean up: do it for it
            lifecycle.down()
    print(out)
    assert code == 0, f"the demo exited {code}:\n{out[-6000:]}"

    lines = out.splitlines()

    def first(text: str) -> int:
        hits = [i for i, line in enumerate(lines) if text in line]
        assert hits, f"the timeline has no line with {text!r}"
        return hits[0]

    trained = [first(f"TrainingRun digits-cnn-{x}: trained — test accuracy") for x in "ab"]
    served = first("InferenceService digits-v1 ready")
    canary = first("HTTPRoute digits: v1 50% · v2 50%")
    shift = first("traffic shifts")
    fired = first("Alertmanager: SlipwayModelDrift for v2")
    rolled = first("ModelDeployment digits: RolledBack — stable v1")
    assert trained[0] < served and trained[1] < canary < shift < fired < rolled
    back = [i for i, line in enumerate(lines) if "HTTPRoute digits: v1 100%" in line and i > shift]
    assert back, "the route never went back to v1 after the traffic shifted"
    assert "alert SlipwayModelDrift (model_version=2) fired for v2: all traffic back to v1" in out
    assert "reverted by the operator: revertAlias" in out
    assert "rolled back on drift" in out
    assert "cleaned up" in [line for line in lines if line.strip()][-1]
    assert not (testbed_dir / "state.json").exists(), "the demo left its test bed running"
