"""The watch cache: what it holds, in what order copies replace each other, and the lists it answers."""

from __future__ import annotations

from typing import Any

import pytest

from slipway.clients.kube import Kube, NotOwned
from slipway.clients.watch_cache import KINDS, WatchCache, equality_selector

MD = ("ml.slipway.dev/v1alpha1", "ModelDeployment")
ISVC = ("serving.kserve.io/v1beta1", "InferenceService")
DEPLOYMENT = ("apps/v1", "Deployment")
HPA = ("autoscaling/v2", "HorizontalPodAutoscaler")
ROUTE = ("gateway.networking.k8s.io/v1", "HTTPRoute")


def obj(kind: tuple[str, str], name: str, rv: str, ns: str = "team-a", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": kind[0],
        "kind": kind[1],
        "metadata": {"name": name, "namespace": ns, "resourceVersion": rv, "labels": labels, "annotations": {"x": "y"}},
        "spec": {"big": ["x"] * 10},
        "status": {"conditions": [{"type": "Ready", "status": "True"}], "availableReplicas": 2, "url": "u"},
    }


def test_nothing_is_answered_before_the_initial_listings_are_in():
    cache = WatchCache(KINDS)
    cache.observe(obj(MD, "a", "1"))
    assert not cache.covers(*MD)
    cache.primed = True
    assert cache.covers(*MD) and not cache.covers("v1", "Secret"), "only the kinds it holds"


def test_an_older_copy_never_replaces_a_newer_one():
    cache = WatchCache(KINDS)
    cache.observe(obj(MD, "a", "10"))  # the answer to our status write
    cache.observe(obj(MD, "a", "9"))  # the watch, behind
    assert cache.get(*MD, "a", "team-a")["metadata"]["resourceVersion"] == "10"
    cache.observe(obj(MD, "a", "11"))
    assert cache.get(*MD, "a", "team-a")["metadata"]["resourceVersion"] == "11"


def test_a_deleted_object_does_not_come_back_with_a_late_copy():
    cache = WatchCache(KINDS)
    cache.observe(obj(MD, "a", "5"))
    cache.observe(obj(MD, "a", "7"), deleted=True)
    cache.observe(obj(MD, "a", "6"))  # a write's answer arriving after the deletion
    assert cache.get(*MD, "a", "team-a") is None
    cache.observe(obj(MD, "a", "8"))  # made again
    assert cache.get(*MD, "a", "team-a") is not None


def test_lists_by_label_follow_label_changes_and_namespaces():
    cache = WatchCache(KINDS)
    cache.observe(obj(ISVC, "web-v1", "1", **{"ml.slipway.dev/deployment": "web", "v": "1"}))
    cache.observe(obj(ISVC, "web-v2", "2", **{"ml.slipway.dev/deployment": "web", "v": "2"}))
    cache.observe(obj(ISVC, "web-v1", "3", ns="team-b", **{"ml.slipway.dev/deployment": "web"}))
    cache.observe(obj(ISVC, "api-v1", "4", **{"ml.slipway.dev/deployment": "api"}))

    def names(ns: str, **labels: str) -> list[str]:
        return [o["metadata"]["name"] for o in cache.list(*ISVC, ns, labels)]

    assert names("team-a", **{"ml.slipway.dev/deployment": "web"}) == ["web-v1", "web-v2"]
    assert names("team-a", **{"ml.slipway.dev/deployment": "web", "v": "2"}) == ["web-v2"]
    assert names("team-b", **{"ml.slipway.dev/deployment": "web"}) == ["web-v1"]
    cache.observe(obj(ISVC, "web-v2", "5", **{"ml.slipway.dev/deployment": "api"}))  # relabelled
    assert names("team-a", **{"ml.slipway.dev/deployment": "web"}) == ["web-v1"]
    assert names("team-a", **{"ml.slipway.dev/deployment": "api"}) == ["api-v1", "web-v2"]
    cache.observe(obj(ISVC, "web-v1", "6"), deleted=True)
    assert names("team-a", **{"ml.slipway.dev/deployment": "web"}) == []
    assert names("team-a") == ["api-v1", "web-v2"]


def test_kinds_read_for_a_few_fields_keep_only_those():
    cache = WatchCache(KINDS)
    cache.observe(obj(DEPLOYMENT, "web-v1-predictor", "1"))
    cache.observe(obj(ISVC, "web-v1", "1"))
    cache.observe(obj(("v1", "Secret"), "token", "1"))
    deployment = cache.get(*DEPLOYMENT, "web-v1-predictor", "team-a")
    assert deployment == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web-v1-predictor", "namespace": "team-a", "resourceVersion": "1", "labels": {}},
        "status": {"availableReplicas": 2},
    }
    isvc = cache.get(*ISVC, "web-v1", "team-a")
    assert "spec" not in isvc and isvc["status"] == {"conditions": [{"type": "Ready", "status": "True"}]}
    assert cache.size("v1", "Secret") == 0, "a kind it does not hold is not kept"
    assert cache.get(*MD, "none", "team-a") is None


