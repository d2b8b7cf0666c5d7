"""Analysis templates, pure: where a spec references them, their arguments filled in, their metrics put inline."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from slipway.api.analysis import PLACEHOLDER, AnalysisMetric, TemplateRef
from slipway.api.analysistemplate import AnalysisTemplateSpec
from slipway.api.modeldeployment import ModelDeploymentSpec

Path = tuple[str | int, ...]


class TemplateError(ValueError):
    """A reference that cannot be honoured (missing template, missing argument, clashing metric names)."""


def _sites(spec: dict[str, Any]) -> list[Path]:
    """Paths (under spec) of every analysis: canary's and its steps', blue-green's, A/B's and the shadows'."""
    strategy = spec.get("strategy") or {}
    out: list[Path] = []
    canary = strategy.get("canary")
    if canary is not None:
        out.append(("strategy", "canary", "analysis"))
        out += [("strategy", "canary", "steps", i, "analysis") for i in range(len(canary.get("steps") or []))]
    for name in ("blueGreen", "abTest"):
        if strategy.get(name) is not None:
            keys = ("prePromotionAnalysis", "postPromotionAnalysis") if name == "blueGreen" else ("analysis",)
            out += [("strategy", name, key) for key in keys]
            out.append(("strategy", name, "shadow", "analysis"))
    return [p for p in out if _at(spec, p) is not None]


def _at(node: Any, path: Path) -> Any:
    for key in path:
        if node is None:
            return None
        node = node[key] if isinstance(key, int) else node.get(key)
    return node


def field_of(path: Path) -> str:
    """``("strategy", "canary", "steps", 1, "analysis")`` as ``spec.strategy.canary.steps[1].analysis``."""
    out = "spec"
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else f".{key}"
    return out


def references(spec: ModelDeploymentSpec) -> list[tuple[str, Path, TemplateRef]]:
    """Every template reference of a spec: its field (``spec....templates[i]``), its analysis's path, the reference."""
    raw = spec.to_dict()
    out = []
    for path in _sites(raw):
        for i, ref in enumerate(_at(raw, path).get("templates") or []):
            out.append((f"{field_of(path)}.templates[{i}]", path, TemplateRef.model_validate(ref)))
    return out


def arg_values(template: AnalysisTemplateSpec, ref: TemplateRef, field: str) -> dict[str, str]:
    """The arguments a reference gives, with the template's defaults; a missing or unknown one is an error."""
    given = {a.name: a.value for a in ref.args or []}
    declared = {a.name: a.value for a in template.args or []}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise TemplateError(f"{field}.args: {', '.join(unknown)} not an argument of template {ref.name}")
    values = {**{k: v for k, v in declared.items() if v is not None}, **given}
    missing = sorted(set(declared) - set(values))
    if missing:
        raise TemplateError(f"{field}.args: template {ref.name} needs a value for {', '.join(missing)}")
    return values


def render(text: str, args: Mapping[str, str]) -> str:
    """Put each ``{{args.NAME}}`` in ``text`` in place (an undeclared one stays as it is)."""
    return PLACEHOLDER.sub(lambda m: args.get(m.group(1), m.group(0)), text)


def render_metric(metric: AnalysisMetric, args: Mapping[str, str]) -> AnalysisMetric:
    """A template's metric with its arguments filled into the query, or the web call's URL and body."""
    update: dict[str, Any] = {}
    if metric.query is not None:
        update["query"] = render(metric.query, args)
    if metric.web is not None:
        body = render(metric.web.body, args) if metric.web.body is not None else None
        update["web"] = metric.web.model_copy(update={"url": render(metric.web.url, args), "body": body})
    return metric.model_copy(update=update)


def render_template(template: AnalysisTemplateSpec, ref: TemplateRef, field: str) -> tuple[AnalysisMetric, ...]:
    """A template's metrics as a reference uses them (its arguments, else the defaults)."""
    args = arg_values(template, ref, field)
    return tuple(render_metric(m, args) for m in template.metrics)


def expand(spec: ModelDeploymentSpec, resolved: Mapping[str, tuple[AnalysisMetric, ...]]) -> ModelDeploymentSpec:
    """The spec with each analysis's template metrics (``resolved`` by reference field) after its inline ones.

    The result references no template, so the state machine sees metrics only. Two metrics of one
    analysis with the same name (inline and template, or two templates) are an error naming the field.
    """
    raw = spec.to_dict()
    for path in _sites(raw):
        site = _at(raw, path)
        refs = site.pop("templates", None) or []
        if not refs:
            continue
        metrics = list(site.get("metrics") or [])
        origin = {m["name"]: "inline metrics" for m in metrics}
        for i, ref in enumerate(refs):
            field = f"{field_of(path)}.templates[{i}]"
            for metric in resolved[field]:
                if metric.name in origin:
                    raise TemplateError(
                        f"{field_of(path)}: metric {metric.name} comes from both {origin[metric.name]} "
                        f"and template {ref['name']}"
                    )
                origin[metric.name] = f"template {ref['name']}"
                metrics.append(metric.to_dict())
        if len(metrics) > 16:
            raise TemplateError(f"{field_of(path)}: {len(metrics)} metrics with the templates' (at most 16)")
        site["metrics"] = metrics
    return ModelDeploymentSpec.model_validate(raw)
