"""Measure one analysis metric with its provider (Prometheus or web), web headers read from Secrets."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from slipway.api.analysis import AnalysisMetric, WebMetric
from slipway.api.common import parse_duration
from slipway.api.names import LABEL_ANALYSIS_SECRET
from slipway.clients.kube import Kube, error_message
from slipway.clients.prometheus import NoData, Prometheus, PrometheusError
from slipway.clients.web import Web, WebError, WebNoData
from slipway.rollout.analysis import Measurement, judge, render_query

WEB = Web()
"""One connection pool for every web metric of this operator."""
SECRET_LABEL = LABEL_ANALYSIS_SECRET
"""A Secret a web metric may send must carry this label set to "true" (its owner opted it in)."""


def measure_one(
    prom: Prometheus, kube: Kube | None, metric: AnalysisMetric, namespace: str, name: str, version: str, now: datetime
) -> Measurement:
    """Measure and judge one metric; no data is Inconclusive, any failure to get a number is an Error."""
    try:
        if metric.web is not None:
            value = _web(kube, metric.web, namespace, name, version)
        else:
            value = prom.query(render_query(metric.query or "", namespace=namespace, name=name, version=version))
    except (NoData, WebNoData) as exc:
        return judge(metric, version, None, now).model_copy(update={"message": str(exc)})
    except (PrometheusError, WebError) as exc:
        return judge(metric, version, None, now, error=str(exc))
    return judge(metric, version, value, now)


def _web(kube: Kube | None, web: WebMetric, namespace: str, name: str, version: str) -> float:
    def fill(text: str) -> str:
        return render_query(text, namespace=namespace, name=name, version=version)

    headers = secret_headers(kube, web, namespace)
    body = fill(web.body) if web.body is not None else None
    timeout = parse_duration(web.timeout).total_seconds()
    return WEB.value(fill(web.url), web.json_path, method=web.method, headers=headers, body=body, timeout=timeout)


def secret_headers(kube: Kube | None, web: WebMetric, namespace: str) -> dict[str, str]:
    """The request's headers, Secret references read now (errors name the Secret, never its content)."""
    out: dict[str, str] = {}
    for header in web.headers or []:
        if header.value is not None:
            out[header.name] = header.value
            continue
        assert header.value_from is not None
        ref = header.value_from.secret_key_ref
        what = f"header {header.name}: Secret {namespace}/{ref.name}"
        if kube is None:
            raise WebError(f"{what}: no Kubernetes client to read it")
        try:
            secret = kube.get("v1", "Secret", ref.name, namespace)
        except Exception as exc:  # e.g. Forbidden: the chart grants Secrets only with analysis.secretAccess
            raise WebError(f"{what} could not be read: {error_message(exc)}") from exc
        if secret is None:
            raise WebError(f"{what} not found")
        if ((secret.get("metadata") or {}).get("labels") or {}).get(SECRET_LABEL) != "true":
            raise WebError(f'{what} is not labelled {SECRET_LABEL}="true": only Secrets opted in are sent')
        raw = (secret.get("data") or {}).get(ref.key)
        if raw is None:
            raise WebError(f"{what} has no key {ref.key}")
        try:
            out[header.name] = base64.b64decode(raw).decode().strip("\r\n")
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise WebError(f"{what}, key {ref.key}: not UTF-8 text") from exc
    return out
