"""MLflow registry helpers the integration tests share: a small logged model, a registered model with two versions."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any


def log_iris_model(
    mlflow_uri: str,
    experiment: str,
    *,
    accuracy: bool = False,
    pip_requirements: tuple[str, ...] | None = ("scikit-learn",),
) -> str:
    """Log one small scikit-learn model (iris) to ``experiment``, with its ``accuracy`` metric if asked; its URI."""
    import mlflow
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment(experiment)
    x, y = load_iris(return_X_y=True)
    with mlflow.start_run():
        model = LogisticRegression(max_iter=300).fit(x, y)
        if accuracy:
            mlflow.log_metric("accuracy", float(model.score(x, y)))
        requirements = list(pip_requirements) if pip_requirements is not None else None
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=requirements)
    return str(info.model_uri)


@contextlib.contextmanager
def two_versions(
    mlflow_uri: str, model_uri: str, prefix: str, v1_tags: dict[str, str] | None = None
) -> Iterator[tuple[Any, str]]:
    """A registered model ``<prefix>-<hex>`` with versions 1 and 2 of ``model_uri``, v1 tagged ``v1_tags`` and
    aliased ``champion``: (an MlflowClient, its name). Deleted afterwards."""
    import mlflow
    from mlflow import MlflowClient

    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        mlflow.register_model(model_uri, name)
    client = MlflowClient(mlflow_uri)
    for key, value in (v1_tags or {}).items():
        client.set_model_version_tag(name, "1", key, value)
    client.set_registered_model_alias(name, "champion", "1")
    try:
        yield client, name
    finally:
        with contextlib.suppress(Exception):
            client.delete_registered_model(name)
