"""The names contract: API group and version, label keys, annotations, child and ModelVersion names, model slugs."""

from __future__ import annotations

import re
from typing import Final

GROUP: Final = "ml.slipway.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "ml.slipway.dev/v1alpha1"
"""``<GROUP>/<VERSION>``, spelled out: the API models type their apiVersion with it."""

LABEL_MODEL: Final = f"{GROUP}/model"
"""On ModelVersions and a ModelDeployment's children: the model's slug (:func:`sanitise_model_name`)."""
LABEL_VERSION: Final = f"{GROUP}/version"
"""On ModelVersions, per-version children and the predictor pods: the MLflow version number."""
LABEL_DEPLOYMENT: Final = f"{GROUP}/deployment"
"""On a ModelDeployment's children: its name."""
LABEL_TRAININGRUN: Final = f"{GROUP}/trainingrun"
"""On a TrainingRun's Jobs and pods: its name."""
LABEL_ANALYSIS_SECRET: Final = f"{GROUP}/analysis"
"""On a Secret, set to "true": a web analysis metric may send its values (its owner opted it in)."""

LABEL_MANAGED_BY: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "slipway"
"""The value of :data:`LABEL_MANAGED_BY` on everything the operator creates."""

ACTION_ANNOTATION: Final = f"{GROUP}/action"
"""On a ModelDeployment: the action asked of the rollout (promote, abort, …); the operator clears it."""
RUN_ID_ANNOTATION: Final = f"{GROUP}/mlflow-run-id"
"""On a TrainingRun's Job: the MLflow run it reports to."""


def sanitise_model_name(name: str) -> str:
    """An MLflow model name as a DNS-1123 name and label value (the ModelVersion naming contract).

    Lower-cased, runs of other characters than ``a-z0-9.-`` become one dash, at most 63
    characters. It is lossy (``Digits_CNN`` and ``digits-cnn`` share a slug), so whoever selects
    by the label must also compare the exact model name.
    """
    return re.sub(r"[^a-z0-9.-]+", "-", name.lower()).strip("-.")[:63].rstrip("-.")


def versioned_name(base: str, version: str | int) -> str:
    """``<base>-v<version>``: a ModelDeployment's per-version children and a model's ModelVersions."""
    return f"{base}-v{version}"


def version_of(base: str, name: str) -> str | None:
    """The version in a name :func:`versioned_name` made from ``base`` (None: not one of them)."""
    prefix = f"{base}-v"
    version = name[len(prefix) :] if name.startswith(prefix) else ""
    return version if version.isdigit() else None


def modelversion_name(model: str, version: str | int) -> str:
    """The ModelVersion mirroring one MLflow version: ``<slug>-v<version>``."""
    return versioned_name(sanitise_model_name(model), version)


def isvc_name(md: str, version: str) -> str:
    """The InferenceService (and HPA) of one version: ``<md>-v<version>``."""
    return versioned_name(md, version)


def predictor_name(md: str, version: str) -> str:
    """The predictor Deployment and Service KServe creates for ``<md>-v<version>`` in Standard mode."""
    return f"{isvc_name(md, version)}-predictor"
