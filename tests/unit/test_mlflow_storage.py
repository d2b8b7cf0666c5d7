"""MLflow client: storage URI resolution, the batched snapshot (aliases from the model), caching and error mapping."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import pytest
from mlflow.exceptions import MlflowException, RestException

from slipway.clients.mlflow import MlflowRegistry, NotFound, RegistryError, RegistryUnavailable, storage_uri

TRACKING = "http://mlflow.mlflow:5000"


@pytest.mark.parametrize(
    ("uri", "destination", "expected"),
    [
        ("mlflow-artifacts:/2/models/m-1/artifacts", "s3://bucket/mlflow", "s3://bucket/mlflow/2/models/m-1/artifacts"),
        ("mlflow-artifacts:/2/r/artifacts/model", "s3://bucket/mlflow/", "s3://bucket/mlflow/2/r/artifacts/model"),
        ("mlflow-artifacts://mlflow:5000/2/x", "pvc://mlflow-artifacts/root", "pvc://mlflow-artifacts/root/2/x"),
        ("mlflow-artifacts:/2/x", "/srv/mlflow/artifacts", "file:///srv/mlflow/artifacts/2/x"),
        ("mlflow-artifacts:/2/x", "file:///srv/artifacts", "file:///srv/artifacts/2/x"),
        ("mlflow-artifacts:/2/x", "", None),  # the destination is not known: unresolved
        ("mlflow-artifacts:/2/x", "relative/dir", None),
        (f"{TRACKING}/api/2.0/mlflow-artifacts/artifacts/2/x", "gs://b/p", "gs://b/p/2/x"),
        (
            "http://elsewhere/api/2.0/mlflow-artifacts/artifacts/2/x",
            "gs://b/p",
            "http://elsewhere/api/2.0/mlflow-artifacts/artifacts/2/x",
        ),
        ("s3://bucket/models/digits/1", "gs://ignored", "s3://bucket/models/digits/1"),
        ("gs://bucket/m", "", "gs://bucket/m"),
        ("pvc://claim/m", "", "pvc://claim/m"),
        ("https://acct.blob.core.windows.net/c/m", "", "https://acct.blob.core.windows.net/c/m"),
        ("file:///data/mlruns/1/abc/artifacts/model", "", "file:///data/mlruns/1/abc/artifacts/model"),
        ("/data/mlruns/1/abc/artifacts/model/", "", "file:///data/mlruns/1/abc/artifacts/model"),
        ("models:/digits/1", "s3://b", None),
        ("runs:/abc/model", "s3://b", None),
        ("dbfs:/databricks/mlflow/1", "", None),
        ("mlruns/1/abc", "", None),
        ("", "s3://b", None),
        (None, "s3://b", None),
    ],
)
def test_storage_uri(uri: str | None, destination: str, expected: str | None) -> None:
    assert storage_uri(uri, destination, TRACKING) == expected


def _version(name: str, version: str, source: str, run_id: str | None = "r1", stage: str = "None") -> Any:
    return SimpleNamespace(
        name=name,
        version=version,
        current_stage=stage,
        aliases=[],  # the SQL store's search leaves aliases empty
        tags={"team": "ml"},
        run_id=run_id,
        source=source,
        status="READY",
        description=None,
        creation_timestamp=1_790_000_000_000,
        last_updated_timestamp=1_790_000_100_000,
    )


class FakeClient:
    """The MlflowClient methods the registry uses, counting calls."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.aliases = {"champion": "2", "candidate": "2", "old": "1"}
        self.versions = [
            _version("digits", "1", "runs:/r1/model"),
            _version("digits", "2", "models:/m-abc123", stage="Production"),
            _version("digits", "3", "models:/digits/2", run_id=None),
        ]
        self.fail: Exception | None = None

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_") and name not in ("calls", "aliases", "versions", "fail"):
            object.__getattribute__(self, "calls")[name] += 1
            fail = object.__getattribute__(self, "fail")
            if fail is not None:
                raise fail
        return object.__getattribute__(self, name)

    def get_registered_model(self, name: str) -> Any:
        if name != "digits":
            raise RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": f"{name} not found"})
        return SimpleNamespace(name=name, aliases=dict(self.aliases))

    def search_model_versions(self, filter_string: str) -> list[Any]:
        assert filter_string == "name = 'digits'"
        return list(self.versions)

    def get_model_version(self, name: str, version: str) -> Any:
        return next(v for v in self.versions if v.version == version)

    def get_run(self, run_id: str) -> Any:
        return SimpleNamespace(
            info=SimpleNamespace(status="FINISHED", artifact_uri="mlflow-artifacts:/1/r1/artifacts"),
            data=SimpleNamespace(metrics={"accuracy": 0.97, "loss": float("nan")}, params={"epochs": "5"}),
        )

    def get_logged_model(self, model_id: str) -> Any:
        return SimpleNamespace(artifact_location=f"mlflow-artifacts:/1/models/{model_id}/artifacts")


