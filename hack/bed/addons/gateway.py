"""The test bed's data path: Traefik as the Gateway API implementation, and the Gateway the operator's routes use.

Traefik v3.6 (``github.com/traefik/traefik/v3``, built by :func:`bed.builds.build_traefik`) runs
as a local process with only its ``kubernetesGateway`` provider, pointed at the test bed's API
server (endpoint, the admin token, the test bed's CA). The test bed creates:

- the GatewayClass ``traefik`` (Traefik's controllerName ``traefik.io/gateway-controller``);
- the Gateway ``slipway-system/slipway-gateway`` with one HTTP listener ``web`` on a free loopback
  port (Traefik binds a Gateway listener to the entry point with the same port), routes allowed
  from all namespaces. This is the gateway the operator's HTTPRoutes attach to on the test bed
  (the operator's ``SLIPWAY_GATEWAY`` setting, see ``gateway_env``).

Traefik applies a new configuration at most every ``providersThrottleDuration`` (2 s by default):
the test bed lowers it to ``THROTTLE`` so that a route write reaches traffic fast; the bench
(``bench/traffic.py``) measures the delay. Traefik implements HTTPRoute weights and header
matches, not ``RequestMirror`` (see docs/rollouts.md).
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from bed.base import TestbedError
from bed.controlplane import kubectl
from bed.procs import free_port, http_ok, spawn, wait
from bed.state import State

GATEWAY_CLASS = "traefik"
CONTROLLER_NAME = "traefik.io/gateway-controller"
GATEWAY_NAMESPACE = "slipway-system"
GATEWAY_NAME = "slipway-gateway"
LISTENER = "web"
THROTTLE = "50ms"
"""Traefik's providersThrottleDuration on the test bed (its default, 2 s, delays every route change)."""


def traefik_config(state: State, port: int, api_port: int) -> dict[str, Any]:
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


def _gateway_programmed(state: State) -> bool:
    out = json.loads(kubectl(state, "get", "gateway", GATEWAY_NAME, "-n", GATEWAY_NAMESPACE, "-o", "json"))
    conditions = (out.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Programmed" and c["status"] == "True" for c in conditions)


def start_gateway(state: State, binary: Path) -> None:
    """Traefik with its Gateway provider on the test bed's API server, and the Gateway it programs."""
    directory = Path(state.dir) / "traefik"
    directory.mkdir(parents=True, exist_ok=True)
    port, api_port = free_port(), free_port()
    state.ports.update(gateway=port, traefik=api_port)
    state.urls["gateway"] = f"http://127.0.0.1:{port}"
    # JSON is YAML: Traefik picks the format by the file's extension.
    (directory / "traefik.yaml").write_text(json.dumps(traefik_config(state, port, api_port), indent=2))
    kubectl(
        state,
        "apply",
        "--server-side",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": gateway_objects(port)}),
    )
    spawn(state, "traefik", [str(binary), f"--configFile={directory / 'traefik.yaml'}"])
    wait(state, "traefik", lambda: http_ok(f"http://127.0.0.1:{api_port}/ping"), 60, "/ping")
    wait(state, "traefik", lambda: _gateway_programmed(state), 60, f"Gateway {GATEWAY_NAME} Programmed")


def gateway_env(state: State) -> dict[str, str]:
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
    raise TestbedError(f"the gateway never routed {host}{path}: {last}")


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
