"""Storage URIs a predictor may load from: allowed prefixes only, never a '..' segment."""

from __future__ import annotations

from slipway.settings import Settings
from slipway.storage_uris import DEFAULT_PREFIXES, parse_prefixes, refusal


def test_default_schemes_and_dot_dot() -> None:
    assert refusal("s3://models/digits/7", DEFAULT_PREFIXES) is None
    assert refusal("file:///var/mlflow/artifacts/1/model", DEFAULT_PREFIXES) is None
    assert "allowed prefix" in (refusal("http://evil.example/model", DEFAULT_PREFIXES) or "")
    assert "allowed prefix" in (refusal("/etc/passwd", DEFAULT_PREFIXES) or "")
    for uri in ("s3://models/team-a/../team-b/secret", "s3://models/%2e%2e/x", "pvc://vol/../../etc"):
        assert "'..'" in (refusal(uri, DEFAULT_PREFIXES) or ""), uri
    assert refusal("s3://models/a..b/c", DEFAULT_PREFIXES) is None, "only whole '..' segments"


def test_prefixes_from_the_environment() -> None:
    prefixes = Settings.from_env({"SLIPWAY_STORAGE_URI_PREFIXES": "s3://models/team-a/, gs://ml/"}).storage_uri_prefixes
    assert prefixes == ("s3://models/team-a/", "gs://ml/") == parse_prefixes("s3://models/team-a/,gs://ml/")
    assert refusal("s3://models/team-a/digits/1", prefixes) is None
    assert refusal("s3://models/team-b/digits/1", prefixes) is not None
    assert Settings.from_env({}).storage_uri_prefixes == DEFAULT_PREFIXES
