"""The rollout's state as ModelDeployment status keeps it: one model for the state machine, the wire and the CRD."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    field_serializer,
    model_serializer,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema

Phase = Literal["Idle", "Progressing", "Paused", "Promoting", "Succeeded", "RollingBack", "RolledBack"]
MeasurementPhase = Literal["Successful", "Failed", "Inconclusive", "Error"]
AnalysisPhase = Literal["Pending", "Running", "Successful", "Failed", "Inconclusive"]
Outcome = Literal["Promoted", "RolledBack", "Aborted", "Superseded"]
Variant = Literal["A", "B"]

TIME_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
"""How status writes times: always microseconds, always ``Z`` (what objects in clusters hold)."""


def _iso(value: datetime) -> str:
    return value.strftime(TIME_FORMAT)


def _pairs(value: Any) -> Any:
    return tuple(value.items()) if isinstance(value, Mapping) else value


Timestamp = Annotated[datetime, PlainSerializer(_iso, return_type=str, when_used="json")]
"""A time in status: parsed from RFC 3339, written as TIME_FORMAT."""
Shares = Annotated[
    tuple[tuple[str, float], ...],
    BeforeValidator(_pairs),
    PlainSerializer(dict, return_type=dict[str, float]),
    WithJsonSchema({"type": "object", "additionalProperties": {"type": "number"}}),
]
"""Share per class: (class, share) pairs in the model, an object on the wire."""


def _empty(value: Any) -> bool:
    return value is None or value is False or (isinstance(value, str | list | tuple | dict) and not value)


def _no_defaults(schema: dict[str, Any]) -> None:
    """The CRD gets no defaults for status: the API server would fill them into stored objects."""
    for prop in schema.get("properties", {}).values():
        prop.pop("default", None)


class StatusModel(BaseModel):
    """Base of the rollout's status models: frozen, camelCase on the wire, empty values left out when written."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        frozen=True,
        extra="ignore",
        json_schema_extra=_no_defaults,
    )

    @model_serializer(mode="wrap")
    def _drop_empty(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if not _empty(v)}


class Measurement(StatusModel):
    """The latest measurement of one analysis metric."""

    metric: str = Field(description="Name of the analysis metric.")
    version: str = Field("", description="Model version measured.")
    value: float | None = Field(None, description="Measured value; unset when there was no data.")
    phase: MeasurementPhase = Field(description="Successful, Failed (out of bounds), Inconclusive (no data) or Error.")
    measured_at: Timestamp = Field(description="When it was measured.")
    message: str = Field("", description="Details, e.g. the query error.")
    dry_run: bool = Field(False, description="true: a dry-run metric, recorded but never acted on.")


class AnalysisState(StatusModel):
    """Progress of the running analysis (one per blocking analysis stage), as kept in status."""

    phase: AnalysisPhase = Field("Pending", description="Overall result so far.")
    successful: int = Field(0, ge=0, description="Successful measurement rounds.")
    failed: int = Field(0, ge=0, description="Failed measurements.")
    inconclusive: int = Field(0, ge=0, description="Measurements without data.")
    started_at: Timestamp | None = Field(None, description="When the analysis started.")
    measurements: tuple[Measurement, ...] = Field((), description="The latest measurement of each metric.")

    @property
    def last_measured_at(self) -> datetime | None:
        """When the last round was measured."""
        return max((m.measured_at for m in self.measurements), default=None)


class VariantResult(StatusModel):
    """What one version of an A/B test showed over the test (from Prometheus)."""

    version: str = Field(description="MLflow version number.")
    variant: Variant = Field(description="A (the stable version) or B (the candidate).")
    requests: float | None = Field(None, description="Inference requests answered.")
    error_rate: float | None = Field(None, description="Share of 5xx answers.")
    p50_latency_seconds: float | None = Field(None, description="Median request latency.")
    p99_latency_seconds: float | None = Field(None, description="99th percentile request latency.")
    drift: float | None = Field(None, description="Mean drift score (PSI) over the test, if the model has a baseline.")
    feedback: float | None = Field(None, description="Predictions whose true label was fed back.")
    accuracy: float | None = Field(None, description="Share of fed-back predictions that were right.")
    estimated_accuracy: float | None = Field(
        None,
        description=(
            "Mean label-free accuracy estimate over the test (from the predictions' confidence, "
            "calibrated on the training validation split), if the runtime exports one."
        ),
    )
    criterion: float | None = Field(None, description="Value of the criterion's query.")
    predictions: Shares = Field((), description="Share of predicted instances per class (the 20 most frequent).")

    @field_serializer(
        "requests",
        "error_rate",
        "p50_latency_seconds",
        "p99_latency_seconds",
        "drift",
        "feedback",
        "accuracy",
        "estimated_accuracy",
        "criterion",
    )
    def _rounded(self, value: float | None) -> float | None:
        return None if value is None else round(value, 6)