def test_copies_handed_out_are_the_callers_own():
    cache = WatchCache(KINDS)
    cache.observe(obj(MD, "a", "1"))
    got = cache.get(*MD, "a", "team-a")
    got["status"]["conditions"].append({"type": "Mine"})
    assert len(cache.get(*MD, "a", "team-a")["status"]["conditions"]) == 1


def test_what_is_observed_is_copied_in_even_from_kopf_bodies():
    import kopf

    cache = WatchCache(KINDS)
    cache.primed = True
    raw_md, raw_isvc = obj(MD, "a", "1", team="x"), obj(ISVC, "a-v1", "1", team="x")
    cache.observe(kopf.Body(raw_md))
    cache.observe(kopf.Body(raw_isvc))
    raw_md["status"]["conditions"][0]["status"] = "False"
    raw_md["metadata"]["labels"]["team"] = "y"
    raw_isvc["status"]["conditions"][0]["status"] = "False"
    raw_isvc["metadata"]["labels"]["team"] = "y"
    assert cache.get(*MD, "a", "team-a")["status"]["conditions"][0]["status"] == "True"
    isvc = cache.get(*ISVC, "a-v1", "team-a")
    assert isvc["status"]["conditions"][0]["status"] == "True" and isvc["metadata"]["labels"] == {"team": "x"}
    listed = cache.list(*MD, "team-a", {"team": "x"})
    listed[0]["metadata"]["labels"]["team"] = "z"
    assert cache.list(*MD, "team-a", {"team": "x"})[0]["metadata"]["labels"] == {"team": "x"}


def test_only_equality_selectors_are_answered_here():
    assert equality_selector(None) == {} and equality_selector("a=b, c==d") == {"a": "b", "c": "d"}
    for other in ("a!=b", "a in (b)", "a", "!a"):
        assert equality_selector(other) is None, other


class NoReads(Kube):
    """A Kube whose reads fail the test: the ownership check must answer from the cache."""

    def get(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        raise AssertionError(f"read {kind} {name} from the API server")


def child(kind: tuple[str, str], name: str, owner: str | None) -> dict[str, Any]:
    out = obj(kind, name, "5")
    if owner:
        out["metadata"]["ownerReferences"] = [{"uid": owner, "kind": "ModelDeployment", "name": "md"}]
    return out


def test_the_ownership_check_asks_the_cache_for_every_child_kind():
    cache = WatchCache(KINDS)
    cache.primed = True
    kube = NoReads(api_client=object(), cache=cache)  # type: ignore[arg-type]
    for kind in (ISVC, HPA, ROUTE):
        cache.observe(child(kind, "mine", "uid-1"))
    cache.observe(child(ROUTE, "theirs", None))  # no label of ours: held all the same
    wanted = [child(k, n, None) for k in (ISVC, HPA, ROUTE) for n in ("mine", "absent")]
    kube.check_owned(wanted, "uid-1")  # absent or ours: no read, no error
    with pytest.raises(NotOwned, match="HTTPRoute theirs in namespace team-a"):
        kube.check_owned([child(ROUTE, "theirs", None)], "uid-1")
    cache.observe(child(ROUTE, "theirs", None), deleted=True)
    kube.check_owned([child(ROUTE, "theirs", None)], "uid-1")  # gone: free to create


def test_deleting_a_child_asks_the_cache_whose_it_is():
    deleted: list[str] = []

    class Deletes(NoReads):
        def delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
            deleted.append(f"{kind} {name}")
            return True

    cache = WatchCache(KINDS)
    cache.primed = True
    kube = Deletes(api_client=object(), cache=cache)  # type: ignore[arg-type]
    cache.observe(child(HPA, "mine", "uid-1"))
    cache.observe(child(HPA, "theirs", None))
    assert kube.delete_owned(*HPA, "mine", "team-a", "uid-1") is True
    assert kube.delete_owned(*HPA, "theirs", "team-a", "uid-1") is False  # someone else's: left alone
    assert kube.delete_owned(*HPA, "absent", "team-a", "uid-1") is False  # gone already
    assert deleted == ["HorizontalPodAutoscaler mine"]


def test_held_objects_are_nothing_the_garbage_collector_walks():
    import gc

    cache = WatchCache(KINDS)
    cache.primed = True
    gc.collect()
    before = len(gc.get_objects())
    for i in range(1000):
        cache.observe(obj(MD, f"md-{i}", str(i + 1), team="x"))
        cache.observe(obj(ISVC, f"md-{i}-v1", str(i + 1), team="x"))
    gc.collect()
    gc.collect()  # a tuple holding a tuple is untracked by the collection after the one that untracks the inner one
    assert len(gc.get_objects()) - before < 300  # 2,000 objects as dicts would be some 30,000 containers
    assert cache.get(*MD, "md-999", "team-a") == obj(MD, "md-999", "1000", team="x")
    assert len(cache.list(*ISVC, "team-a", {"team": "x"})) == 1000
