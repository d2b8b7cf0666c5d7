"""The test bed's real data path: Traefik as the Gateway API implementation, its Gateway; Prometheus with Kubernetes SD.

Traefik v3.6 (``github.com/traefik/traefik/v3``, ``./cmd/traefik``) is built inside the module's
own directory, so that its ``go.mod`` and ``replace`` directives apply, and cached under
``$SLIPWAY_CACHE_DIR/bin/traefik-<version>/traefik``. It runs as a local process with only its
``kubernetesGateway`` provider, pointed at the test bed's API server (endpoint, the admin token,
the test bed's CA). The test bed creates:

- the GatewayClass ``traefik`` (Traefik's controllerName ``traefik.io/gateway-controller``);
- the Gateway ``slipway-system/slipway-gateway`` with one HTTP listener ``web`` on a free loopback
  port (Traefik binds a Gateway listener to the entry point with the same port), routes allowed
  from all namespaces. This is the gateway the operator's HTTPRoutes attach to on the test bed
  (the operator's ``SLIPWAY_GATEWAY`` setting, see ``gateway_env``).

Traefik applies a new configuration at most every ``providersThrottleDuration`` (2 s by default):
the test bed lowers it to ``THROTTLE`` so that a route write reaches traffic fast; the bench
(``bench/traffic.py``) measures the delay. Traefik implements HTTPRoute weights and header
matches, not ``RequestMirror`` (see docs/rollouts.md).

Prometheus finds the predictor pods as a cluster's Prometheus does: ``kubernetes_sd_configs``
(role pod) on the test bed's API server, kept by the ``prometheus.io/*`` annotations. Debian's
package is built without Kubernetes SD, so Prometheus v3 is built from its Go module
(``github.com/prometheus/prometheus``, only the Kubernetes SD plugin compiled in) and cached
like Traefik.

Standard library only, like ``testbed.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import testbed as tb

TRAEFIK_VERSION = "v3.6.12"
TRAEFIK_MODULE = "github.com/traefik/traefik/v3"
GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_NAMESPACE = "slipway-system"
GATEWAY_NAME = "slipway-gateway"
LISTENER = "web"
THROTTLE = "50ms"
"""Traefik's providersThrottleDuration on the test bed (its default, 2 s, delays every route change)."""


def traefik_binary() -> Path:
    """Where the built Traefik lives (the cache path the project's set-up uses)."""
    return tb.cache_dir() / "bin" / f"traefik-{TRAEFIK_VERSION}" / "traefik"


def build_traefik() -> Path:
    """Build Traefik from its Go module (first use only: ~15 min on 2 cores), inside the module directory."""
    binary = traefik_binary()
    if binary.exists():
        return binary
    out = binary.parent
    tb.log(f"building traefik {TRAEFIK_VERSION} from the Go module proxy (first use; cached in {out})")
    module = tb.go_module_dir(TRAEFIK_MODULE, TRAEFIK_VERSION)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0")
    cmd = [
        "nice",
        "-n",
        "19",
        "go",
        "build",
        "-trimpath",
        "-ldflags=-s -w",
        "-o",
        str(tmp / "traefik"),
        "./cmd/traefik",
    ]
    tb._run(cmd, cwd=module, env=env)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return binary


PROMETHEUS_VERSION = "v3.16.0"
PROMETHEUS_MODULE = ("github.com/prometheus/prometheus", "v0.316.0")
"""Prometheus's Go module numbers its v3.X.Y releases v0.3XX.Y."""


def prometheus_binary() -> Path:
    """Where the built Prometheus lives."""
    return tb.cache_dir() / "bin" / f"prometheus-{PROMETHEUS_VERSION}" / "prometheus"


