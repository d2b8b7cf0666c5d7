"""TrainingRun: train a model as a Kubernetes Job, log it to MLflow, register it if it is good."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    AGE_COLUMN,
    API_VERSION,
    CONDITIONS_EXTRA,
    IMMUTABLE_SPEC,
    AliasName,
    ApiModel,
    Condition,
    EnvVar,
    KindInfo,
    ModelName,
    ObjectMeta,
    PrinterColumn,
    ResourceRequirements,
    Rule,
    ShortText,
    Text,
    Toleration,
    alias_rule,
    at_least_one,
    cel,
    name_rule,
    ordered_bounds,
)
from .notifications import Notifications

Framework = Literal["pytorch", "tensorflow", "custom"]
Phase = Literal["Pending", "Running", "Succeeded", "Failed", "Rejected"]
PARAM_KEY_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.-]*$"
METRIC_NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:/-]*$"


@cel(at_least_one("min", "max"), ordered_bounds())
class Gate(ApiModel):
    """A metric gate: the model is registered only if the run's final value of ``metric`` lies
    within ``min`` and ``max`` (both inclusive; set at least one)."""

    metric: str = Field(
        min_length=1,
        max_length=250,
        pattern=METRIC_NAME_PATTERN,
        description="Name of the MLflow metric logged by the run, e.g. accuracy or val_loss.",
    )
    min: float | None = Field(None, description="Lowest acceptable value (inclusive).")
    max: float | None = Field(None, description="Highest acceptable value (inclusive).")


def _gates_unique(register: Register) -> bool:
    names = [g.metric for g in register.gates]
    return len(names) == len(set(names))


@cel(
    Rule(
        rule="self.gates.all(g, self.gates.filter(h, h.metric == g.metric).size() == 1)",
        message="gates must name each metric at most once",
        field_path=".gates",
        check=_gates_unique,
    ),
    alias_rule(),
)
class Register(ApiModel):
    """Registration of the trained model in the MLflow model registry, if it passes its gates."""

    model: ModelName = Field(description="Registered-model name in MLflow, e.g. digits-cnn.")
    gates: list[Gate] = Field(
        default=[],
        max_length=16,
        description=(
            "Metric gates that must all pass for the model to be registered. Empty: always register a successful run."
        ),
    )
    alias: AliasName | None = Field(
        None, description="MLflow alias to point at the new version, e.g. candidate or champion."
    )
    stage: Literal["Staging", "Production", "Archived"] | None = Field(
        None, description="MLflow stage to move the new version to (legacy stages API)."
    )
    tags: dict[str, Text] | None = Field(None, max_length=32, description="Tags to set on the new model version.")
    description: str | None = Field(None, max_length=4096, description="Description of the new model version.")


def _entrypoint_xor_command(spec: TrainingRunSpec) -> bool:
    return (spec.entrypoint is None) != (spec.command is None)


def _custom_needs_command(spec: TrainingRunSpec) -> bool:
    return spec.framework != "custom" or spec.command is not None


def _param_keys_ok(spec: TrainingRunSpec) -> bool:
    return all(re.fullmatch(PARAM_KEY_PATTERN, k) for k in spec.params)


def _gpu_limits(spec: TrainingRunSpec) -> bool:
    res = spec.resources
    if res is None or res.requests is None:
        return True
    limits = res.limits or {}
    return all(k in limits and str(limits[k]) == str(v) for k, v in res.requests.items() if k == "nvidia.com/gpu")


@cel(
    Rule(
        rule="has(self.entrypoint) != has(self.command)",
        message="set exactly one of entrypoint or command",
        check=_entrypoint_xor_command,
    ),
    Rule(
        rule="self.framework != 'custom' || has(self.command)",
        message="framework custom needs command (entrypoint names a Slipway training module)",
        field_path=".command",
        check=_custom_needs_command,
    ),
    Rule(
        rule=f"self.params.all(k, k.matches('{PARAM_KEY_PATTERN}'))",
        message=("params keys must start with a letter or '_' and contain only letters, digits, '_', '.' and '-'"),
        field_path=".params",
        check=_param_keys_ok,
    ),
    Rule(
        rule=(
            "!has(self.resources) || !has(self.resources.requests) || "
            "!('nvidia.com/gpu' in self.resources.requests) || "
            "(has(self.resources.limits) && 'nvidia.com/gpu' in self.resources.limits && "
            "string(self.resources.limits['nvidia.com/gpu']) == "
            "string(self.resources.requests['nvidia.com/gpu']))"
        ),
        message="resources.limits must equal resources.requests for nvidia.com/gpu",
        field_path=".resources",
        check=_gpu_limits,
    ),
)
class TrainingRunSpec(ApiModel):
    """What to train, how, on what resources, and what to do with the model."""

    framework: Framework = Field(
        "pytorch",
        description=(
            "Training framework: pytorch (torchrun for several workers), tensorflow "
            "(TF_CONFIG for several workers) or custom (your image and command)."
        ),
    )
    image: str | None = Field(
        None,
        min_length=1,
        max_length=512,
        description="Container image running the training. Default: the operator's training image.",
    )
    entrypoint: str | None = Field(
        None,
        pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$",
        max_length=253,
        description=(
            "Training module of the Slipway training image to run, e.g. digits_cnn or "
            "digits_keras. Set this or command."
        ),
    )
    command: list[Text] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Container command, for custom images. Set this or entrypoint.",
    )
    args: list[Text] | None = Field(None, max_length=256, description="Arguments to the entrypoint or the command.")
    params: dict[str, Text] = Field(
        default={},
        max_length=64,
        description=(
            "Hyper-parameters, passed to the training code as strings and logged to MLflow, "
            'e.g. epochs: "5", lr: "0.001".'
        ),
    )
    env: list[EnvVar] | None = Field(
        None, max_length=64, description="Extra environment variables for the training container."
    )
    workers: int = Field(
        1,
        ge=1,
        le=1024,
        description=(
            "Number of worker pods. 1: a plain Job. More: an Indexed Job with a headless "
            "Service, wired for torchrun (pytorch) or TF_CONFIG (tensorflow)."
        ),
    )
    resources: ResourceRequirements | None = Field(
        None, description="Resources of each worker, including GPUs (nvidia.com/gpu under limits)."
    )
    node_selector: dict[str, ShortText] | None = Field(
        None, max_length=32, description="Node labels the workers must run on, e.g. GPU nodes."
    )
    tolerations: list[Toleration] | None = Field(
        None,
        max_length=32,
        description="Tolerations of the worker pods, e.g. for tainted GPU nodes.",
    )
    experiment: str | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="MLflow experiment to log into. Default: the TrainingRun's namespace.",
    )
    deadline_seconds: int = Field(
        86400,
        ge=1,
        description="Seconds the whole run may take before it is stopped and marked Failed.",
    )
    backoff_limit: int = Field(0, ge=0, le=100, description="Retries of failed worker pods before the run fails.")
    registration: Register | None = Field(
        None,
        alias="register",
        description="Register the trained model in MLflow if it passes its gates.",
    )
    notifications: Notifications | None = Field(
        None,
        description=(
            "Messages to Slack, Teams or a signed JSON webhook when the run fails or a gate fails; adds to the "
            "operator's defaults (docs/notifications.md)."
        ),
    )


class GateResult(ApiModel):
    """How one gate fared."""

    metric: str = Field(description="Metric the gate checks.")
    value: float | None = Field(None, description="Final value of the metric; unset if not logged.")
    passed: bool = Field(description="Whether the value was within the gate's bounds.")


class TrainingRunStatus(ApiModel):
    """Observed state of a TrainingRun, written by the operator."""

    phase: Phase | None = Field(
        None,
        description=(
            "Pending, Running, Succeeded (trained, and registered if asked), Failed, or "
            "Rejected (trained, but a gate failed so nothing was registered)."
        ),
    )
    job_name: str | None = Field(None, description="Name of the Job running the training.")
    mlflow_run_id: str | None = Field(None, description="MLflow run the training logs into.")
    experiment_id: str | None = Field(None, description="MLflow experiment id of the run.")
    metrics: dict[str, float] | None = Field(None, description="Final metrics of the run.")
    headline_metric: str | None = Field(
        None,
        description="name=value of the first gate's metric (else accuracy), for kubectl get.",
    )
    gates: list[GateResult] | None = Field(None, description="Result of each gate.")
    model_version: str | None = Field(None, description="MLflow version number registered by this run.")
    model_version_ref: str | None = Field(
        None, description="Name of the ModelVersion object mirroring the registered version."
    )
    start_time: datetime | None = Field(None, description="When the Job started.")
    completion_time: datetime | None = Field(None, description="When the run finished.")
    observed_generation: int | None = Field(None, description="metadata.generation the status was computed for.")
    message: str | None = Field(None, description="Human-readable summary of the state.")
    conditions: list[Condition] | None = Field(
        None,
        json_schema_extra=CONDITIONS_EXTRA,
        description="Conditions: Ready, Registered, InvalidSpec.",
    )


@cel(name_rule(50, "it names the Job, its pods and its headless Service"))
class TrainingRun(ApiModel):
    """A TrainingRun object: the typed view of what the API server stores."""

    api_version: Literal["ml.slipway.dev/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["TrainingRun"] = Field("TrainingRun", description="Kind.")
    metadata: ObjectMeta = Field(default=ObjectMeta(), description="Object metadata.")
    spec: TrainingRunSpec = Field(description="Desired training.")
    status: TrainingRunStatus | None = Field(None, description="Observed state.")


INFO = KindInfo(
    kind="TrainingRun",
    plural="trainingruns",
    short_names=("tr",),
    description=(
        "TrainingRun trains a model as a Kubernetes Job (an Indexed Job for several workers), "
        "logs it to MLflow and, if it passes its metric gates, registers a new model version."
    ),
    resource=TrainingRun,
    spec=TrainingRunSpec,
    status=TrainingRunStatus,
    columns=(
        PrinterColumn("Model", ".spec.register.model", description="Model to register."),
        PrinterColumn("Phase", ".status.phase", description="Phase of the run."),
        PrinterColumn("Run", ".status.mlflowRunId", description="MLflow run id."),
        PrinterColumn("Metric", ".status.headlineMetric", description="Headline metric."),
        PrinterColumn("Version", ".status.modelVersion", description="Registered version.", priority=1),
        AGE_COLUMN,
    ),
    spec_rules=(IMMUTABLE_SPEC,),
)
