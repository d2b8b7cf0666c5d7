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


def live(generation: int) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "spec": {}}


def test_the_watch_seeing_another_generation_or_a_delete_forgets_the_apply() -> None:
    cache = AppliedCache(clock=Clock())
    desired = route({"1": 100})
    key = key_of(desired)
    assert key == ("gateway.networking.k8s.io/v1", "HTTPRoute", "ml", "digits")
    cache.record(desired, stored(4))
    assert not cache.observed(key, live(4)), "the operator's own write"
    assert not cache.observed(key, live(3)), "an event from before the operator's write"
    assert cache.unchanged(desired)
    assert cache.observed(key, live(5)), "someone edited the spec"
    assert not cache.unchanged(desired)
    assert not cache.observed(key, live(6)), "nothing left to forget: the next pass applies anyway"

    cache.record(desired, stored(6))
    assert cache.observed(key, None), "deleted"
    assert not cache.unchanged(desired)


def hpa(min_replicas: int = 1, average: str = "0.5") -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "digits-v1", "namespace": "ml"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "digits-v1-predictor"},
            "minReplicas": min_replicas,
            "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "rps"}, "target": {"averageValue": average}}}],
        },
    }


def test_kinds_without_a_generation_compare_the_live_spec_with_what_was_applied() -> None:
    cache = AppliedCache(clock=Clock())
    desired = hpa()
    key = key_of(desired)
    cache.record(desired, {"metadata": {"resourceVersion": "7"}})  # HPAs carry no generation
    as_stored = hpa(average="500m")  # the server's form of the quantity, plus its defaults and a status
    as_stored["spec"]["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": 300}}
    as_stored["status"] = {"currentReplicas": 1, "desiredReplicas": 2}
    assert not cache.observed(key, as_stored), "defaults, normalised quantities and status are no edit"
    assert cache.unchanged(desired)
    assert cache.observed(key, hpa(min_replicas=2)), "an edited field"
    assert not cache.unchanged(desired)
    cache.record(desired, {"metadata": {}})
    dropped = hpa()
    dropped["spec"]["metrics"] = []
    assert cache.observed(key, dropped), "a removed list item"


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


def test_the_kube_client_keeps_the_cache_it_is_given_even_an_empty_one() -> None:
    from kubernetes import client

    from slipway.clients.kube import Kube

    cache = AppliedCache(reassert_seconds=0)  # SLIPWAY_REAPPLY_SECONDS=0
    assert len(cache) == 0 and Kube(client.ApiClient(), applied=cache).applied is cache


def test_an_object_this_process_applied_is_known_until_seen_deleted_or_the_period_ends() -> None:
    clock = Clock()
    cache = AppliedCache(clock=clock)
    desired = route({"1": 100})
    assert not cache.known(key_of(desired)), "never applied: its owner must be read"
    cache.record(desired, stored(1))
    assert cache.known(key_of(route({"1": 0, "2": 100}))), "other weights, the same object: still ours"
    cache.observed(key_of(desired), None)  # the watch saw it deleted: a same-named object may be someone else's
    assert not cache.known(key_of(desired))
    cache.record(desired, stored(1))
    clock.now += 601
    assert not cache.known(key_of(desired)), "after the reassert period, looked at again"
    assert not AppliedCache(reassert_seconds=0).known(key_of(desired))
