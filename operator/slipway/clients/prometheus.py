"""Prometheus instant queries for analysis, with named errors for no data and an unreachable server."""

from __future__ import annotations

import math
from typing import Any

import httpx


class PrometheusError(RuntimeError):
    """The query gave no usable number; the analysis treats every subclass as inconclusive."""


class NoData(PrometheusError):
    """The query answered with an empty result (e.g. no traffic yet)."""


class Unreachable(PrometheusError):
    """Prometheus could not be reached, or answered with a server error."""


class QueryFailed(PrometheusError):
    """Prometheus refused the query (bad PromQL) or the result is not one number."""


class Prometheus:
    """A small synchronous client for ``/api/v1/query`` (reconcilers call it through ``off_loop``)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def query(self, promql: str) -> float:
        """The value of an instant query that returns one sample (a vector of one series, or a scalar)."""
        return parse_result(self._data(promql))

    def query_by(self, promql: str, label: str) -> dict[str, float]:
        """An instant vector as ``{value of label: sample}`` (NaN samples left out; empty: NoData)."""
        data = self._data(promql)
        result = data.get("result")
        if data.get("resultType") != "vector" or not isinstance(result, list):
            raise QueryFailed(f"result type {data.get('resultType')} is not an instant vector")
        out = {}
        for series in result:
            value = float(series["value"][1])
            if not math.isnan(value):
                out[str((series.get("metric") or {}).get(label, ""))] = value
        if not out:
            raise NoData("the query returned no series")
        return out

    def _data(self, promql: str) -> dict[str, Any]:
        if not self.base_url:
            raise Unreachable("no Prometheus URL configured (SLIPWAY_PROMETHEUS_URL)")
        try:
            resp = self._client.get(f"{self.base_url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise Unreachable(f"Prometheus at {self.base_url} unreachable: {exc}") from exc
        if resp.status_code >= 500:
            raise Unreachable(f"Prometheus answered {resp.status_code}: {resp.text[:200]}")
        try:
            body: dict[str, Any] = resp.json()
        except ValueError as exc:
            raise Unreachable(f"Prometheus answered non-JSON ({resp.status_code})") from exc
        if body.get("status") != "success":
            raise QueryFailed(f"query refused: {body.get('errorType', '')} {body.get('error', resp.text[:200])}")
        data: dict[str, Any] = body.get("data") or {}
        return data


def parse_result(data: dict[str, Any]) -> float:
    """One number out of a query's ``data``: NoData for an empty vector or NaN, QueryFailed for many series."""
    kind, result = data.get("resultType"), data.get("result")
    if kind == "scalar" and isinstance(result, list):
        value = float(result[1])
    elif kind == "vector" and isinstance(result, list):
        if not result:
            raise NoData("the query returned no series")
        if len(result) > 1:
            raise QueryFailed(f"the query returned {len(result)} series; aggregate it to one number")
        value = float(result[0]["value"][1])
    else:
        raise QueryFailed(f"result type {kind} is not a number (use an instant vector or scalar)")
    if math.isnan(value):
        raise NoData("the query returned NaN (e.g. 0/0: no traffic)")
    return value
