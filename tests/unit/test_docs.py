"""The docs keep up with the code: every transition reason of the state machine is documented."""

from __future__ import annotations

from pathlib import Path

from slipway.rollout.phases import TRANSITIONS

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_every_transition_reason_is_in_the_rollouts_doc():
    text = (DOCS / "rollouts.md").read_text() + (DOCS / "rollback.md").read_text()
    missing = sorted({t.reason for t in TRANSITIONS if t.reason not in text})
    assert not missing, f"docs/rollouts.md does not mention: {missing}"
