"""Canaries inside a budget: split one replica budget between the live versions by weight. Pure functions.

The budget ``B`` (``strategy.canary.budget``) is ``maxReplicas + maxSurgeReplicas`` replicas, or
``gpus // GPUs per replica``. While a canary runs at weight ``w``, its share is
``ceil(B * w / 100)`` kept within ``1 .. B - 1``, and stable gets the rest; while Promoting, the
old version keeps one replica for the instant switch-back; at rest, stable gets it all (never
more than ``maxReplicas``). A rollback gives stable the whole budget at once.

A share is a target: a version's upper bound never exceeds ``B`` minus the pods the other
versions hold right now (terminating ones included), so the total of running pods never exceeds
the budget — stable shrinks first, then the canary grows into what it gave back on a later pass
(and the other way round on a rollback). A bound of 0 means "not yet": a version that has no
children yet is not created until it fits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from slipway.api.modeldeployment import ModelDeploymentSpec

from .state import RolloutState, desired_versions

GPU = "nvidia.com/gpu"
MAX_BUDGET_FACTOR = 2
"""A GPU budget is capped at this many times maxReplicas (the versions together)."""


@dataclass(frozen=True)
class Bounds:
    """HPA (and InferenceService) replica bounds of one version; max 0: do not create it yet."""

    min: int
    max: int


@dataclass(frozen=True)
class Split:
    """The budget, each live version's target share and the bounds it may have now."""

    total: int
    shares: Mapping[str, int]
    bounds: Mapping[str, Bounds]

    @property
    def settled(self) -> bool:
        """Whether every version has its whole share (else a pass should come back soon)."""
        return all(self.bounds[v].max >= s for v, s in self.shares.items())


def gpus_per_replica(spec: ModelDeploymentSpec) -> int | None:
    """nvidia.com/gpu each predictor asks for (limits, else requests); None when it asks for none."""
    resources = spec.serving.resources
    if resources is None:
        return None
    for part in (resources.limits, resources.requests):
        value = (part or {}).get(GPU)
        if value is not None:
            try:
                count = int(str(value))
            except ValueError:
                return None
            return count if count > 0 else None
    return None


def replica_budget(spec: ModelDeploymentSpec) -> int | None:
    """Replicas the versions may run together (None: no budget declared, or one that cannot be read)."""
    canary = spec.strategy.canary
    budget = canary.budget if canary is not None else None
    if budget is None:
        return None
    scaling = spec.autoscaling
    if budget.max_surge_replicas is not None:
        return scaling.max_replicas + budget.max_surge_replicas
    per = gpus_per_replica(spec)
    if per is None or budget.gpus is None:
        return None
    return min(budget.gpus // per, MAX_BUDGET_FACTOR * scaling.max_replicas)


def unsplittable(spec: ModelDeploymentSpec) -> str | None:
    """Why a declared budget cannot be honoured (None: it can, or there is none)."""
    canary = spec.strategy.canary
    if canary is None or canary.budget is None:
        return None
    if canary.budget.gpus is not None and gpus_per_replica(spec) is None:
        return f"strategy.canary.budget.gpus needs serving.resources to ask for {GPU} per replica"
    total = replica_budget(spec)
    if total is None or total < 2:
        return f"strategy.canary.budget allows {total or 0} replica(s): a canary needs at least 2 (one per version)"
    return None


def shares(total: int, state: RolloutState) -> dict[str, int]:
    """Each live version's target share of ``total`` replicas in this state."""
    live = desired_versions(state)
    stable, canary, previous = state.stable_version, state.canary_version, state.previous_version
    out: dict[str, int] = {}
    if state.phase == "RollingBack" and stable is not None:
        out[stable] = total  # stable's bounds come back first
        for v in live - {stable}:
            out[v] = 0
        return out
    if canary is not None and canary in live and stable is not None and canary != stable:
        share = min(max(math.ceil(total * state.canary_weight / 100), 1), total - 1)
        return {stable: total - share, canary: share}
    if previous is not None and previous in live and stable is not None and previous != stable:
        return {stable: total - 1, previous: 1}
    return {v: total for v in live}


def split(spec: ModelDeploymentSpec, state: RolloutState, pods: Mapping[str, int]) -> Split | None:
    """Bounds per live version for this state, given the pods each version holds now (None: no budget)."""
    total = replica_budget(spec)
    if total is None:
        return None
    scaling = spec.autoscaling
    targets = shares(total, state)
    bounds: dict[str, Bounds] = {}
    for version, share in targets.items():
        others = sum(n for v, n in pods.items() if v != version)
        high = min(share, total - others, scaling.max_replicas)
        if pods.get(version, 0) > 0:
            high = max(high, 1)  # a version with pods keeps one (an HPA cannot go below one)
        high = max(high, 0)
        bounds[version] = Bounds(min=min(scaling.min_replicas, high), max=high)
    return Split(total, {v: min(s, scaling.max_replicas) for v, s in targets.items()}, bounds)
