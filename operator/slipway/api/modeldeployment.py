"""ModelDeployment: serve an MLflow model on KServe, follow its alias/stage, roll out and back."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from .analysis import NO_ARGS_INLINE, REFS_UNIQUE, TEMPLATES_DESCRIPTION, AnalysisMetric, TemplateRef
from .budget import CanaryBudget
from .common import (
    AGE_COLUMN,
    API_VERSION,
    CONDITIONS_EXTRA,
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    AliasName,
    ApiModel,
    Condition,
    Duration,
    EnvVar,
    KindInfo,
    ModelName,
    ObjectMeta,
    PrinterColumn,
    Quantity,
    ResourceRequirements,
    Rule,
    ShortText,
    VersionNumber,
    alias_rule,
    at_least_one,
    cel,
    check_list_type,
    exactly_one,
    name_rule,
)
from .notifications import Notifications
from .requirements import TAG_KEY_PATTERN, Requirements
from .rollout import RolloutState

HOSTNAME_PATTERN = r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
Hostname = Annotated[str, Field(pattern=HOSTNAME_PATTERN, max_length=253)]
HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
QUERY_DESCRIPTION = (
    " {{version}}, {{namespace}} and {{name}} in the query are replaced by the model version "
    "being measured, the namespace and the ModelDeployment's name."
)


# --- model and tracking ------------------------------------------------------------------


@cel(exactly_one("alias", "stage", "version", prefix="track."), alias_rule())
class Track(ApiModel):
    """What to follow in the MLflow registry: an alias, a stage, or one pinned version."""

    alias: AliasName | None = Field(
        None, description="Follow this MLflow alias, e.g. champion: deploy whatever it points at."
    )
    stage: Literal["Staging", "Production"] | None = Field(
        None, description="Follow the latest version in this MLflow stage (legacy stages API)."
    )
    version: VersionNumber | None = Field(
        None, description="Pin this MLflow version number; changing it starts a rollout."
    )


class ModelRef(ApiModel):
    """The MLflow registered model to serve and how to pick its version."""

    name: ModelName = Field(description="Registered-model name in MLflow, e.g. digits-cnn.")
    track: Track = Field(description="Alias, stage or pinned version to follow (exactly one).")


# --- serving and autoscaling -------------------------------------------------------------


class Batching(ApiModel):
    """Dynamic batching in the Slipway runtime: requests are grouped up to a size or a delay."""

    max_batch_size: int = Field(32, ge=1, le=4096, description="Most requests in one batch.")
    max_latency_ms: int = Field(5, ge=1, le=10000, description="Longest a request waits for its batch to fill, in ms.")


@cel(
    Rule(
        rule="self.runtime == 'slipway' || !has(self.batching)",
        message="batching needs runtime slipway (other runtimes batch on their own terms)",
        field_path=".batching",
        check=lambda s: s.runtime == "slipway" or s.batching is None,
    )
)
class Serving(ApiModel):
    """How each model version is served: one KServe InferenceService per live version."""

    runtime: str = Field(
        "slipway",
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description=(
            "slipway (the Slipway model server: MLflow pyfunc, PyTorch, TensorFlow) or the "
            "name of a KServe ServingRuntime/ClusterServingRuntime, e.g. kserve-mlserver."
        ),
    )
    protocol: Literal["v1", "v2"] = Field(
        "v2", description="Inference protocol: v1 (KServe V1) or v2 (Open Inference Protocol)."
    )
    model_format: str | None = Field(
        None,
        pattern=r"^[a-z0-9][a-z0-9._-]*$",
        max_length=63,
        description="KServe model format for named runtimes, e.g. mlflow. Default: from flavor.",
    )
    image: str | None = Field(None, min_length=1, max_length=512, description="Override the runtime's container image.")
    resources: ResourceRequirements | None = Field(
        None, description="Resources of each predictor pod, e.g. cpu, memory, nvidia.com/gpu."
    )
    env: list[EnvVar] | None = Field(None, max_length=64, description="Extra environment variables for the predictor.")
    service_account_name: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description=(
            "ServiceAccount of the predictor pods. KServe's storage initializer takes the model storage "
            "credentials from the Secrets it names (S3: a Secret annotated serving.kserve.io/s3-endpoint, "
            "holding AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."
        ),
    )
    batching: Batching | None = Field(
        None,
        description=(
            "Dynamic batching (runtime slipway only): wait up to maxLatencyMs to fill batches. Unset: the "
            "model thread batches only the requests that queued while it was busy (up to 32, never waiting)."
        ),
    )
    allow_pickle: bool = Field(
        False,
        description=(
            "Runtime slipway: load models whose files are unpickled (scikit-learn, pickled PyTorch, custom "
            "pyfunc code), which runs whatever code the artifact holds. Off: only formats that need no pickle "
            "(PyTorch pt2 / TorchScript, Keras, TensorFlow SavedModel) load."
        ),
    )
    feedback_token_secret: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description=(
            "Secret in this namespace whose key `token` is the bearer token ground-truth feedback must carry "
            "(runtime slipway: POST /v2/models/NAME/feedback). Unset: feedback is off (403)."
        ),
    )


def _resource_target_ok(m: ScalingMetric) -> bool:
    if m.type == "pods":
        return True
    return (m.target_utilization is None) != (m.target_average_value is None)


def _pods_target_ok(m: ScalingMetric) -> bool:
    if m.type != "pods":
        return m.metric_name is None
    return m.metric_name is not None and m.target_average_value is not None and m.target_utilization is None


@cel(
    Rule(
        rule=(
            "self.type == 'pods' || (has(self.targetUtilization) ? 1 : 0) + (has(self.targetAverageValue) ? 1 : 0) == 1"
        ),
        message="cpu and memory metrics set exactly one of targetUtilization or targetAverageValue",
        check=_resource_target_ok,
    ),
    Rule(
        rule=(
            "self.type == 'pods' ? (has(self.metricName) && has(self.targetAverageValue) && "
            "!has(self.targetUtilization)) : !has(self.metricName)"
        ),
        message=(
            "pods metrics set metricName and targetAverageValue (not targetUtilization); "
            "metricName is only for pods metrics"
        ),
        check=_pods_target_ok,
    ),
)
class ScalingMetric(ApiModel):
    """One HPA metric: cpu or memory utilisation, or a per-pod custom metric."""

    type: Literal["cpu", "memory", "pods"] = Field(
        description="cpu or memory (resource metrics), or pods (a custom per-pod metric)."
    )
    target_utilization: int | None = Field(
        None, ge=1, le=1000, description="Target average utilisation in percent of requests."
    )
    target_average_value: Quantity | None = Field(
        None, description="Target average value per pod, e.g. 500m or 100 (requests/s)."
    )
    metric_name: str | None = Field(
        None,
        min_length=1,
        max_length=253,
        description="For pods: the custom metric's name, e.g. slipway_requests_per_second.",
    )


@cel(
    Rule(
        rule="self.minReplicas <= self.maxReplicas",
        message="minReplicas must be less than or equal to maxReplicas",
        field_path=".minReplicas",
        check=lambda a: a.min_replicas <= a.max_replicas,
    ),
    Rule(
        rule=(
            "self.metrics.filter(m, m.type == 'cpu').size() <= 1 && "
            "self.metrics.filter(m, m.type == 'memory').size() <= 1"
        ),
        message="metrics may name cpu and memory at most once each",
        field_path=".metrics",
        check=lambda a: all(sum(m.type == t for m in a.metrics) <= 1 for t in ("cpu", "memory")),
    ),
)
class Autoscaling(ApiModel):
    """Horizontal autoscaling of each live version (stable and canary each get their own HPA)."""

    min_replicas: int = Field(1, ge=1, le=1000, description="Fewest predictor pods per version.")
    max_replicas: int = Field(3, ge=1, le=1000, description="Most predictor pods per version.")
    metrics: list[ScalingMetric] = Field(
        default=[ScalingMetric(type="cpu", target_utilization=80)],
        min_length=1,
        max_length=8,
        description="Metrics the HPA scales on.",
    )


# --- analysis -----------------------------------------------------------------------------


METRICS_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["name"],
}


@cel(at_least_one("metrics", "templates"), NO_ARGS_INLINE, REFS_UNIQUE)
class Analysis(ApiModel):
    """Analysis: each metric is measured every interval; a measurement out of bounds is a
    failure, and more than failureLimit failures roll back. No data or an error pauses the
    analysis (no promotion without evidence) but does not by itself roll back. Dry-run
    metrics are measured and recorded, never acted on."""

    interval: Duration = Field("30s", description="Time between measurements, e.g. 30s.")
    failure_limit: int = Field(2, ge=0, le=100, description="Failed measurements tolerated; one more rolls back.")
    count: int = Field(
        3,
        ge=1,
        le=100,
        description=(
            "Successful measurement rounds a blocking analysis (an analysis step, a "
            "pre-promotion analysis) needs to pass. Background analysis runs until the end."
        ),
    )
    metrics: list[AnalysisMetric] | None = Field(
        None,
        min_length=1,
        max_length=16,
        json_schema_extra=METRICS_EXTRA,
        description="Metrics to measure (with templates, besides theirs).",
    )
    templates: list[TemplateRef] | None = Field(None, min_length=1, max_length=8, description=TEMPLATES_DESCRIPTION)


@cel(NO_ARGS_INLINE, REFS_UNIQUE)
class AnalysisStep(ApiModel):
    """A blocking analysis step: hold the current weight until the analysis passes.
    Unset fields come from strategy.canary.analysis."""

    metrics: list[AnalysisMetric] | None = Field(
        None,
        min_length=1,
        max_length=16,
        json_schema_extra=METRICS_EXTRA,
        description="Metrics to measure. Default (neither metrics nor templates): those of strategy.canary.analysis.",
    )
    templates: list[TemplateRef] | None = Field(
        None,
        min_length=1,
        max_length=8,
        description=TEMPLATES_DESCRIPTION + " Default (neither metrics nor templates): strategy.canary.analysis's.",
    )
    count: int | None = Field(None, ge=1, le=100, description="Successful measurement rounds needed to pass.")
    interval: Duration | None = Field(None, description="Time between measurements.")
    failure_limit: int | None = Field(
        None, ge=0, le=100, description="Failed measurements tolerated; one more rolls back."
    )


# --- strategies ---------------------------------------------------------------------------


class Approval(ApiModel):
    """An approval given in the model registry: a tag on the candidate MLflow model version."""

    tag: str = Field(
        min_length=1,
        max_length=250,
        pattern=TAG_KEY_PATTERN,
        description="Tag key on the candidate model version, e.g. approved_by or validation_status.",
    )
    value: ShortText | None = Field(
        None,
        min_length=1,
        description=(
            "Value the tag must have, e.g. approved. Unset: any non-empty value approves "
            "(e.g. approved_by: the reviewer's name)."
        ),
    )


@cel(
    Rule(
        rule="!has(self.duration) || !has(self.untilApproved)",
        message="pause: set at most one of duration or untilApproved",
        check=lambda p: p.duration is None or p.until_approved is None,
    )
)
class PauseStep(ApiModel):
    """Hold the current weight for a while, until approved in the registry, or until promoted by hand."""

    duration: Duration | None = Field(
        None,
        description=("How long to pause, e.g. 60s. Unset (and no untilApproved): until `kubectl slipway promote`."),
    )
    until_approved: Approval | None = Field(
        None,
        description=(
            "Pause until the candidate model version carries this MLflow tag (or until `kubectl slipway promote`)."
        ),
    )


class MirrorStep(ApiModel):
    """Mirror (shadow) a share of live traffic to the canary; its responses are discarded."""

    percent: int = Field(100, ge=0, le=100, description="Percent of requests to mirror.")


@cel(exactly_one("set_weight", "pause", "analysis", "mirror"))
class CanaryStep(ApiModel):
    """One step of a canary: exactly one of setWeight, pause, analysis or mirror."""

    set_weight: int | None = Field(
        None, ge=0, le=100, description="Send this percent of traffic to the canary (0-100)."
    )
    pause: PauseStep | None = Field(
        None, description="Pause, for a duration, until approved in the registry, or until promoted."
    )
    analysis: AnalysisStep | None = Field(None, description="Hold until an analysis passes ({} uses canary.analysis).")
    mirror: MirrorStep | None = Field(
        None, description="Mirror a percent of traffic to the canary (router gateway-api only)."
    )


def _weights_increasing(c: Canary) -> bool:
    weights = [s.set_weight for s in c.steps if s.set_weight is not None]
    return all(a < b for a, b in pairwise(weights))


def _analysis_steps_have_metrics(c: Canary) -> bool:
    bare = any(s.analysis is not None and s.analysis.metrics is None and s.analysis.templates is None for s in c.steps)
    return not bare or c.analysis is not None


DEFAULT_STEPS = [
    CanaryStep(set_weight=10),
    CanaryStep(pause=PauseStep(duration="60s")),
    CanaryStep(set_weight=50),
    CanaryStep(pause=PauseStep(duration="60s")),
    CanaryStep(set_weight=100),
]


@cel(
    Rule(
        rule=(
            "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).isSorted() && "
            "self.steps.filter(s, has(s.setWeight)).map(s, s.setWeight).all(w, "
            "self.steps.filter(s, has(s.setWeight) && s.setWeight == w).size() == 1)"
        ),
        message="steps[].setWeight values must strictly increase",
        field_path=".steps",
        check=_weights_increasing,
    ),
    Rule(
        rule=(
            "has(self.analysis) || "
            "!self.steps.exists(s, has(s.analysis) && !has(s.analysis.metrics) && !has(s.analysis.templates))"
        ),
        message="steps[].analysis without metrics or templates needs canary.analysis to take them from",
        field_path=".steps",
        check=_analysis_steps_have_metrics,
    ),
)
class Canary(ApiModel):
    """Canary: shift traffic to the new version step by step, with Prometheus analysis."""

    steps: list[CanaryStep] = Field(
        default=DEFAULT_STEPS,
        min_length=1,
        max_length=32,
        description=(
            "Steps, in order. setWeight values must increase; after the last step the canary is promoted to 100%."
        ),
    )
    analysis: Analysis | None = Field(
        None,
        description="Background analysis for the whole rollout, and defaults for analysis steps.",
    )
    progress_deadline: Duration = Field(
        "10m",
        description=("Longest a step may take (pauses without duration excepted) before the rollout is rolled back."),
    )
    scale_down_delay_seconds: int = Field(
        30,
        ge=0,
        le=86400,
        description=(
            "Seconds the old version keeps running after the canary is promoted to 100% (instant switch-back "
            "while an alert may still roll back), then its InferenceService and HPA are removed."
        ),
    )
    budget: CanaryBudget | None = Field(
        None,
        description=(
            "Share one replica (or GPU) budget between stable and canary by weight instead of running the "
            "canary on top of stable. Unset: each version has autoscaling's bounds."
        ),
    )


class Shadow(ApiModel):
    """Shadow traffic: mirror a share of live requests to the new version (its answers are
    discarded, users only ever see the stable version's) for a while, analysing the new
    version's metrics; failures roll back without the stable traffic ever moving."""

    percent: int = Field(100, ge=1, le=100, description="Percent of requests to mirror to the new version.")
    duration: Duration = Field("5m", description="How long to mirror before the strategy goes on, e.g. 10m.")
    analysis: Analysis | None = Field(
        None,
        description=(
            "Analysis of the new version's metrics while mirrored (e.g. its error rate and drift); "
            "it must pass before the strategy goes on. Unset: the duration alone."
        ),
    )


class BlueGreen(ApiModel):
    """Blue-green: bring the new version up as a preview, then switch all traffic at once."""

    shadow: Shadow | None = Field(
        None,
        description=(
            "Mirror live traffic to the preview first (router gateway-api); the mirror stays on "
            "until the switch, so the pre-promotion analysis has traffic to judge."
        ),
    )

    auto_promotion_seconds: int | None = Field(
        None,
        ge=0,
        le=604800,
        description=(
            "Seconds after the preview is ready (and its pre-promotion analysis passed) before "
            "switching. Unset: wait for `kubectl slipway promote`."
        ),
    )
    pre_promotion_analysis: Analysis | None = Field(
        None, description="Analysis of the preview that must pass before the switch."
    )
    approval: Approval | None = Field(
        None,
        description=(
            "Before the switch, wait until the preview's model version carries this MLflow tag "
            "(or `kubectl slipway promote`); then switch (after autoPromotionSeconds if set)."
        ),
    )
    post_promotion_analysis: Analysis | None = Field(
        None,
        description=(
            "Analysis after the switch; reserved: this operator version reports InvalidSpec for it "
            "(use rollback.alerts with a window to watch a promoted version)."
        ),
    )
    scale_down_delay_seconds: int = Field(
        300,
        ge=0,
        le=86400,
        description="Seconds the old version keeps running after the switch (instant switch-back).",
    )
    progress_deadline: Duration = Field(
        "10m", description="Longest the preview may take to become ready before rolling back."
    )


class HeaderMatch(ApiModel):
    """An HTTP header match."""

    name: str = Field(pattern=HEADER_NAME_PATTERN, max_length=256, description="Header name, e.g. x-variant.")
    value: str = Field(max_length=4096, description="Header value to match.")
    type: Literal["Exact", "RegularExpression"] = Field("Exact", description="Exact or RegularExpression.")


class CookieMatch(ApiModel):
    """A cookie match (a regular-expression match on the Cookie header)."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$",
        max_length=256,
        description="Cookie name, e.g. variant.",
    )
    value: str = Field(
        pattern=r"^[A-Za-z0-9!#$%&'()*+\-./:<=>?@\[\]^_`{|}~]*$",
        max_length=1024,
        description="Cookie value to match exactly.",
    )


@cel(exactly_one("header", "cookie"))
class AbMatch(ApiModel):
    """Requests matching this go to the new version (B): exactly one of header or cookie."""

    header: HeaderMatch | None = Field(None, description="Match a request header.")
    cookie: CookieMatch | None = Field(None, description="Match a cookie.")


class AbCriterion(ApiModel):
    """How the A/B test is decided: compare one Prometheus metric between A and B."""

    metric: str = Field(pattern=DNS_LABEL_PATTERN, max_length=63, description="Name of the metric, e.g. conversion.")
    query: str = Field(
        min_length=1,
        max_length=4096,
        description=(
            "PromQL returning one number for one version, measured for A and for B when the test "
            "is over." + QUERY_DESCRIPTION + " {{window}} is the test's time range, e.g. 86400s."
        ),
    )
    goal: Literal["maximize", "minimize"] = Field(
        "maximize", description="Whether higher (maximize) or lower (minimize) is better."
    )
    min_improvement: float = Field(
        0.0,
        ge=0,
        description=(
            "Relative improvement B must show over A to win, e.g. 0.02 for 2%. B must be strictly "
            "better; a tie keeps A."
        ),
    )


@cel(
    at_least_one("weight", "match"),
    Rule(
        rule="has(self.match) || !has(self.weight) || self.weight > 0",
        message="weight 0 without match sends B no traffic: set weight above 0 or a match",
        field_path=".weight",
        check=lambda t: t.match is not None or t.weight is None or t.weight > 0,
    ),
    Rule(
        rule="!has(self.approval) || !has(self.criterion)",
        message="approval decides an A/B test without a criterion: set approval or criterion, not both",
        field_path=".approval",
        check=lambda t: t.approval is None or t.criterion is None,
    ),
)
class AbTest(ApiModel):
    """A/B test: serve the new version (B) beside the current one (A) to a fixed share or
    segment of traffic for a duration, then promote B if it wins, else roll back."""

    weight: int | None = Field(None, ge=0, le=100, description="Percent of unmatched traffic sent to B.")
    match: list[AbMatch] | None = Field(
        None, min_length=1, max_length=8, description="Requests matching any of these go to B."
    )
    duration: Duration = Field(description="How long the test runs before it is decided, e.g. 24h.")
    criterion: AbCriterion | None = Field(
        None, description="How to decide. Unset: wait for `kubectl slipway promote` or abort."
    )
    approval: Approval | None = Field(
        None,
        description=(
            "Without a criterion: when the test is over, promote B once its model version carries this "
            "MLflow tag (or on `kubectl slipway promote`; abort keeps A)."
        ),
    )
    analysis: Analysis | None = Field(None, description="Guard-rail analysis during the test; failures roll back.")
    shadow: Shadow | None = Field(
        None, description="Mirror live traffic to B before the test starts; failures roll back."
    )
    progress_deadline: Duration = Field(
        "10m", description="Longest B may take to become ready before the test is rolled back."
    )


@cel(exactly_one("canary", "blue_green", "ab_test", prefix="strategy."))
class Strategy(ApiModel):
    """How a new version is rolled out: exactly one of canary, blueGreen or abTest."""

    canary: Canary | None = Field(
        None,
        description=(
            "Canary: shift traffic to the new version step by step (setWeight, pause, "
            "analysis, mirror steps), with Prometheus analysis; the default strategy."
        ),
    )
    blue_green: BlueGreen | None = Field(
        None,
        description=("Blue-green: bring the new version up as a preview, analyse it, then switch all traffic at once."),
    )
    ab_test: AbTest | None = Field(
        None,
        description=(
            "A/B test: serve the new version to a share or segment of traffic for a duration, "
            "then promote or roll back on a metric."
        ),
    )


# --- rollback and routing -----------------------------------------------------------------


@cel(at_least_one("alert_names", "match_labels", prefix="alerts."))
class AlertSelector(ApiModel):
    """Which Prometheus alerts roll back: a firing alert must match a name (if alertNames is
    set) and all matchLabels (if set), and carry this deployment's namespace and name labels."""

    alert_names: list[ShortText] | None = Field(
        None,
        min_length=1,
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "set"},
        description="Alert names, e.g. SlipwayModelDrift, SlipwayModelErrors.",
    )
    match_labels: dict[str, ShortText] | None = Field(
        None, max_length=16, description="Labels the alert must carry, e.g. severity: critical."
    )