def build_prometheus() -> Path:
    """Build Prometheus from its Go module with Kubernetes service discovery (Debian's package has none).

    Only the Kubernetes SD plugin is compiled in (build tags ``remove_all_sd,enable_kubernetes_sd``;
    file and HTTP SD are always there), which keeps the cloud SDKs out of the build.
    """
    binary = prometheus_binary()
    if binary.exists():
        return binary
    out = binary.parent
    tb.log(f"building prometheus {PROMETHEUS_VERSION} from the Go module proxy (first use; cached in {out})")
    module = tb.go_module_dir(*PROMETHEUS_MODULE)
    tmp = out.with_suffix(".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    # its module ships a go.work (for its own sub-modules): build the module alone
    env = dict(os.environ, GOFLAGS="-mod=mod -buildvcs=false", CGO_ENABLED="0", GOWORK="off")
    version = PROMETHEUS_VERSION.lstrip("v")
    cmd = ["nice", "-n", "19", "go", "build", "-trimpath", "-tags", "remove_all_sd,enable_kubernetes_sd"]
    cmd += [f"-ldflags=-s -w -X github.com/prometheus/common/version.Version={version}"]
    cmd += ["-o", str(tmp / "prometheus"), "./cmd/prometheus"]
    tb._run(cmd, cwd=module, env=env)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return binary


def traefik_config(state: tb.State, port: int, api_port: int) -> dict[str, Any]:
    """Traefik's static configuration: one entry point per Gateway listener, the Gateway provider, ping."""
    pki = Path(state.dir) / "pki"
    return {
        "entryPoints": {
            LISTENER: {"address": f"127.0.0.1:{port}"},
            "traefik": {"address": f"127.0.0.1:{api_port}"},
        },
        "providers": {
            "providersThrottleDuration": THROTTLE,
            "kubernetesGateway": {
                "endpoint": state.urls["apiserver"],
                "token": state.token,
                "certAuthFilePath": str(pki / "ca.crt"),
                "throttleDuration": "0s",
            },
        },
        "ping": {"entryPoint": "traefik"},
        "log": {"level": "INFO"},
        "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
    }


def gateway_objects(port: int) -> list[dict[str, Any]]:
    """The namespace, GatewayClass and Gateway the operator's routes attach to."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "GatewayClass",
            "metadata": {"name": GATEWAY_CLASS},
            "spec": {"controllerName": CONTROLLER_NAME},
        },
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
            "spec": {
                "gatewayClassName": GATEWAY_CLASS,
                "listeners": [
                    {
                        "name": LISTENER,
                        "protocol": "HTTP",
                        "port": port,
                        "allowedRoutes": {"namespaces": {"from": "All"}},
                    }
                ],
            },
        },
    ]


def _gateway_programmed(state: tb.State) -> bool:
    out = json.loads(tb._kubectl(state, "get", "gateway", GATEWAY_NAME, "-n", GATEWAY_NAMESPACE, "-o", "json"))
    conditions = (out.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


def start_gateway(state: tb.State, binary: Path) -> None:
    """Traefik with its Gateway provider on the test bed's API server, and the Gateway it programs."""
    directory = Path(state.dir) / "traefik"
    directory.mkdir(parents=True, exist_ok=True)
    port, api_port = tb.free_port(), tb.free_port()
    state.ports.update(gateway=port, traefik=api_port)
    state.urls["gateway"] = f"http://127.0.0.1:{port}"
    # JSON is YAML: Traefik picks the format by the file's extension.
    (directory / "traefik.yaml").write_text(json.dumps(traefik_config(state, port, api_port), indent=2))
    tb._kubectl(
        state,
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": gateway_objects(port)}),
    )
    tb._spawn(state, "traefik", [str(binary), f"--configFile={directory / 'traefik.yaml'}"])
    tb._wait(state, "traefik", lambda: tb._http_ok(f"http://127.0.0.1:{api_port}/ping"), 60, "/ping")
    tb._wait(state, "traefik", lambda: _gateway_programmed(state), 60, f"Gateway {GATEWAY_NAME} Programmed")


def gateway_env(state: tb.State) -> dict[str, str]:
    """What a client and the operator need: the listener's URL and the Gateway routes attach to."""
    if "gateway" not in state.urls:
        return {}
    return {
        "SLIPWAY_GATEWAY_URL": state.urls["gateway"],
        "SLIPWAY_GATEWAY": f"{GATEWAY_NAMESPACE}/{GATEWAY_NAME}",
    }


def wait_for_route(
    url: str, host: str, path: str, timeout: float = 30.0, headers: dict[str, str] | None = None
) -> None:
    """Wait until the gateway answers ``path`` for ``host`` with anything but 404 (the route is programmed)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(url + path, headers={"Host": host, **(headers or {})})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                if resp.status < 400:
                    return
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except OSError as exc:
            last = str(exc)
        time.sleep(0.1)
    raise tb.TestbedError(f"the gateway never routed {host}{path}: {last}")


def prometheus_pod_scrape_config(state: tb.State) -> str:
    """A ``kubernetes_sd_configs`` (role pod) scrape job, as a cluster's Prometheus has, on the test bed's API server.

    It keeps pods annotated ``prometheus.io/scrape: "true"``, scrapes ``prometheus.io/path`` on
    ``prometheus.io/port`` of the pod IP, and labels the series ``namespace``, ``pod`` and
    ``modeldeployment`` (the pod's ``ml.slipway.dev/deployment`` label, which KServe copies from
    the InferenceService), which the alert rules group by.
    """
    pki = Path(state.dir) / "pki"
    token_file = Path(state.dir) / "prometheus" / "token"
    token_file.write_text(state.token)
    token_file.chmod(0o600)
    return f"""\
  - job_name: kubernetes-pods
    kubernetes_sd_configs:
      - role: pod
        api_server: {json.dumps(state.urls["apiserver"])}
        authorization: {{credentials_file: {json.dumps(str(token_file))}}}
        tls_config: {{ca_file: {json.dumps(str(pki / "ca.crt"))}}}
    relabel_configs:
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape]
        regex: "true"
        action: keep
      - source_labels: [__meta_kubernetes_pod_phase]
        regex: Running
        action: keep
      - source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path]
        regex: (.+)
        target_label: __metrics_path__
      - source_labels: [__meta_kubernetes_pod_ip, __meta_kubernetes_pod_annotation_prometheus_io_port]
        regex: (.+);(\\d+)
        replacement: $1:$2
        target_label: __address__
      - source_labels: [__meta_kubernetes_namespace]
        target_label: namespace
      - source_labels: [__meta_kubernetes_pod_name]
        target_label: pod
      - source_labels: [__meta_kubernetes_pod_label_ml_slipway_dev_deployment]
        target_label: modeldeployment
"""


def route_gateway(namespace: str, name: str) -> dict[str, Any]:
    """A ModelDeployment's ``spec.gateway`` on the test bed: attach to the test bed's Gateway, with a host of its own.

    Routes of several ModelDeployments share the Gateway's listener and all match the path prefix
    ``/``; a hostname per ModelDeployment keeps them apart (a client sends it as its Host).
    """
    return {
        "parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
        "hostnames": [route_host(namespace, name)],
    }


def route_host(namespace: str, name: str) -> str:
    """The Host a client sends to reach ModelDeployment ``name`` in ``namespace`` through the test bed's Gateway."""
    return f"{name}.{namespace}.slipway.test"
