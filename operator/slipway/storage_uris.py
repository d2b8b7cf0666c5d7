"""Which storage URIs a predictor may load from: allowed scheme/prefixes, and never a ``..`` segment; pure.

A ModelVersion's ``storageUri`` comes from the MLflow registry, which any team that can register
a model writes to. Before a predictor is told to download it, the URI must start with one of the
operator's allowed prefixes (``SLIPWAY_STORAGE_URI_PREFIXES``, chart value
``storage.allowedUriPrefixes``; by default the schemes KServe's storage initializer serves) and
hold no ``..`` path segment, which could climb out of the bucket or volume a prefix names.
"""

from __future__ import annotations

from urllib.parse import unquote, urlparse

DEFAULT_PREFIXES: tuple[str, ...] = (
    "s3://",
    "gs://",
    "https://",
    "pvc://",
    "hdfs://",
    "webhdfs://",
    "oci://",
    "hf://",
    "file://",
)


def parse_prefixes(raw: str) -> tuple[str, ...]:
    """Comma-separated prefixes; empty: :data:`DEFAULT_PREFIXES`."""
    prefixes = tuple(p.strip() for p in raw.split(",") if p.strip())
    return prefixes or DEFAULT_PREFIXES


def refusal(uri: str, prefixes: tuple[str, ...]) -> str | None:
    """Why ``uri`` may not be loaded (None: it may)."""
    path = unquote(urlparse(uri).path)
    if ".." in path.split("/") or ".." in unquote(uri).split("/"):
        return f"storageUri {uri} has a '..' segment"
    if not any(uri.startswith(p) for p in prefixes):
        return f"storageUri {uri} is not under an allowed prefix ({', '.join(prefixes)})"
    return None
