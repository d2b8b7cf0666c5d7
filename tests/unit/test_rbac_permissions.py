"""The start-up RBAC check's pure part: which permissions the watches need, and the messages for the missing ones."""

from __future__ import annotations

import logging

import kopf
import pytest
import urllib3

import slipway.handlers  # noqa: F401  (registers the handlers)
from slipway.handlers import rbac
from slipway.handlers.rbac import watched_kinds
from slipway.permissions import NOTHING_RUNS, Access, Watched, merge, problems, required, scopes, summary

DEPLOYMENTS = Watched("apps", "v1", "deployments", indexed=True)
ROUTES = Watched("gateway.networking.k8s.io", "v1", "httproutes")


def test_the_checked_kinds_are_those_the_registered_handlers_watch():
    kinds = {(k.group, k.resource): k.indexed for k in watched_kinds(kopf.get_default_registry())}
    assert kinds == {
        ("ml.slipway.dev", "modeldeployments"): True,
        ("ml.slipway.dev", "modelversions"): True,
        ("ml.slipway.dev", "trainingruns"): False,
        ("serving.kserve.io", "inferenceservices"): True,  # indexed by the watch cache, watched as a child
        ("apps", "deployments"): True,
        ("batch", "jobs"): True,
        ("autoscaling", "horizontalpodautoscalers"): True,  # the watch cache holds them for the ownership check
        ("gateway.networking.k8s.io", "httproutes"): True,
    }


def test_a_kind_is_indexed_if_any_of_its_handlers_indexes():
    kinds = merge([Watched("apps", "v1", "deployments"), DEPLOYMENTS, Watched("apps", "v1", "deployments")])
    assert kinds == [DEPLOYMENTS]


def test_cluster_wide_needs_list_and_watch_in_all_namespaces():
    assert required([DEPLOYMENTS], []) == [
        Access("list", "apps", "deployments", ""),
        Access("watch", "apps", "deployments", ""),
    ]


def test_watched_namespaces_need_list_and_watch_in_each_and_patterns_are_not_checked():
    assert scopes(["b", "a", "team-*", "b"]) == (["a", "b"], ["team-*"])
    assert required([DEPLOYMENTS], ["b", "a", "team-*"]) == [
        Access("list", "apps", "deployments", "a"),
        Access("watch", "apps", "deployments", "a"),
        Access("list", "apps", "deployments", "b"),
        Access("watch", "apps", "deployments", "b"),
    ]


def test_a_permission_is_described_as_kubectl_auth_can_i_spells_it():
    assert Access("list", "apps", "deployments").describe() == "list deployments.apps in all namespaces"
    assert Access("watch", "", "pods", "ml").describe() == "watch pods in namespace ml"


def test_each_missing_permission_is_named_with_what_it_breaks():
    missing = [Access("watch", "apps", "deployments", "ml"), Access("list", "apps", "deployments", "ml")]
    missing.append(Access("list", ROUTES.group, ROUTES.resource, "ml"))
    assert problems([DEPLOYMENTS, ROUTES], missing) == [
        f"list deployments.apps in namespace ml ({NOTHING_RUNS})",
        "list httproutes.gateway.networking.k8s.io in namespace ml "
        "(kopf cannot watch httproutes.gateway.networking.k8s.io: its handlers never run)",
        f"watch deployments.apps in namespace ml ({NOTHING_RUNS})",
    ]
    assert "the operator would do nothing" in NOTHING_RUNS


def test_nothing_missing_is_no_problem():
    assert problems([DEPLOYMENTS], []) == []


def test_the_summary_counts_and_names_every_missing_permission():
    messages = problems([DEPLOYMENTS], [Access("list", "apps", "deployments")])
    text = summary(messages)
    assert text.startswith(
        "1 RBAC permission(s) missing: list deployments.apps in all namespaces (kopf runs no handler"
    )
    assert "restart the operator" in text


class _Api:
    def close(self) -> None:
        pass


def _no_answer(*_args, **_kwargs):
    raise urllib3.exceptions.MaxRetryError(None, "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews")


async def test_an_unanswered_check_is_tried_again_then_skipped_with_a_warning(monkeypatch, caplog):
    """An API server that does not answer the reviews delays the start-up; it never fails it."""
    monkeypatch.setattr(rbac, "load_api_client", _Api)
    monkeypatch.setattr(rbac, "served", lambda _api, kinds: list(kinds))
    monkeypatch.setattr(rbac, "refused", _no_answer)
    logger = logging.getLogger("test.rbac")
    for retry in range(rbac.ATTEMPTS - 1):
        with pytest.raises(kopf.TemporaryError):
            await rbac.check_rbac(memo=kopf.Memo(), retry=retry, logger=logger)
    with caplog.at_level(logging.WARNING, logger="test.rbac"):
        await rbac.check_rbac(memo=kopf.Memo(), retry=rbac.ATTEMPTS - 1, logger=logger)
    assert "starting without it" in caplog.text


async def test_refused_permissions_fail_the_start_up_permanently(monkeypatch, caplog):
    monkeypatch.setattr(rbac, "load_api_client", _Api)
    monkeypatch.setattr(rbac, "served", lambda _api, kinds: [k for k in kinds if k.resource == "deployments"])
    monkeypatch.setattr(rbac, "refused", lambda _api, accesses: [a for a in accesses if a.verb == "list"])
    with caplog.at_level(logging.ERROR), pytest.raises(kopf.PermanentError, match="1 RBAC permission"):
        await rbac.check_rbac(memo=kopf.Memo(watch_namespaces=("ml",)), retry=0, logger=logging.getLogger("t"))
    assert f"missing RBAC permission: list deployments.apps in namespace ml ({NOTHING_RUNS})" in caplog.text
