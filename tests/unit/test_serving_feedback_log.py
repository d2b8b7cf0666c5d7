"""The feedback log: bounded by request count, keyed by the current request id; body parsing."""

from __future__ import annotations

import numpy as np
import pytest

from slipway_serving.feedback import FeedbackError, PredictionLog, current_request_id, parse


def remember(log: PredictionLog, request_id: str | None, classes: list[int]) -> None:
    token = current_request_id.set(request_id)
    try:
        log.remember(np.asarray(classes))
    finally:
        current_request_id.reset(token)


def test_the_oldest_requests_are_forgotten_first():
    log = PredictionLog(capacity=3)
    for i in range(5):
        remember(log, f"r{i}", [i, i + 1])
    assert len(log) == 3
    assert log.take("r0") is None and log.take("r1") is None
    assert log.take("r4") == ("4", "5") and log.take("r4") is None  # taken once


def test_no_request_id_nothing_remembered():
    log = PredictionLog()
    remember(log, None, [1])
    assert len(log) == 0


def test_parse():
    assert parse({"id": "a", "labels": [1, 2.0, "cat"]}) == ("a", ("1", "2", "cat"))
    assert parse({"id": "a", "label": 7}) == ("a", ("7",))
    for bad in ([], {"labels": [1]}, {"id": "a"}, {"id": "a", "label": 1, "labels": [1]}, {"id": "a", "labels": []},
                {"id": "a", "label": True}, {"id": "", "label": 1}):  # fmt: skip
        with pytest.raises(FeedbackError):
            parse(bad)
    with pytest.raises(ValueError):
        PredictionLog(0)


def test_feedback_needs_the_token_and_is_off_without_one():
    from slipway_serving.feedback import authorise

    authorise("s3cret", "Bearer s3cret")
    authorise("s3cret", "bearer  s3cret")
    for given in (None, "", "Bearer", "Bearer wrong", "Basic s3cret", "s3cret"):
        with pytest.raises(FeedbackError) as err:
            authorise("s3cret", given)
        assert err.value.status == 401
    with pytest.raises(FeedbackError) as err:
        authorise("", "Bearer ")
    assert err.value.status == 403, "no token configured: feedback is off, not open"
