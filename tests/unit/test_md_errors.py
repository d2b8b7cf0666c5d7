"""A pass that raises: the ReconcileError condition and event it leaves, and how a later pass clears it."""

from __future__ import annotations

import json
from typing import Any

from kubernetes.client.exceptions import ApiException

from slipway.api.modeldeployment import ModelDeployment
from slipway.clients.kube import error_message
from slipway.reconcilers.modeldeployment import MESSAGE_LIMIT, cleared_error, failed, status_of
from slipway.rollout.state import RolloutState


def forbidden(message: str) -> ApiException:
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = json.dumps({"kind": "Status", "message": message, "reason": "Forbidden", "code": 403})
    return exc


def body(status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "ml.slipway.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "digits", "namespace": "ml", "generation": 3},
        "spec": {
            "model": {"name": "digits", "track": {"alias": "champion"}},
            "strategy": {"canary": {"steps": [{"setWeight": 50}]}},
        },
        "status": status or {},
    }


def test_error_message_is_the_api_servers_own_words_with_the_code():
    assert error_message(forbidden('horizontalpodautoscalers "x" is forbidden: exceeded quota')) == (
        '403: horizontalpodautoscalers "x" is forbidden: exceeded quota'
    )
    assert error_message(TimeoutError("read timed out")) == "read timed out"
    assert error_message(RuntimeError()) == "RuntimeError"


def test_a_failed_pass_keeps_the_rollout_and_says_why_once():
    old = {"phase": "Progressing", "canaryWeight": 20, "conditions": []}
    first = failed(old, body(old), forbidden("exceeded quota: no-hpas"))
    assert set(first.status) == {"conditions"}, "the rollout's own fields are left as they were"
    (cond,) = first.status["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("ReconcileError", "True", "ReconcileFailed")
    assert cond["message"] == "403: exceeded quota: no-hpas" and cond["observedGeneration"] == 3
    assert [(e.reason, e.type) for e in first.events] == [("ReconcileFailed", "Warning")]

    again = {**old, **first.status}
    assert failed(again, body(again), forbidden("exceeded quota: no-hpas")).events == [], "no event per retry"
    other = failed(again, body(again), TimeoutError("read timed out"))
    assert [e.message for e in other.events] == ["read timed out"], "a different error is news"


def test_a_long_message_is_cut():
    out = failed({}, body(), forbidden("x" * 5000))
    assert len(out.status["conditions"][0]["message"]) == MESSAGE_LIMIT


def test_a_pass_clears_the_condition_only_once_its_writes_worked():
    old = failed({}, body(), forbidden("exceeded quota")).status
    md = ModelDeployment.model_validate(body(old))
    status = status_of(md, old, RolloutState(phase="Succeeded", stable_version="1"), "1")
    cond = next(c for c in status["conditions"] if c["type"] == "ReconcileError")
    assert cond["status"] == "True", "the pass's first write (before its children) keeps the error standing"
    cleared = cleared_error(status["conditions"], 3)
    assert cleared is not None
    cond = next(c for c in cleared if c["type"] == "ReconcileError")
    assert (cond["status"], cond["reason"], cond["message"]) == ("False", "Reconciled", "")
    assert cleared_error(cleared, 3) is None, "nothing standing: nothing to write"
    fresh = status_of(md, {}, RolloutState(phase="Succeeded", stable_version="1"), "1")
    assert all(c["type"] != "ReconcileError" for c in fresh["conditions"]), "no condition until something failed"
