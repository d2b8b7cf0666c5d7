"""Session fixtures: the real test bed (Kubernetes, MLflow, Prometheus, Alertmanager) and clients for it.

The test bed is brought up once per session, only when a test asks for it, and taken down at
the end. A test bed that is already up (``hack/testbed up --with mlflow,prometheus``) is reused
and left running, which makes the edit-test loop fast.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hack"))

from bed import lifecycle  # noqa: E402
from bed.addons import monitoring  # noqa: E402
from bed.state import State, testbed_dir  # noqa: E402

Kubectl = Callable[..., "subprocess.CompletedProcess[str]"]


@dataclass
class Testbed:
    """Handles to the running test bed."""

    state: State
    kubeconfig: Path
    kubectl: Path
    helm: Path
    dir: Path

    @property
    def mlflow_uri(self) -> str:
        return self.state.urls["mlflow"]

    @property
    def prometheus_url(self) -> str:
        return self.state.urls["prometheus"]

    @property
    def alertmanager_url(self) -> str:
        return self.state.urls["alertmanager"]

    def add_scrape_target(self, name: str, address: str, labels: dict[str, str] | None = None) -> None:
        monitoring.add_scrape_target(self.state, name, address, labels)

    def set_rules(self, name: str, text: str) -> None:
        monitoring.set_rules(self.state, name, text)

    def set_alert_webhooks(self, urls: list[str], token: str = "") -> None:
        monitoring.set_alert_webhooks(self.state, urls, token)

    def run_kubectl(
        self, *args: str, input: str | None = None, check: bool = True, namespace: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.kubectl), "--kubeconfig", str(self.kubeconfig)]
        if namespace:
            cmd += ["-n", namespace]
        proc = subprocess.run([*cmd, *args], input=input, capture_output=True, text=True, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr}")
        return proc


@pytest.fixture(scope="session")
def testbed() -> Iterator[Testbed]:
    existing = State.load(testbed_dir())
    reuse = (
        lifecycle.is_up(existing)
        and existing is not None
        and {"mlflow", "prometheus", "kserve-manager"} <= set(existing.pids)
    )
    state = existing if reuse and existing else lifecycle.up(("mlflow", "prometheus"))
    yield Testbed(
        state=state,
        kubeconfig=Path(state.kubeconfig),
        kubectl=Path(state.kubectl),
        helm=Path(state.helm),
        dir=Path(state.dir),
    )
    if not reuse:
        lifecycle.down()


@pytest.fixture
def kubectl(testbed: Testbed, namespace: str) -> Kubectl:
    """Run the real kubectl against the test bed, in the test's namespace unless -n is given."""

    def run(*args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        ns = None if ("-n" in args or "--namespace" in args or "-A" in args) else namespace
        return testbed.run_kubectl(*args, input=input, check=check, namespace=ns)

    return run


@pytest.fixture(scope="session")
def kube_api(testbed: Testbed):  # type: ignore[no-untyped-def]
    """A kubernetes.client.ApiClient configured for the test bed."""
    from kubernetes import client, config

    api = config.new_client_from_config(config_file=str(testbed.kubeconfig))
    yield api
    api.close()
    del client


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:10]}"
    testbed.run_kubectl("create", "namespace", name)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        out = testbed.run_kubectl("get", "serviceaccount", "default", "-n", name, "-o", "json", check=False)
        if out.returncode == 0 and json.loads(out.stdout)["metadata"]["name"] == "default":
            break
        time.sleep(0.2)
    yield name
    testbed.run_kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def mlflow_uri(testbed: Testbed) -> str:
    return testbed.mlflow_uri


@pytest.fixture(scope="session")
def prometheus_url(testbed: Testbed) -> str:
    return testbed.prometheus_url


@pytest.fixture(scope="session")
def alertmanager_url(testbed: Testbed) -> str:
    return testbed.alertmanager_url


DIAGNOSTICS = (
    ("get", "deployments,replicasets,pods,inferenceservices,horizontalpodautoscalers,httproutes", "-o", "wide"),
    ("get", "events", "--sort-by=.lastTimestamp"),
)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A failed test that had a namespace: what was in it (children, pods, events) goes into the report."""
    report = yield
    funcargs = getattr(item, "funcargs", {})
    namespace, bed = funcargs.get("namespace"), funcargs.get("testbed")
    if report.failed and call.when == "call" and isinstance(namespace, str) and isinstance(bed, Testbed):
        for args in DIAGNOSTICS:
            out = bed.run_kubectl(*args, check=False, namespace=namespace)
            report.sections.append((f"kubectl {' '.join(args[:2])} -n {namespace}", out.stdout + out.stderr))
        nodes = bed.run_kubectl("get", "nodes", "-o", "wide", check=False)
        report.sections.append(("kubectl get nodes", nodes.stdout + nodes.stderr))
    return report  # type: ignore[no-any-return]
