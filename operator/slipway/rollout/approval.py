"""Approvals in the model registry: which tag a rollout waits for, whether the candidate's tags satisfy it."""

from __future__ import annotations

from collections.abc import Mapping

from slipway.api.modeldeployment import Approval


def given(approval: Approval, tags: Mapping[str, str] | None) -> bool:
    """Whether the tags approve: the tag has the wanted value, or (no value wanted) any non-empty one."""
    value = (tags or {}).get(approval.tag)
    if not value:
        return False
    return approval.value is None or value == approval.value


def by_whom(approval: Approval, tags: Mapping[str, str] | None, version: str | None) -> str:
    """Who or what approved, for messages: the tag's value names the reviewer unless a value was required."""
    value = (tags or {}).get(approval.tag, "")
    if approval.value is None:
        return f"approved by {value} (tag {approval.tag} on v{version})"
    return f"approved: tag {approval.tag}={value} on v{version}"


def how_to(approval: Approval, model: str, version: str | None) -> str:
    """What the rollout waits for and how to give it."""
    want = f"{approval.tag}={approval.value}" if approval.value is not None else f"{approval.tag} (any value)"
    return (
        f"waiting for approval of v{version}: set the MLflow tag {want} on model {model} version {version}, "
        "or run `slipway promote`"
    )
