"""Analysis metrics (Prometheus or web), template references and their arguments, for deployments and templates."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from .common import (
    DNS_LABEL_PATTERN,
    DNS_SUBDOMAIN_PATTERN,
    ApiModel,
    Duration,
    Rule,
    at_least_one,
    cel,
    exactly_one,
    ordered_bounds,
)

HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_-]*$"
PLACEHOLDER = re.compile(r"\{\{args\.([^}]*)\}\}")
"""An argument placeholder: ``{{args.NAME}}`` (no spaces)."""
PLACEHOLDER_CEL = "\\\\{\\\\{args\\\\.[^}]*\\\\}\\\\}"
SENSITIVE_HEADER = r"(?i)(authorization|cookie|token|secret|key|password|passwd|credential)"
QUERY_DESCRIPTION = (
    " {{version}}, {{namespace}} and {{name}} are replaced by the model version being measured, the "
    "namespace and the ModelDeployment's name; in a template, {{args.NAME}} by the argument NAME."
)
NAMED_LIST: dict[str, Any] = {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]}


class SecretKeyRef(ApiModel):
    """A key of a Secret in the ModelDeployment's namespace."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the Secret.")
    key: str = Field(pattern=r"^[-._a-zA-Z0-9]+$", max_length=253, description="Key in the Secret's data.")


class HeaderValueSource(ApiModel):
    """Where a header's value comes from."""

    secret_key_ref: SecretKeyRef = Field(description="A key of a Secret in the ModelDeployment's namespace.")


def _no_literal_secret(h: WebHeader) -> bool:
    return h.value is None or re.search(SENSITIVE_HEADER, h.name) is None


@cel(
    exactly_one("value", "value_from"),
    Rule(
        rule=f"!has(self.value) || !self.name.matches('{SENSITIVE_HEADER}')",
        message=(
            "a header carrying credentials (Authorization, Cookie, *token*, *key*, *secret*…) takes "
            "valueFrom.secretKeyRef, never a literal value"
        ),
        field_path=".value",
        check=_no_literal_secret,
    ),
)
class WebHeader(ApiModel):
    """An HTTP header of a web metric's request: a plain value, or one read from a Secret."""

    name: str = Field(pattern=HEADER_NAME_PATTERN, max_length=64, description="Header name, e.g. Authorization.")
    value: str | None = Field(
        None, max_length=1024, description="A literal value for headers that carry no secret, e.g. Content-Type."
    )
    value_from: HeaderValueSource | None = Field(
        None, description="The value from a Secret in the ModelDeployment's namespace (read at each measurement)."
    )


@cel(
    Rule(
        rule="self.method == 'POST' || !has(self.body)",
        message="body needs method POST",
        field_path=".body",
        check=lambda w: w.method == "POST" or w.body is None,
    )
)
class WebMetric(ApiModel):
    """A number read from an HTTP service that answers JSON (an evaluation service, a feature store...)."""

    url: str = Field(
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="http(s) URL to call." + QUERY_DESCRIPTION,
    )
    method: Literal["GET", "POST"] = Field("GET", description="GET or POST.")
    headers: list[WebHeader] | None = Field(
        None, max_length=16, json_schema_extra=NAMED_LIST, description="Request headers."
    )
    body: str | None = Field(None, max_length=16384, description="Request body for POST." + QUERY_DESCRIPTION)
    json_path: str = Field(
        min_length=1,
        max_length=512,
        description="JSONPath to the number in the JSON answer, e.g. $.data.accuracy (one match).",
    )
    timeout: Duration = Field("10s", description="Longest the call may take; slower is an Error measurement.")


@cel(exactly_one("query", "web"), at_least_one("min", "max"), ordered_bounds())
class AnalysisMetric(ApiModel):
    """A number that must stay within bounds: a Prometheus query, or a web call answering JSON."""

    name: str = Field(
        pattern=DNS_LABEL_PATTERN,
        max_length=63,
        description="Name of the metric, unique in its analysis, e.g. error-rate.",
    )
    query: str | None = Field(
        None,
        min_length=1,
        max_length=4096,
        description="Provider Prometheus: PromQL returning one number." + QUERY_DESCRIPTION,
    )
    web: WebMetric | None = Field(None, description="Provider web: an HTTP GET or POST answering JSON.")
    min: float | None = Field(None, description="Lowest passing value (inclusive).")
    max: float | None = Field(None, description="Highest passing value (inclusive).")
    dry_run: bool = Field(
        False,
        description=(
            "Measure and record (status, metrics) but never act: a failing dry-run metric neither rolls back "
            "nor holds the rollout."
        ),
    )


def placeholders(metric: AnalysisMetric) -> list[str]:
    """The argument names a metric's query, URL and body use."""
    texts = [metric.query or ""]
    if metric.web is not None:
        texts += [metric.web.url, metric.web.body or ""]
    return [name for text in texts for name in PLACEHOLDER.findall(text)]


def _cel_texts(var: str) -> str:
    """A CEL list of a metric's templated strings (query, web.url, web.body), '' where unset."""
    return (
        f"[has({var}.query) ? {var}.query : '', has({var}.web) ? {var}.web.url : '', "
        f"has({var}.web) && has({var}.web.body) ? {var}.web.body : '']"
    )


def _no_args_inline(owner: Any) -> bool:
    return not any(placeholders(m) for m in owner.metrics or [])


NO_ARGS_INLINE = Rule(
    rule=f"!has(self.metrics) || self.metrics.all(m, {_cel_texts('m')}.all(t, !t.contains('{{{{args.')))",
    message="inline metrics take no {{args.NAME}} placeholders: arguments belong to AnalysisTemplates",
    field_path=".metrics",
    check=_no_args_inline,
)


class Arg(ApiModel):
    """A value for one argument of a template."""

    name: str = Field(pattern=ARG_NAME_PATTERN, max_length=63, description="Name of the argument.")
    value: str = Field(max_length=4096, description="Its value, put in place of {{args.NAME}}.")


class TemplateRef(ApiModel):
    """An AnalysisTemplate (this namespace) or a ClusterAnalysisTemplate whose metrics join the analysis."""

    name: str = Field(pattern=DNS_SUBDOMAIN_PATTERN, max_length=253, description="Name of the template.")
    cluster_scope: bool = Field(False, description="true: a ClusterAnalysisTemplate; false: an AnalysisTemplate.")
    args: list[Arg] | None = Field(
        None,
        max_length=32,
        json_schema_extra=NAMED_LIST,
        description="Values of the template's arguments (those without a default are required).",
    )


def _refs_unique(owner: Any) -> bool:
    keys = [(t.name, t.cluster_scope) for t in owner.templates or []]
    return len(keys) == len(set(keys))


REFS_UNIQUE = Rule(
    rule=(
        "!has(self.templates) || self.templates.all(t, "
        "self.templates.filter(u, u.name == t.name && u.clusterScope == t.clusterScope).size() == 1)"
    ),
    message="templates may name each template once",
    field_path=".templates",
    check=_refs_unique,
)
TEMPLATES_DESCRIPTION = (
    "AnalysisTemplates and ClusterAnalysisTemplates whose metrics join the inline ones; resolved when a rollout "
    "starts and kept for that rollout (status.analysisTemplates)."
)
