"""One MLflow client: the registry and the TrainingRun clients share its error mapping, request count and quoting."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from mlflow.exceptions import RestException

from slipway.clients import mlflow_runs
from slipway.clients.mlflow import (
    MLFLOW_REQUESTS,
    Mlflow,
    MlflowRegistry,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    quote,
)


class Refusing:
    """An MlflowClient whose every call answers with one REST error code."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __getattr__(self, method: str) -> Any:
        def call(*_: Any, **__: Any) -> Any:
            raise RestException({"error_code": self.code, "message": f"{method} refused"})

        return call


def runs(code: str) -> mlflow_runs.MlflowRuns:
    return mlflow_runs.MlflowRuns("http://mlflow.invalid", client_factory=lambda _uri: Refusing(code))


def test_both_clients_are_the_one_client():
    registry = MlflowRegistry("http://mlflow.invalid", client_factory=lambda _uri: Refusing("INTERNAL_ERROR"))
    for client in (registry, runs("INTERNAL_ERROR")):
        assert isinstance(client, Mlflow)
        client.close()
    assert mlflow_runs.MlflowError is RegistryError and mlflow_runs.MlflowUnavailable is RegistryUnavailable


async def test_the_registry_and_the_runs_share_one_connection_and_its_threads():
    shared = Mlflow("http://mlflow.invalid", client_factory=lambda _uri: Refusing("RESOURCE_DOES_NOT_EXIST"))
    registry = MlflowRegistry("http://mlflow.invalid", connection=shared)
    run_client = mlflow_runs.MlflowRuns("http://mlflow.invalid", connection=shared)
    assert registry._client is shared._client is run_client._client
    assert registry._pool is shared._pool is run_client._pool
    registry.close()
    run_client.close()  # neither owns the threads: both still work
    with pytest.raises(NotFound):
        await registry.version("m", "1")
    shared.close()
    with pytest.raises(RuntimeError):
        await registry.version("m", "1")


@pytest.mark.parametrize(
    ("code", "error"),
    [
        ("TEMPORARILY_UNAVAILABLE", RegistryUnavailable),
        ("RESOURCE_DOES_NOT_EXIST", NotFound),
        ("PERMISSION_DENIED", RegistryError),
    ],
)
def test_the_training_run_client_maps_errors_like_the_registry(code: str, error: type[Exception]):
    client = runs(code)
    try:
        with pytest.raises(error):
            asyncio.run(client.outcome("r1"))
    finally:
        client.close()


def test_the_training_run_client_counts_its_requests():
    before = MLFLOW_REQUESTS.labels("get_run")._value.get()
    client = runs("TEMPORARILY_UNAVAILABLE")
    try:
        with pytest.raises(mlflow_runs.MlflowUnavailable):
            asyncio.run(client.outcome("r1"))
    finally:
        client.close()
    assert MLFLOW_REQUESTS.labels("get_run")._value.get() == before + 1


def test_quote_escapes_for_a_single_quoted_filter_value():
    assert quote("it's") == "it\\'s"
    assert quote("a\\b") == "a\\\\b"
