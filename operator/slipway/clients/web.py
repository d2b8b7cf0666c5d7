"""Web analysis metrics: one HTTP GET or POST answering JSON, a JSONPath to the number, named errors."""

from __future__ import annotations

import math
from typing import Any

import httpx
from jsonpath_ng.exceptions import JsonPathParserError
from jsonpath_ng.ext import parse


class WebError(RuntimeError):
    """The call gave no usable number; the analysis records it as an Error measurement."""


class WebNoData(WebError):
    """The JSONPath matched nothing, or null: an Inconclusive measurement."""


class Web:
    """A small synchronous HTTP client for web metrics (reconcilers call it through ``off_loop``)."""

    def __init__(self) -> None:
        self._client = httpx.Client(follow_redirects=False)

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def value(
        self,
        url: str,
        json_path: str,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        body: str | None = None,
        timeout: float = 10.0,
    ) -> float:
        """The number at ``json_path`` in the JSON the call answers (one match, a number or a numeric string)."""
        try:
            expr = parse(json_path)
        except (JsonPathParserError, Exception) as exc:  # the parser raises plain Exceptions on some input
            raise WebError(f"jsonPath {json_path!r} does not parse: {exc}") from exc
        try:
            resp = self._client.request(method, url, headers=headers, content=body, timeout=timeout)
        except httpx.TimeoutException as exc:
            raise WebError(f"{method} {url} timed out after {timeout:g}s") from exc
        except httpx.HTTPError as exc:
            raise WebError(f"{method} {url} failed: {exc}") from exc
        if resp.status_code >= 300:
            raise WebError(f"{method} {url} answered {resp.status_code}: {resp.text[:200]}")
        try:
            doc: Any = resp.json()
        except ValueError as exc:
            raise WebError(f"{method} {url} answered non-JSON: {resp.text[:200]}") from exc
        return pick(doc, expr, json_path)


def pick(doc: Any, expr: Any, json_path: str) -> float:
    """One number out of a JSON document: WebNoData for no match or null, WebError for several or a non-number."""
    matches = [m.value for m in expr.find(doc)]
    if not matches or all(v is None for v in matches):
        raise WebNoData(f"jsonPath {json_path} matched nothing")
    if len(matches) > 1:
        raise WebError(f"jsonPath {json_path} matched {len(matches)} values; it must select one number")
    value = matches[0]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise WebError(f"jsonPath {json_path} selected {type(value).__name__}, not a number")
    try:
        number = float(value)
    except ValueError as exc:
        raise WebError(f"jsonPath {json_path} selected {value!r}, not a number") from exc
    if math.isnan(number):
        raise WebNoData(f"jsonPath {json_path} selected NaN")
    return number
