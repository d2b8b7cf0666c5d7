"""The Helm chart installs on the real API server: a running operator Deployment, least-privilege RBAC."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
CHART = Path(__file__).resolve().parents[2] / "charts" / "slipway"


def helm(testbed, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [str(testbed.helm), "--kubeconfig", str(testbed.kubeconfig), *args], capture_output=True, text=True, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)}: {proc.stderr}")
    return proc


def test_lint_and_schema_rejects_bad_values(testbed):
    assert "0 chart(s) failed" in helm(testbed, "lint", str(CHART)).stdout
    bad = helm(
        testbed,
        "template",
        "x",
        str(CHART),
        "--kube-version",
        "1.34.4",
        "--set",
        "mlflow.trackingUri=ftp://x",
        check=False,
    )
    assert bad.returncode != 0 and "/mlflow/trackingUri" in bad.stderr
    unknown = helm(testbed, "template", "x", str(CHART), "--kube-version", "1.34.4", "--set", "replicas=2", check=False)
    assert unknown.returncode != 0 and "replicas" in unknown.stderr
    two_writers = helm(
        testbed, "template", "x", str(CHART), "--kube-version", "1.34.4",
        "--set", "replicaCount=2", "--set", "leaderElection.enabled=false", check=False,
    )  # fmt: skip
    assert two_writers.returncode != 0 and "leaderElection/enabled" in two_writers.stderr, two_writers.stderr
    gone = helm(testbed, "template", "x", str(CHART), "--kube-version", "1.34.4", "--set", "peering.enabled=true",
                check=False)  # fmt: skip
    assert gone.returncode != 0 and "peering" in gone.stderr, "kopf peering is no more: leader election replaces it"
    one = helm(
        testbed, "template", "x", str(CHART), "--kube-version", "1.34.4", "--set", "leaderElection.enabled=false"
    )
    assert "SLIPWAY_LEADER_ELECTION_LEASE" not in one.stdout and "kind: Role\n" not in one.stdout


def test_install_runs_the_operator_with_least_privilege(testbed, kubectl, namespace):
    release = f"r{namespace[-8:]}"
    helm(
        testbed,
        "install",
        release,
        str(CHART),
        "-n",
        namespace,
        "--set",
        "replicaCount=2",
        "--set",
        "mlflow.webhookSecret=mlflow-webhook",
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            dep = json.loads(kubectl("get", "deployment", f"{release}-slipway", "-o", "json").stdout)
            if dep["status"].get("availableReplicas") == 2:
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"operator Deployment not available: {dep['status']}")
        pod_spec = dep["spec"]["template"]["spec"]
        container = pod_spec["containers"][0]
        assert pod_spec["securityContext"]["runAsNonRoot"] is True
        assert pod_spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        env = {e["name"]: e for e in container["env"]}
        assert env["SLIPWAY_MLFLOW_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-webhook"
        assert env["SLIPWAY_LEADER_ELECTION_LEASE"]["value"] == f"{release}-slipway"
        assert env["SLIPWAY_LEADER_ELECTION_NAMESPACE"]["value"] == namespace
        assert env["SLIPWAY_POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
        assert dep["spec"]["strategy"]["type"] == "RollingUpdate"

        sa = f"--as=system:serviceaccount:{namespace}:{release}-slipway"

        def can(verb: str, resource: str) -> bool:
            return kubectl("auth", "can-i", verb, resource, sa, "-A", check=False).stdout.strip() == "yes"

        assert can("watch", "modeldeployments.ml.slipway.dev")
        assert can("patch", "modeldeployments.ml.slipway.dev/status")
        assert can("create", "inferenceservices.serving.kserve.io")
        assert can("patch", "httproutes.gateway.networking.k8s.io")
        assert can("create", "jobs.batch")
        assert not can("get", "secrets")
        assert not can("delete", "nodes")
        assert not can("create", "clusterroles.rbac.authorization.k8s.io")

        def can_here(verb: str, resource: str, ns: str = namespace) -> bool:
            return kubectl("auth", "can-i", verb, resource, sa, "-n", ns, check=False).stdout.strip() == "yes"

        lease = f"leases.coordination.k8s.io/{release}-slipway"
        assert can_here("create", "leases.coordination.k8s.io") and can_here("update", lease)
        assert can_here("get", lease) and not can_here("update", "leases.coordination.k8s.io/kube-scheduler")
        assert not can_here("update", lease, "kube-system") and not can_here("create", "leases", "default")
        role = json.loads(kubectl("get", "clusterrole", f"{release}-slipway", "-o", "json").stdout)
        assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    finally:
        helm(testbed, "uninstall", release, "-n", namespace, check=False)
    selector = f"app.kubernetes.io/instance={release}"
    left = kubectl(
        "get", "deployment,service,serviceaccount,configmap,role,rolebinding", "-l", selector, "-o", "name"
    ).stdout
    cluster_left = kubectl("get", "clusterrole,clusterrolebinding", "-l", selector, "-o", "name", "-A").stdout
    assert left.strip() == "" and cluster_left.strip() == "", f"left behind: {left} {cluster_left}"
    crds = kubectl("get", "crd", "-o", "name", "-A").stdout
    assert "modeldeployments.ml.slipway.dev" in crds, "helm keeps the CRDs on uninstall"
