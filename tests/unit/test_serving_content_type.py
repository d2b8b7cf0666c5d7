"""A V2 body without Content-Type: JSON unless it is in the binary-tensor format (tritonclient's JSON mode)."""

from __future__ import annotations

from typing import Any

import pytest

from slipway_serving.middleware import json_by_default


def scope(path: str, headers: list[tuple[bytes, bytes]], method: str = "POST") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "headers": headers}


def content_type(s: dict[str, Any]) -> list[bytes]:
    return [v for k, v in s["headers"] if k == b"content-type"]


@pytest.mark.parametrize("path", ["/v2/models/digits/infer", "/v2/models/digits/versions/1/infer"])
def test_no_content_type_and_no_binary_header_is_json(path: str) -> None:
    out = json_by_default(scope(path, [(b"host", b"x"), (b"content-length", b"10")]))
    assert content_type(out) == [b"application/json"]


def test_binary_tensor_body_is_left_alone() -> None:
    headers = [(b"inference-header-content-length", b"120"), (b"content-length", b"376")]
    assert content_type(json_by_default(scope("/v2/models/digits/infer", headers))) == []


def test_an_explicit_content_type_is_kept() -> None:
    headers = [(b"content-type", b"application/octet-stream")]
    assert content_type(json_by_default(scope("/v2/models/digits/infer", headers))) == [b"application/octet-stream"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v1/models/digits:predict"), ("GET", "/v2/models/digits/ready"), ("POST", "/metrics")],
)
def test_other_requests_are_left_alone(method: str, path: str) -> None:
    original = scope(path, [], method)
    assert json_by_default(original) is original
