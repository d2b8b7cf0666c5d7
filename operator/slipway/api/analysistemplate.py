"""AnalysisTemplate and ClusterAnalysisTemplate: named analysis metrics with arguments, shared by ModelDeployments."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .analysis import ARG_NAME_PATTERN, NAMED_LIST, PLACEHOLDER_CEL, AnalysisMetric, _cel_texts, placeholders
from .common import AGE_COLUMN, API_VERSION, ApiModel, KindInfo, ObjectMeta, PrinterColumn, Rule, cel


class TemplateArg(ApiModel):
    """An argument of the template: required, or with a default."""

    name: str = Field(pattern=ARG_NAME_PATTERN, max_length=63, description="Name, used as {{args.NAME}}.")
    value: str | None = Field(None, max_length=4096, description="Default value. Unset: every reference must give one.")


def _placeholders_declared(spec: AnalysisTemplateSpec) -> bool:
    declared = {a.name for a in spec.args or []}
    return all(p in declared for m in spec.metrics for p in placeholders(m))


@cel(
    Rule(
        rule=(
            f"self.metrics.all(m, {_cel_texts('m')}.all(t, t.findAll('{PLACEHOLDER_CEL}').all(p, "
            "has(self.args) && self.args.exists(a, p == '{{args.' + a.name + '}}'))))"
        ),
        message="every {{args.NAME}} placeholder in metrics[].query, web.url and web.body must be declared in args",
        field_path=".metrics",
        check=_placeholders_declared,
    )
)
class AnalysisTemplateSpec(ApiModel):
    """Metrics to measure, with the arguments their queries, URLs and bodies take."""

    args: list[TemplateArg] | None = Field(
        None, max_length=32, json_schema_extra=NAMED_LIST, description="Arguments the metrics use."
    )
    metrics: list[AnalysisMetric] = Field(
        min_length=1, max_length=16, json_schema_extra=NAMED_LIST, description="Metrics to measure."
    )


class AnalysisTemplate(ApiModel):
    """An AnalysisTemplate object (namespaced)."""

    api_version: Literal["ml.slipway.dev/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["AnalysisTemplate"] = Field("AnalysisTemplate", description="Kind.")
    metadata: ObjectMeta = Field(default=ObjectMeta(), description="Object metadata.")
    spec: AnalysisTemplateSpec = Field(description="The metrics and their arguments.")


class ClusterAnalysisTemplate(ApiModel):
    """A ClusterAnalysisTemplate object (cluster-scoped: any namespace's ModelDeployments may use it)."""

    api_version: Literal["ml.slipway.dev/v1alpha1"] = Field(API_VERSION, description="API version.")
    kind: Literal["ClusterAnalysisTemplate"] = Field("ClusterAnalysisTemplate", description="Kind.")
    metadata: ObjectMeta = Field(default=ObjectMeta(), description="Object metadata.")
    spec: AnalysisTemplateSpec = Field(description="The metrics and their arguments.")


_COLUMNS = (
    PrinterColumn("Metrics", ".spec.metrics[*].name", description="Names of the metrics."),
    AGE_COLUMN,
)
INFO = KindInfo(
    kind="AnalysisTemplate",
    plural="analysistemplates",
    short_names=("at",),
    description=(
        "AnalysisTemplate holds analysis metrics (Prometheus queries or web calls) with arguments, for the "
        "ModelDeployments of its namespace to reference from any analysis (strategy.*.analysis.templates)."
    ),
    resource=AnalysisTemplate,
    spec=AnalysisTemplateSpec,
    status=None,
    columns=_COLUMNS,
)
CLUSTER_INFO = KindInfo(
    kind="ClusterAnalysisTemplate",
    plural="clusteranalysistemplates",
    short_names=("cat",),
    description=(
        "ClusterAnalysisTemplate holds analysis metrics (Prometheus queries or web calls) with arguments, for "
        "ModelDeployments of every namespace to reference with clusterScope: true."
    ),
    resource=ClusterAnalysisTemplate,
    spec=AnalysisTemplateSpec,
    status=None,
    columns=_COLUMNS,
    scope="Cluster",
)
