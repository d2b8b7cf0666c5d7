"""The Slipway API (ml.slipway.dev/v1alpha1): pydantic models, the single source of the CRDs."""

from .common import API_VERSION, GROUP, VERSION, Condition, KindInfo, parse_duration
from .modeldeployment import ModelDeployment, ModelDeploymentSpec, ModelDeploymentStatus
from .modelversion import ModelVersion, ModelVersionSpec, ModelVersionStatus
from .trainingrun import TrainingRun, TrainingRunSpec, TrainingRunStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "Condition",
    "KindInfo",
    "ModelDeployment",
    "ModelDeploymentSpec",
    "ModelDeploymentStatus",
    "ModelVersion",
    "ModelVersionSpec",
    "ModelVersionStatus",
    "TrainingRun",
    "TrainingRunSpec",
    "TrainingRunStatus",
    "parse_duration",
]