class Comparison(StatusModel):
    """Both versions side by side, and the verdict (winner None: no criterion, or no evidence)."""

    measured_at: Timestamp = Field(description="When the comparison was measured.")
    window: str = Field(description="The time range measured, e.g. 10m.")
    metric: str | None = Field(None, description="The criterion's metric name, if one was declared.")
    winner: Variant | None = Field(None, description="The declared winner; unset: no criterion, or no evidence yet.")
    message: str = Field("", description="The verdict in words.")
    variants: tuple[VariantResult, ...] = Field(description="A and B.")

    @model_validator(mode="after")
    def _a_and_b(self) -> Comparison:
        if sorted(v.variant for v in self.variants) != ["A", "B"]:
            raise ValueError("variants: one A and one B")
        return self

    @property
    def a(self) -> VariantResult:
        """The stable version's result."""
        return next(v for v in self.variants if v.variant == "A")

    @property
    def b(self) -> VariantResult:
        """The candidate's result."""
        return next(v for v in self.variants if v.variant == "B")

    @property
    def decided(self) -> bool:
        """Whether the criterion chose a winner."""
        return self.winner is not None


class Blocked(StatusModel):
    """A version that was rolled back and is not retried until the spec changes or a retry."""

    version: str = Field(description="MLflow version number.")
    reason: str = Field(description="Why it was rolled back, e.g. AnalysisFailed, AlertFiring.")
    at: Timestamp = Field(description="When it was rolled back.")
    message: str = Field("", description="Details.")


class Finished(StatusModel):
    """One finished rollout."""

    version: str = Field(description="Version that was rolled out.")
    previous_version: str | None = Field(None, description="Stable version before it.")
    outcome: Outcome = Field(
        description="Promoted, RolledBack, Aborted (by hand) or Superseded (a newer version came)."
    )
    reason: str = Field("", description="Machine-readable reason.")
    started_at: Timestamp | None = Field(None, description="When the rollout started.")
    finished_at: Timestamp | None = Field(None, description="When it finished.")
    message: str = Field("", description="Details.")


class RolloutState(StatusModel):
    """Everything the machine needs to resume a rollout; all of it lives in the ModelDeployment's status.

    ``reason`` is the one exception on the wire: status keeps it as the Progressing condition's
    reason, so it is neither written by the dump nor part of the schema.
    """

    phase: Phase = Field(
        "Idle", description="Idle, Progressing, Paused, Promoting, Succeeded, RollingBack or RolledBack."
    )
    reason: SkipJsonSchema[str] = Field(
        "",
        exclude=True,
        description="Why the last arrow was taken (status keeps it as the Progressing condition's reason).",
    )
    stable_version: str | None = Field(None, description="Version serving the stable traffic.")
    canary_version: str | None = Field(None, description="Version being rolled out, if any.")
    canary_weight: int = Field(0, ge=0, le=100, description="Percent of traffic on the canary.")
    mirror_percent: int = Field(0, ge=0, le=100, description="Percent of traffic mirrored to the canary.")
    current_step: int | None = Field(None, ge=0, description="Index of the current canary step.")
    step_started_at: Timestamp | None = Field(None, description="When the current step started.")
    rollout_started_at: Timestamp | None = Field(None, description="When the rollout started.")
    promoted_at: Timestamp | None = Field(None, description="When the last promotion finished.")
    analysis: AnalysisState | None = Field(None, description="The running analysis.")
    comparison: Comparison | None = Field(
        None, description="The A/B comparison of the last A/B test (kept after it is decided)."
    )
    blocked: tuple[Blocked, ...] = Field(
        (),
        alias="blockedVersions",
        description="Rolled-back versions not retried until the spec changes or a retry.",
    )
    history: tuple[Finished, ...] = Field((), description="Recent finished rollouts, newest last.")
    message: str = Field("", description="Human-readable summary of the state.")

    @model_validator(mode="before")
    @classmethod
    def _none_is_unset(cls, data: Any) -> Any:
        """A field set to null (a merge patch's deletion) reads as unset."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_serializer("canary_weight")
    def _weight(self, weight: int) -> int | None:
        return weight if self.canary_version else None

    @field_serializer("mirror_percent")
    def _mirror(self, percent: int) -> int | None:
        return percent or None

    def to_status(self) -> dict[str, Any]:
        """The rollout fields of status, JSON-ready; cleared fields are None (a merge patch removes them)."""
        return dict.fromkeys(STATUS_FIELDS) | self.model_dump(mode="json", by_alias=True)

    @property
    def previous_version(self) -> str | None:
        """While Promoting: the version the promotion replaced (still up until the scale-down delay)."""
        if self.phase != "Promoting":
            return None
        return self.replaced_version

    @property
    def replaced_version(self) -> str | None:
        """The version the last promotion replaced, if the last finished rollout was that promotion."""
        last = self.history[-1] if self.history else None
        if last is None or last.outcome != "Promoted" or last.version != self.stable_version:
            return None
        return last.previous_version

    def blocked_entry(self, version: str | None) -> Blocked | None:
        """The block on a version, if it is blocked."""
        return next((b for b in self.blocked if b.version == version), None)


STATUS_FIELDS: tuple[str, ...] = tuple(
    info.alias or name for name, info in RolloutState.model_fields.items() if not info.exclude
)
"""The status keys the rollout state owns, in the order it writes them."""
