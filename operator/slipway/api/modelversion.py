"""ModelVersion: the in-cluster mirror of one MLflow registered-model version."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    API_VERSION,
    CONDITIONS_EXTRA,
    IMMUTABLE_SPEC,
    ApiModel,
    Condition,
    KindInfo,
    ModelName,
    ObjectMeta,
    PrinterColumn,
    Stage,
    VersionNumber,
)


class ModelVersionSpec(ApiModel):
    """Which MLflow model version this object mirrors. Immutable."""

    model: ModelName = Field(description="Registered-model name in MLflow, e.g. digits-cnn.")
    version: VersionNumber = Field(description='MLflow version number, e.g. 7 or "7".')


class ModelVersionStatus(ApiModel):
    """The MLflow registry's view of the version, copied by the operator."""

    stage: Stage | None = Field(None, description="MLflow stage: None, Staging, Production or Archived.")
    aliases: list[str] | None = Field(None, description="MLflow aliases pointing at this version, e.g. champion.")
    tags: dict[str, str] | None = Field(None, description="Tags of the model version.")
    metrics: dict[str, float] | None = Field(
        None, description="Final metrics of the run that produced the version, e.g. accuracy."
    )
    params: dict[str, str] | None = Field(None, description="Parameters of the run that produced the version.")
    run_id: str | None = Field(None, description="MLflow run that produced the version.")
    source: str | None = Field(
        None, description="Artifact source as registered, e.g. runs:/<run>/model or an s3:// URI."
    )
    storage_uri: str | None = Field(
        None,
        description=(
            "Resolved artifact location KServe can load (s3://, gs://, pvc://, file://); "
            "KServe does not understand models:/ URIs."
        ),
    )
    flavors: list[str] | None = Field(
        None, description="MLflow flavors of the logged model, e.g. pytorch, python_function."
    )
    description: str | None = Field(None, description="Description of the version in MLflow.")
    registry_status: Literal["PENDING_REGISTRATION", "FAILED_REGISTRATION", "READY"] | None = Field(
        None, description="MLflow's registration status of the version."
    )
    registered_at: datetime | None = Field(None, description="When the version was registered.")
    updated_at: datetime | None = Field(None, description="When MLflow last changed the version.")
    synced_at: datetime | None = Field(None, description="When the operator last copied the version from MLflow.")
    observed_generation: int | None = Field(None, description="metadata.generation the status was computed for.")
    message: str | None = Field(None, description="Human-readable summary, e.g. a sync error.")
    conditions: list[Condition] | None = Field(
        None,
        json_schema_extra=CONDITIONS_EXTRA,
        description="Conditions: Synced (the mirror is current), Ready (artifacts resolvable).",
    )


class ModelVersion(ApiModel):
    """A ModelVersion object: the typed view of what the API server stores."""

    api_version: Literal["ml.slipway.dev/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["ModelVersion"] = Field("ModelVersion", description="Kind.")
    metadata: ObjectMeta = Field(default=ObjectMeta(), description="Object metadata.")
    spec: ModelVersionSpec = Field(description="Which version to mirror.")
    status: ModelVersionStatus | None = Field(None, description="Observed state.")


INFO = KindInfo(
    kind="ModelVersion",
    plural="modelversions",
    short_names=("mv",),
    description=(
        "ModelVersion mirrors one MLflow registered-model version (stage, aliases, tags, "
        "metrics, artifact location) so that kubectl get modelversions shows the registry."
    ),
    resource=ModelVersion,
    spec=ModelVersionSpec,
    status=ModelVersionStatus,
    columns=(
        PrinterColumn("Model", ".spec.model", description="Registered-model name."),
        PrinterColumn("Version", ".spec.version", description="MLflow version number."),
        PrinterColumn("Stage", ".status.stage", description="MLflow stage."),
        PrinterColumn("Aliases", ".status.aliases", description="MLflow aliases."),
        PrinterColumn("Accuracy", ".status.metrics.accuracy", "number", "Headline metric: accuracy."),
        PrinterColumn("Run", ".status.runId", description="MLflow run id.", priority=1),
        PrinterColumn("Storage", ".status.storageUri", description="Artifacts.", priority=1),
        AGE_COLUMN,
    ),
    spec_rules=(IMMUTABLE_SPEC,),
)
