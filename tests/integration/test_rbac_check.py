"""The start-up RBAC check against the real API server: a Role without list/watch on Deployments stops the operator.

The operator runs as the chart's ServiceAccount (a real token), with the chart's Role in the
watched namespace: as installed, it starts; with the rule on ``apps`` Deployments taken out of
the Role, it exits at start-up naming each missing permission, instead of running and doing
nothing (kopf would wait for ever for the Deployments' initial listing).
"""

from __future__ import annotations

import json

import pytest
from chart_install import CHART, helm, service_account_kubeconfig
from operator_process import OperatorProcess

from slipway.clients.access import refused, served
from slipway.permissions import NOTHING_RUNS, Access, Watched

pytestmark = pytest.mark.integration
EXIT_TIMEOUT = 90.0


def _install(testbed, kubectl, namespace: str, tmp_path, release: str):
    helm(
        testbed,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--skip-crds",
        "--set",
        f"watchNamespaces={{{namespace}}}",
    )
    sa = f"{release}-slipway"
    return sa, service_account_kubeconfig(testbed, kubectl, namespace, sa, tmp_path / "sa.kubeconfig")


def _drop_deployments_rule(kubectl, role: str) -> None:
    """The chart's Role without its rule on apps Deployments (a hand-made Role that forgot them)."""
    manifest = json.loads(kubectl("get", "role", role, "-o", "json").stdout)
    rules = [r for r in manifest["rules"] if "deployments" not in r.get("resources", [])]
    assert len(rules) == len(manifest["rules"]) - 1
    manifest["rules"] = rules
    kubectl("replace", "-f", "-", input=json.dumps(manifest))


def test_without_list_and_watch_on_deployments_the_operator_exits_naming_them(
    testbed, kubectl, namespace, slipway_crds, tmp_path
):
    release = f"x{namespace[-8:]}"
    sa, kubeconfig = _install(testbed, kubectl, namespace, tmp_path, release)
    try:
        _drop_deployments_rule(kubectl, sa)
        who = f"--as=system:serviceaccount:{namespace}:{sa}"
        assert kubectl("auth", "can-i", "list", "deployments.apps", who, check=False).stdout.strip() == "no"
        proc = OperatorProcess(kubeconfig, namespace, tmp_path).start()
        try:
            assert proc.proc is not None
            code = proc.proc.wait(timeout=EXIT_TIMEOUT)
            log = proc.log_path.read_text(errors="replace")
            assert code == 1, log
            assert "start-up failed, exiting: 2 RBAC permission(s) missing: list deployments.apps" in log, log
            assert "Traceback" not in log, log
            for verb in ("list", "watch"):
                line = f"missing RBAC permission: {verb} deployments.apps in namespace {namespace} ({NOTHING_RUNS})"
                assert line in log, log
            assert "2 RBAC permission(s) missing" in log, log
            assert "inferenceservices" not in log.split("missing RBAC permission", 1)[1], "only what lacks is named"
        finally:
            print(proc.log_tail(40))
            proc.stop()
    finally:
        helm(testbed, "uninstall", release, "-n", namespace)


def test_with_the_charts_rbac_the_operator_starts_and_says_so(testbed, kubectl, namespace, slipway_crds, tmp_path):
    release = f"y{namespace[-8:]}"
    _, kubeconfig = _install(testbed, kubectl, namespace, tmp_path, release)
    try:
        proc = OperatorProcess(kubeconfig, namespace, tmp_path).start()
        try:
            proc.wait_healthy()
            log = proc.log_path.read_text(errors="replace")
            assert "RBAC check: list and watch granted on " in log, log
            assert "deployments.apps" in log.split("RBAC check: list and watch granted on ", 1)[1], log
            assert "missing RBAC permission" not in log, log
        finally:
            print(proc.log_tail(40))
            proc.stop()
    finally:
        helm(testbed, "uninstall", release, "-n", namespace)


def test_the_client_asks_the_api_server_as_the_caller(testbed, kubectl, namespace, slipway_crds, tmp_path):
    """The client functions alone, as the chart's ServiceAccount: cluster-wide refused, its namespace granted."""
    from kubernetes import config

    release = f"z{namespace[-8:]}"
    _, kubeconfig = _install(testbed, kubectl, namespace, tmp_path, release)
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        deployments = Watched("apps", "v1", "deployments", indexed=True)
        absent = Watched("example.invalid", "v1", "widgets")
        assert served(api, [deployments, absent]) == [deployments]
        here = [Access("list", "apps", "deployments", namespace), Access("watch", "apps", "deployments", namespace)]
        everywhere = Access("list", "apps", "deployments")
        assert refused(api, [*here, everywhere]) == [everywhere]
    finally:
        api.close()
        helm(testbed, "uninstall", release, "-n", namespace)
