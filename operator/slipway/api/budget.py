"""A canary's replica budget: stable and canary share one budget of replicas (or GPUs) by weight."""

from __future__ import annotations

from pydantic import Field

from .common import ApiModel, cel, exactly_one


@cel(exactly_one("max_surge_replicas", "gpus", prefix="budget."))
class CanaryBudget(ApiModel):
    """One replica budget for stable and canary together, split by the canary's weight as the steps
    move: stable's HPA bounds shrink as the canary's grow, and the total never exceeds the budget
    (a version grows only into replicas the other has already given back). A rollback gives stable
    its bounds back first. Exactly one of maxSurgeReplicas or gpus."""

    max_surge_replicas: int | None = Field(
        None,
        ge=0,
        le=1000,
        description=(
            "Replicas the versions together may run above autoscaling.maxReplicas; 0: a canary never "
            "adds a replica (budget = maxReplicas)."
        ),
    )
    gpus: int | None = Field(
        None,
        ge=1,
        le=100000,
        description=(
            "nvidia.com/gpu the versions may use together; each replica takes what serving.resources "
            "asks for (budget = gpus / GPUs per replica, at most 2 x maxReplicas)."
        ),
    )