class Rollback(ApiModel):
    """Automatic rollback on alerts, during the rollout and for a window after promotion."""

    alerts: AlertSelector | None = Field(
        None, description="Alerts that roll back. Unset: only analysis and deadlines roll back."
    )
    window: Duration = Field(
        "30m",
        description=(
            "After promotion, a matching alert still rolls back to the previous version for "
            "this long, e.g. 30m. 0s: no watch window."
        ),
    )
    registry: Literal["none", "tag", "revertAlias"] = Field(
        "tag",
        description=(
            "What to write back to MLflow on rollback: none; tag (tag the version "
            "slipway.rolled-back); revertAlias (also point the tracked alias back at the "
            "previous version)."
        ),
    )


class ParentRef(ApiModel):
    """A Gateway API parent (a Gateway) the HTTPRoute attaches to."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the Gateway.")
    namespace: str | None = Field(
        None,
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Namespace of the Gateway. Default: the ModelDeployment's.",
    )
    section_name: str | None = Field(
        None,
        pattern=DNS_SUBDOMAIN_PATTERN,
        max_length=253,
        description="Listener of the Gateway to attach to.",
    )
    port: int | None = Field(None, ge=1, le=65535, description="Listener port to attach to.")


class Gateway(ApiModel):
    """Where the HTTPRoute carrying the traffic split attaches (router gateway-api)."""

    parent_refs: list[ParentRef] = Field(min_length=1, max_length=8, description="Gateways the HTTPRoute attaches to.")
    hostnames: list[Hostname] | None = Field(
        None,
        max_length=16,
        description="Hostnames the route serves, e.g. digits.example.com.",
    )


_KNATIVE = "self.router != 'kserve-knative'"


@cel(
    Rule(
        rule="self.rollback.registry != 'revertAlias' || has(self.model.track.alias)",
        message="rollback.registry revertAlias needs model.track.alias",
        field_path=".rollback.registry",
        check=lambda s: s.rollback.registry != "revertAlias" or s.model.track.alias is not None,
    ),
    Rule(
        rule=f"{_KNATIVE} || !has(self.strategy.abTest)",
        message="strategy.abTest needs router gateway-api (header and cookie matching, mirroring)",
        field_path=".strategy",
        check=lambda s: s.router != "kserve-knative" or s.strategy.ab_test is None,
    ),
    Rule(
        rule=(f"{_KNATIVE} || !has(self.strategy.canary) || !self.strategy.canary.steps.exists(s, has(s.mirror))"),
        message="strategy.canary.steps[].mirror needs router gateway-api",
        field_path=".strategy",
        check=lambda s: (
            s.router != "kserve-knative"
            or s.strategy.canary is None
            or all(st.mirror is None for st in s.strategy.canary.steps)
        ),
    ),
    Rule(
        rule=f"{_KNATIVE} || !has(self.strategy.blueGreen) || !has(self.strategy.blueGreen.shadow)",
        message="strategy.blueGreen.shadow needs router gateway-api (request mirroring)",
        field_path=".strategy",
        check=lambda s: (
            s.router != "kserve-knative" or s.strategy.blue_green is None or s.strategy.blue_green.shadow is None
        ),
    ),
    Rule(
        rule=f"{_KNATIVE} || !has(self.gateway)",
        message="gateway applies only to router gateway-api",
        field_path=".gateway",
        check=lambda s: s.router != "kserve-knative" or s.gateway is None,
    ),
)
class ModelDeploymentSpec(ApiModel):
    """Which model to serve, how to serve and scale it, how to roll new versions out and back."""

    model: ModelRef = Field(description="MLflow model and the alias, stage or version to follow.")
    serving: Serving = Field(default=Serving(), description="Runtime, protocol and resources.")
    autoscaling: Autoscaling = Field(default=Autoscaling(), description="Replicas and HPA metrics per live version.")
    strategy: Strategy = Field(
        default=Strategy(canary=Canary()),
        description="canary (default), blueGreen or abTest.",
    )
    rollback: Rollback = Field(default=Rollback(), description="Alert-driven automatic rollback.")
    router: Literal["gateway-api", "kserve-knative"] = Field(
        "gateway-api",
        description=(
            "gateway-api: an HTTPRoute with weighted backends splits traffic; kserve-knative: "
            "an InferenceService's canaryTrafficPercent (KServe in Knative mode)."
        ),
    )
    gateway: Gateway | None = Field(
        None, description="Gateways for the HTTPRoute. Default: the operator's configured gateway."
    )
    paused: bool = Field(False, description="Freeze the rollout where it is (traffic stays as it is).")
    requirements: Requirements | None = Field(
        None,
        description=(
            "What a version must show before it is rolled out, whatever moves the alias: run metrics, "
            "tags, a signature, a passed TrainingRun gate, a minimum age. A version failing them is not "
            "rolled out (condition RequirementsMet False); it starts by itself once it meets them."
        ),
    )
    notifications: Notifications | None = Field(
        None,
        description=(
            "Messages to Slack, Teams or a signed JSON webhook when a rollout starts, reaches a step, pauses, "
            "is promoted or rolled back, and on errors; adds to the operator's defaults (docs/notifications.md)."
        ),
    )


# --- status -------------------------------------------------------------------------------


class ResolvedTemplate(ApiModel):
    """One template reference as the running rollout resolved it (its metrics as they were then)."""

    field: str = Field(description="Where the reference is, e.g. spec.strategy.canary.analysis.templates[0].")
    ref: TemplateRef = Field(description="The reference as the spec gave it.")
    kind: Literal["AnalysisTemplate", "ClusterAnalysisTemplate"] = Field(description="Kind of the template.")
    resource_version: str | None = Field(None, description="The template's metadata.resourceVersion then.")
    generation: int | None = Field(None, description="The template's metadata.generation then.")
    args: dict[str, str] | None = Field(None, description="Argument values used (given, else defaults).")
    metrics: list[AnalysisMetric] = Field(max_length=16, description="The template's metrics, arguments filled in.")


class FrozenAnalysis(ApiModel):
    """The template metrics a rollout uses: resolved when it started, kept until it ends."""

    version: str = Field(description="The version whose rollout they belong to.")
    rollout_started_at: datetime | None = Field(None, description="When that rollout started.")
    message: str | None = Field(None, description="What this means, in words.")
    templates: list[ResolvedTemplate] = Field(
        max_length=64, description="Every template reference of the spec, resolved."
    )


class FiredAlert(ApiModel):
    """An alert that triggered a rollback."""

    name: str = Field(description="alertname of the alert.")
    labels: dict[str, str] | None = Field(None, description="Labels of the alert.")
    starts_at: datetime | None = Field(None, description="When the alert started firing.")


class PendingWriteBack(ApiModel):
    """A rollback not yet written back to the MLflow registry (retried, with back-off, until done)."""

    model: str = Field(description="Registered model to write to.")
    version: str = Field(description="Version rolled back (tagged slipway.rolled-back).")
    restored_version: str | None = Field(None, description="Version serving again (the alias goes back to it).")
    alias: str | None = Field(None, description="Alias to move back (registry: revertAlias).")
    mode: Literal["tag", "revertAlias"] = Field(description="spec.rollback.registry when the rollback happened.")
    reason: str = Field(description="Why the version was rolled back (the tag's value).")
    attempts: int = Field(0, ge=0, description="Attempts that failed so far.")
    next_attempt_at: datetime | None = Field(None, description="Not before this time.")
    last_error: str | None = Field(None, description="What the last attempt met.")


class ModelDeploymentStatus(RolloutState):
    """Observed state of the deployment and its rollout, written by the operator."""

    # The rollout's fields are the RolloutState the machine works on (slipway.api.rollout); these are the rest.

    model_config = ConfigDict(extra="forbid")

    tracked_version: str | None = Field(None, description="Version the tracked alias, stage or pin resolves to now.")
    analysis_templates: FrozenAnalysis | None = Field(
        None,
        description=(
            "The analysis templates' metrics the running rollout uses, as they were when it started: "
            "a template changed or deleted meanwhile does not alter it (the next rollout reads it anew)."
        ),
    )
    last_alert: FiredAlert | None = Field(None, description="The alert behind the last rollback.")
    pending_write_backs: list[PendingWriteBack] | None = Field(
        None, description="Rollbacks still to be written back to the MLflow registry, oldest first."
    )
    url: str | None = Field(None, description="URL the model is served at.")
    observed_generation: int | None = Field(None, description="metadata.generation the status was computed for.")
    conditions: list[Condition] | None = Field(
        None,
        json_schema_extra=CONDITIONS_EXTRA,
        description="Conditions: Ready, Progressing, RolledBack, InvalidSpec, RequirementsMet.",
    )

    @model_validator(mode="after")
    def _conditions_unique(self) -> ModelDeploymentStatus:
        check_list_type("conditions", CONDITIONS_EXTRA, self.conditions or [])
        return self


@cel(name_rule(40, "it names InferenceServices <name>-v<version> and their Services"))
class ModelDeployment(ApiModel):
    """A ModelDeployment object: the typed view of what the API server stores."""

    api_version: Literal["ml.slipway.dev/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["ModelDeployment"] = Field("ModelDeployment", description="Kind.")
    metadata: ObjectMeta = Field(default=ObjectMeta(), description="Object metadata.")
    spec: ModelDeploymentSpec = Field(description="Desired deployment.")
    status: ModelDeploymentStatus | None = Field(None, description="Observed state.")


INFO = KindInfo(
    kind="ModelDeployment",
    plural="modeldeployments",
    short_names=("md",),
    description=(
        "ModelDeployment serves an MLflow model on KServe, follows an alias, stage or pinned "
        "version, rolls new versions out (canary, blue-green, A/B) and rolls back on its own "
        "when analysis fails or alerts fire."
    ),
    resource=ModelDeployment,
    spec=ModelDeploymentSpec,
    status=ModelDeploymentStatus,
    columns=(
        PrinterColumn("Model", ".spec.model.name", description="Registered-model name."),
        PrinterColumn("Stable", ".status.stableVersion", description="Stable version."),
        PrinterColumn("Canary", ".status.canaryVersion", description="Version rolling out."),
        PrinterColumn("Weight", ".status.canaryWeight", "integer", "Percent on the canary."),
        PrinterColumn("Phase", ".status.phase", description="Rollout phase."),
        PrinterColumn("URL", ".status.url", description="Serving URL.", priority=1),
        AGE_COLUMN,
    ),
)
