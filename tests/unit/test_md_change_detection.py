"""Which ModelDeployment watch events make a pass: first sight and changes a pass acts on, not its own status."""

from __future__ import annotations

import copy
from typing import Any

import kopf

from slipway.handlers.modeldeployment import acted_on
from slipway.reconcilers.driver import Driver

BODY: dict[str, Any] = {
    "metadata": {
        "name": "md",
        "namespace": "ns",
        "generation": 1,
        "resourceVersion": "10",
        "labels": {"team": "a"},
        "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"},
    },
    "spec": {"model": {"name": "m"}},
    "status": {"phase": "Idle"},
}


def revision(change: Any = None) -> str:
    body = copy.deepcopy(BODY)
    if change is not None:
        change(body)
    return acted_on(kopf.Body(body))


def test_the_operator_s_own_writes_are_not_news() -> None:
    def status_and_version(b: dict[str, Any]) -> None:
        b["status"] = {"phase": "Succeeded", "stableVersion": "1"}
        b["metadata"]["resourceVersion"] = "11"

    def bookkeeping(b: dict[str, Any]) -> None:
        b["metadata"]["annotations"]["kopf.zalando.org/last-handled-configuration"] = "{}"
        b["metadata"]["annotations"]["slipway.dev/last-handled-configuration"] = "{}"

    assert revision(status_and_version) == revision() == revision(bookkeeping)


def test_spec_labels_and_actions_are_news() -> None:
    def spec(b: dict[str, Any]) -> None:
        b["metadata"]["generation"] = 2

    def label(b: dict[str, Any]) -> None:
        b["metadata"]["labels"]["team"] = "b"

    def action(b: dict[str, Any]) -> None:
        b["metadata"]["annotations"]["ml.slipway.dev/action"] = "promote"

    seen = {revision(), revision(spec), revision(label), revision(action)}
    assert len(seen) == 4


def test_the_driver_passes_on_first_sight_and_changes_only() -> None:
    driver = Driver(object(), "")  # type: ignore[arg-type]
    first = revision()
    assert driver.noticed("ns", "md", first) and driver.watches("ns", "md")
    assert not driver.noticed("ns", "md", first)  # its own status write's event
    assert driver.noticed("ns", "md", revision(lambda b: b["metadata"].update(generation=2)))
    driver.forget("ns", "md")
    assert not driver.watches("ns", "md") and driver.noticed("ns", "md", first)  # recreated: first sight again
