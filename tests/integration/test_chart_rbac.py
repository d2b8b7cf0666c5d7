"""The chart's RBAC suffices: the operator, authenticated as the chart's ServiceAccount, completes a rollout."""

from __future__ import annotations

import pytest
from chart_install import CHART, helm, service_account_kubeconfig
from kubectl_scenario import (
    deployment,
    first_version_up,
    md_status,
    model_version,
    move_alias,
    predictor,
    route_weights,
)
from operator_process import OperatorProcess, wait_until

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("scope", ["cluster", "watched-namespace"])
def test_operator_with_only_the_charts_permissions_completes_a_rollout(
    testbed, kubectl, namespace, slipway_crds, tmp_path, scope
):
    """Watch-all: a ClusterRole. With watchNamespaces: Roles there only, nothing namespaced anywhere else."""
    release = f"r{namespace[-8:]}"
    values = ["--set", f"watchNamespaces={{{namespace}}}"] if scope == "watched-namespace" else []
    helm(testbed, "install", release, str(CHART), "-n", namespace, "--skip-crds", *values)
    sa = f"{release}-slipway"
    try:
        who = f"--as=system:serviceaccount:{namespace}:{sa}"
        assert kubectl("auth", "can-i", "get", "secrets", who, check=False).stdout.strip() == "no"

        def can(verb: str, what: str, where: str) -> bool:
            out = kubectl("auth", "can-i", verb, what, who, "-n", where, check=False).stdout.strip()
            return out == "yes"

        assert can("create", "inferenceservices.serving.kserve.io", namespace)
        assert can("patch", "modeldeployments.ml.slipway.dev/status", namespace)
        assert can("watch", "analysistemplates.ml.slipway.dev", namespace)
        assert not can("create", "analysistemplates.ml.slipway.dev", namespace), "templates are read only"
        assert can("list", "clusteranalysistemplates.ml.slipway.dev", "default")
        assert not can("get", "secrets", namespace), "no Secrets without analysis.secretAccess"
        # notification Secrets: the ones named in notifications.secretNames, by name, and no other
        assert can("get", "secrets/slipway-notifications", namespace)
        assert not can("get", "secrets/mlflow-credentials", namespace)
        assert not can("list", "secrets", namespace)
        elsewhere = [("create", "inferenceservices.serving.kserve.io"), ("list", "modeldeployments.ml.slipway.dev"),
                     ("create", "jobs.batch"), ("delete", "httproutes.gateway.networking.k8s.io")]  # fmt: skip
        granted = [(verb, what) for verb, what in elsewhere if can(verb, what, "default")]
        assert granted == ([] if scope == "watched-namespace" else elsewhere), granted
        kubeconfig = service_account_kubeconfig(testbed, kubectl, namespace, sa, tmp_path / "sa.kubeconfig")
        lease = {"SLIPWAY_LEADER_ELECTION_LEASE": sa, "SLIPWAY_LEADER_ELECTION_NAMESPACE": namespace}  # the chart's
        proc = OperatorProcess(kubeconfig, namespace, tmp_path, testbed.prometheus_url, env=lease).start()
        try:
            model_version(kubectl, "1", ["champion"])
            model_version(kubectl, "2", [])
            predictor(kubectl, "1")
            predictor(kubectl, "2")
            deployment(kubectl, {"canary": {"steps": [{"setWeight": 50}, {"pause": {"duration": "1s"}}]}})
            first_version_up(kubectl)
            move_alias(kubectl, "1", "2")
            wait_until(lambda: route_weights(kubectl) == {"1": 50, "2": 50}, what="canary at 50%")
            wait_until(lambda: md_status(kubectl).get("stableVersion") == "2", timeout=120, what="v2 promoted")
            log = proc.log_path.read_text(errors="replace")
            # not a bare 403: timestamps; "is forbidden" is the API server's message in a failed pass's log line
            denied = ("(403)", "Forbidden", "is forbidden", "403: ")
            assert not [d for d in denied if d in log], proc.log_tail(80)
            assert "failed (next in" not in log, proc.log_tail(80)
            kubectl("delete", "modeldeployments", "--all", "--timeout=60s", check=False)
        finally:
            print(proc.log_tail(60))
            proc.stop()
    finally:
        helm(testbed, "uninstall", release, "-n", namespace)


def test_analysis_secret_access_grants_get_on_secrets_in_the_watched_namespaces_only(testbed, kubectl, namespace):
    """Web metrics' headers from Secrets: `get` (not list) where the operator watches, with analysis.secretAccess."""
    release = f"s{namespace[-8:]}"
    values = ["--set", "analysis.secretAccess=true", "--set", f"watchNamespaces={{{namespace}}}"]
    helm(testbed, "install", release, str(CHART), "-n", namespace, "--skip-crds", *values)
    try:
        who = f"--as=system:serviceaccount:{namespace}:{release}-slipway"

        def can(verb: str, where: str) -> bool:
            out = kubectl("auth", "can-i", verb, "secrets", who, "-n", where, check=False).stdout.strip()
            return out == "yes"

        assert can("get", namespace)
        assert not can("list", namespace) and not can("get", "default")
    finally:
        helm(testbed, "uninstall", release, "-n", namespace)
