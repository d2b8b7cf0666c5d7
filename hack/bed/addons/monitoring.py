"""Prometheus (built with Kubernetes SD) and Alertmanager on the test bed, and their targets, rules and webhooks.

Prometheus finds the predictor pods as a cluster's Prometheus does: ``kubernetes_sd_configs``
(role pod) on the test bed's API server, kept by the ``prometheus.io/*`` annotations (Debian's
package is built without Kubernetes SD: :func:`bed.builds.build_prometheus` builds it from its Go
module). Tests and benches add file-SD targets and rule files and point Alertmanager at webhooks.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from pathlib import Path

from bed.base import TestbedError
from bed.builds import prometheus_binary
from bed.procs import free_port, http_ok, spawn, wait
from bed.state import State

PROMETHEUS_CONFIG = """\
global:
  scrape_interval: 1s
  evaluation_interval: 1s
rule_files:
  - {dir}/rules/*.yml
alerting:
  alertmanagers:
    - static_configs:
        - targets: ["127.0.0.1:{am_port}"]
scrape_configs:
  - job_name: testbed-targets
    file_sd_configs:
      - files: ["{dir}/targets/*.json"]
        refresh_interval: 1s
{pods}"""

ALERTMANAGER_CONFIG = """\
route:
  receiver: slipway
  group_by: [alertname, namespace, modeldeployment]
  group_wait: 0s
  group_interval: 1s
  repeat_interval: 1m
receivers:
  - name: slipway
    webhook_configs:
{webhooks}
"""


def alertmanager_config(webhook_urls: list[str], token: str = "") -> str:
    """Alertmanager's config, sending every alert to each webhook URL (payload version 4)."""
    auth = f"        http_config:\n          authorization: {{type: Bearer, credentials: {json.dumps(token)}}}\n"
    hooks = "".join(
        f"      - url: {json.dumps(url)}\n        send_resolved: true\n" + (auth if token else "")
        for url in webhook_urls
    )
    return ALERTMANAGER_CONFIG.format(webhooks=hooks or "      []\n")


def prometheus_pod_scrape_config(state: State) -> str:
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


def start_prometheus(state: State) -> None:
    """Debian's Alertmanager and Prometheus (built with Kubernetes SD), wired together, with targets and rules."""
    if not shutil.which("prometheus-alertmanager"):
        raise TestbedError("prometheus-alertmanager is not installed (apt-get install prometheus-alertmanager)")
    prometheus = prometheus_binary()
    if not prometheus.exists():
        raise TestbedError(f"{prometheus} is not built (hack/testbed build)")
    tb = Path(state.dir)
    am_dir, prom_dir = tb / "alertmanager", tb / "prometheus"
    for d in (am_dir, prom_dir):
        shutil.rmtree(d, ignore_errors=True)
    for d in (am_dir / "data", prom_dir / "data", prom_dir / "rules", prom_dir / "targets"):
        d.mkdir(parents=True)
    am_port, prom_port = free_port(), free_port()
    state.ports.update(alertmanager=am_port, prometheus=prom_port)
    state.urls.update(alertmanager=f"http://127.0.0.1:{am_port}", prometheus=f"http://127.0.0.1:{prom_port}")
    webhook = os.environ.get("SLIPWAY_ALERT_WEBHOOK_URL", "")
    (am_dir / "alertmanager.yml").write_text(alertmanager_config([webhook] if webhook else []))
    spawn(
        state,
        "alertmanager",
        [
            shutil.which("prometheus-alertmanager") or "",
            f"--config.file={am_dir / 'alertmanager.yml'}",
            f"--storage.path={am_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{am_port}",
            "--cluster.listen-address=",
            "--log.level=warn",
        ],
    )
    pods = prometheus_pod_scrape_config(state)  # the predictor pods, found through the API server
    (prom_dir / "prometheus.yml").write_text(PROMETHEUS_CONFIG.format(dir=prom_dir, am_port=am_port, pods=pods))
    spawn(
        state,
        "prometheus",
        [
            str(prometheus),
            f"--config.file={prom_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={prom_dir / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--web.enable-lifecycle",
            "--log.level=warn",
        ],
    )
    wait(state, "alertmanager", lambda: http_ok(f"{state.urls['alertmanager']}/-/ready"), 30, "/-/ready")
    wait(state, "prometheus", lambda: http_ok(f"{state.urls['prometheus']}/-/ready"), 30, "/-/ready")


def _post(url: str) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, method="POST", data=b""), timeout=10) as resp:
        if resp.status >= 300:
            raise TestbedError(f"POST {url}: HTTP {resp.status}")


def add_scrape_target(state: State, name: str, address: str, labels: dict[str, str] | None = None) -> None:
    """Have Prometheus scrape `address` (host:port, /metrics) as job `name`; file SD picks it up in ~1s."""
    targets = Path(state.dir) / "prometheus" / "targets"
    body = [{"targets": [address], "labels": {"job": name, **(labels or {})}}]
    (targets / f"{name}.json.tmp").write_text(json.dumps(body))
    (targets / f"{name}.json.tmp").replace(targets / f"{name}.json")


def remove_scrape_target(state: State, name: str) -> None:
    """Stop scraping the target `name` added by add_scrape_target."""
    (Path(state.dir) / "prometheus" / "targets" / f"{name}.json").unlink(missing_ok=True)


def set_rules(state: State, name: str, text: str) -> None:
    """Install a Prometheus rule file (YAML text) and reload Prometheus."""
    (Path(state.dir) / "prometheus" / "rules" / f"{name}.yml").write_text(text)
    _post(f"{state.urls['prometheus']}/-/reload")


def set_alert_webhooks(state: State, urls: list[str], token: str = "") -> None:
    """Point Alertmanager at these webhook receivers (with a bearer token, if given) and reload it."""
    (Path(state.dir) / "alertmanager" / "alertmanager.yml").write_text(alertmanager_config(urls, token))
    _post(f"{state.urls['alertmanager']}/-/reload")
