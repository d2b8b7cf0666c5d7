"""The applied-children cache: when a pass may skip a server-side apply, and what makes it apply again."""

from __future__ import annotations

from typing import Any

from slipway.clients.applied import AppliedCache, key_of


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def route(weights: dict[str, int], name: str = "digits") -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "ml", "labels": {"ml.slipway.dev/deployment": name}},
        "spec": {"rules": [{"backendRefs": [{"name": f"{name}-v{v}", "weight": w} for v, w in weights.items()]}]},
    }


def stored(generation: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation, "resourceVersion": str(100 + generation)}}


def test_the_same_manifest_is_unchanged_until_the_reassert_period_ends() -> None:
    clock = Clock()
    cache = AppliedCache(reassert_seconds=600, clock=clock)
    desired = route({"1": 100})
    assert not cache.unchanged(desired), "never applied: apply"
    cache.record(desired, stored(1))
    assert cache.unchanged(route({"1": 100})), "an equal manifest built again"
    clock.now += 599
    assert cache.unchanged(desired)
    clock.now += 1
    assert not cache.unchanged(desired), "re-asserted every reassert_seconds"


def test_key_order_does_not_matter_but_any_value_does() -> None:
    cache = AppliedCache(clock=Clock())
    desired = route({"1": 80, "2": 20})
    cache.record(desired, stored(3))
    reordered = {"spec": desired["spec"], "metadata": desired["metadata"], "kind": "HTTPRoute"}
    reordered["apiVersion"] = desired["apiVersion"]
    assert cache.unchanged(reordered)
    assert not cache.unchanged(route({"1": 60, "2": 40})), "new weights"
    assert not cache.unchanged(route({"1": 80, "2": 20}, name="other")), "another object"


def test_the_watch_seeing_another_generation_or_a_delete_forgets_the_apply() -> None:
    cache = AppliedCache(clock=Clock())
    desired = route({"1": 100})
    key = key_of(desired)
    assert key == ("gateway.networking.k8s.io/v1", "HTTPRoute", "ml", "digits")
    cache.record(desired, stored(4))
    assert not cache.observed(key, 4), "the operator's own write"
    assert not cache.observed(key, 3), "an event from before the operator's write"
    assert cache.unchanged(desired)
    assert cache.observed(key, 5), "someone edited the spec"
    assert not cache.unchanged(desired)
    assert not cache.observed(key, 6), "nothing left to forget: the next pass applies anyway"

    cache.record(desired, stored(6))
    assert cache.observed(key, None), "deleted"
    assert not cache.unchanged(desired)


def test_forget_and_a_zero_period_always_apply() -> None:
    cache = AppliedCache(clock=Clock())
    desired = route({"1": 100})
    cache.record(desired, stored(1))
    assert cache.forget(key_of(desired)) and not cache.forget(key_of(desired))
    assert not cache.unchanged(desired)
    always = AppliedCache(reassert_seconds=0, clock=Clock())
    always.record(desired, stored(1))
    assert not always.unchanged(desired)
    assert len(always) == 1
