"""Analysis templates of a ModelDeployment: read when a rollout starts, frozen in status until it ends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from slipway.api.analysistemplate import AnalysisTemplateSpec
from slipway.api.modeldeployment import ModelDeployment
from slipway.api.names import API_VERSION
from slipway.clients.kube import Kube
from slipway.rollout.templates import TemplateError, arg_values, expand, references, render_metric

GROUP_VERSION = API_VERSION
IN_ROLLOUT = ("Progressing", "Paused")
STATUS_FIELD = "analysisTemplates"


@dataclass(frozen=True)
class Resolved:
    """The deployment with every template's metrics inline, and the record of what they were resolved from."""

    md: ModelDeployment
    entries: tuple[dict[str, Any], ...] = ()


def frozen_entries(old: dict[str, Any]) -> list[dict[str, Any]]:
    """The entries the running rollout froze (none when no rollout runs, or the record is of another one)."""
    record = old.get(STATUS_FIELD) or {}
    if old.get("phase") not in IN_ROLLOUT or not record:
        return []
    same = record.get("version") == old.get("canaryVersion") and record.get("rolloutStartedAt") == old.get(
        "rolloutStartedAt"
    )
    return list(record.get("templates") or []) if same else []


def resolve(kube: Kube, md: ModelDeployment, old: dict[str, Any]) -> Resolved:
    """Every template reference resolved: from the running rollout's record, else read now and rendered.

    Raises :class:`TemplateError` naming the field for a template that does not exist, a missing
    or unknown argument, or metric names that clash.
    """
    refs = references(md.spec)
    if not refs:
        return Resolved(md)
    kept = frozen_entries(old)
    entries: list[dict[str, Any]] = []
    metrics = {}
    for field, _path, ref in refs:
        entry = next((e for e in kept if e.get("field") == field and e.get("ref") == ref.to_dict()), None)
        entry = _read(kube, md, field, ref) if entry is None else dict(entry)
        entries.append(entry)
        template = AnalysisTemplateSpec.model_validate({"metrics": entry["metrics"]})
        metrics[field] = tuple(template.metrics)
    spec = expand(md.spec, metrics)
    return Resolved(md.model_copy(update={"spec": spec}), tuple(entries))


def _read(kube: Kube, md: ModelDeployment, field: str, ref: Any) -> dict[str, Any]:
    kind = "ClusterAnalysisTemplate" if ref.cluster_scope else "AnalysisTemplate"
    namespace = None if ref.cluster_scope else md.metadata.namespace
    where = "" if ref.cluster_scope else f" in namespace {namespace}"
    obj = kube.get(GROUP_VERSION, kind, ref.name, namespace)
    if obj is None:
        raise TemplateError(f"{field}: {kind} {ref.name} not found{where}")
    try:
        template = AnalysisTemplateSpec.model_validate(obj.get("spec") or {})
    except ValidationError as exc:
        raise TemplateError(f"{field}: {kind} {ref.name} does not validate: {exc.errors()[0].get('msg')}") from exc
    args = arg_values(template, ref, field)
    meta = obj.get("metadata") or {}
    return {
        "field": field,
        "ref": ref.to_dict(),
        "kind": kind,
        "resourceVersion": meta.get("resourceVersion"),
        "generation": meta.get("generation"),
        "args": args or None,
        "metrics": [render_metric(m, args).to_dict() for m in template.metrics],
    }


def record(resolved: Resolved, old: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
    """status.analysisTemplates after this pass: the entries, tagged with the rollout they belong to (None: none)."""
    if not resolved.entries or status.get("phase") not in IN_ROLLOUT or not status.get("canaryVersion"):
        return None
    version, started = status["canaryVersion"], status.get("rolloutStartedAt")
    previous = old.get(STATUS_FIELD) or {}
    if previous.get("version") == version and previous.get("rolloutStartedAt") == started and previous.get("message"):
        message = previous["message"]
    else:
        names = ", ".join(sorted({e["ref"]["name"] for e in resolved.entries}))
        message = (
            f"templates {names} resolved when the rollout of v{version} started: this rollout keeps these "
            "metrics; a template changed meanwhile applies from the next rollout"
        )
    return {"version": version, "rolloutStartedAt": started, "message": message, "templates": list(resolved.entries)}