@pytest.fixture
def fake() -> FakeClient:
    return FakeClient()


@pytest.fixture
def registry(fake: FakeClient, monkeypatch: pytest.MonkeyPatch) -> MlflowRegistry:
    reg = MlflowRegistry(TRACKING, artifacts_destination="s3://bucket/mlflow", client_factory=lambda _uri: fake)
    monkeypatch.setattr(reg, "_flavors_of", lambda _uri: ("python_function", "sklearn"))
    return reg


async def test_snapshot_reads_aliases_from_the_model_and_resolves_storage(
    registry: MlflowRegistry, fake: FakeClient
) -> None:
    snap = await registry.snapshot("digits")
    assert snap.exists and snap.aliases == fake.aliases
    v1, v2, v3 = (snap.versions[v] for v in ("1", "2", "3"))
    assert v1.info.aliases == ("old",) and v2.info.aliases == ("candidate", "champion") and v3.info.aliases == ()
    assert v2.info.stage == "Production" and v2.info.tags == {"team": "ml"}
    assert v1.run is not None and dict(v1.run.metrics) == {"accuracy": 0.97}  # NaN dropped: JSON has none
    assert v1.storage_uri == "s3://bucket/mlflow/1/r1/artifacts/model"
    assert v2.storage_uri == "s3://bucket/mlflow/1/models/m-abc123/artifacts"
    assert v3.storage_uri == v2.storage_uri  # models:/digits/2 → version 2's source
    assert v3.run is None and v2.flavors == ("python_function", "sklearn")


async def test_steady_state_poll_costs_two_requests(registry: MlflowRegistry, fake: FakeClient) -> None:
    await registry.snapshot("digits")
    fake.calls.clear()
    await registry.snapshot("digits")
    assert fake.calls == Counter({"get_registered_model": 1, "search_model_versions": 1})


async def test_missing_model_is_a_snapshot_not_an_error(registry: MlflowRegistry) -> None:
    snap = await registry.snapshot("nope")
    assert not snap.exists and snap.versions == {}


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (MlflowException("API request to http://x failed with exception ConnectionError"), RegistryUnavailable),
        (RestException({"error_code": "TEMPORARILY_UNAVAILABLE", "message": "busy"}), RegistryUnavailable),
        (RestException({"error_code": "INTERNAL_ERROR", "message": "boom"}), RegistryUnavailable),
        (RestException({"error_code": "PERMISSION_DENIED", "message": "no"}), RegistryError),
        (ConnectionResetError("reset"), RegistryUnavailable),
    ],
)
async def test_errors_are_mapped(registry: MlflowRegistry, fake: FakeClient, error: Exception, expected: type) -> None:
    fake.fail = error
    with pytest.raises(expected):
        await registry.snapshot("digits")


async def test_version_lookup_not_found(registry: MlflowRegistry, fake: FakeClient) -> None:
    fake.fail = RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no version 9"})
    with pytest.raises(NotFound):
        await registry.version("digits", "9")
