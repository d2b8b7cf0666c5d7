"""`slipway plan`: what a (changed) ModelDeployment would do — version, steps, traffic, children — without doing it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from slipway.api.modeldeployment import Approval, ModelDeployment
from slipway.builders.router import router_for
from slipway.rollout.approval import by_whom, given
from slipway.rollout.budget import replica_budget, shares
from slipway.rollout.requirements import Verdict
from slipway.rollout.state import Decision, RolloutState


@dataclass
class Plan:
    """The outcome of planning: what would be served, how traffic would move, which children would exist."""

    invalid: str | None = None
    stable: str | None = None
    target: str | None = None
    waiting: str = ""
    traffic: list[tuple[str, str]] = field(default_factory=list)
    children: list[dict[str, Any]] = field(default_factory=list)
    requirements: str | None = None
    """The requirements' verdict on the tracked version (None: the spec declares none)."""
    requirements_met: bool = True
    budget: list[tuple[str, str]] = field(default_factory=list)
    """With a canary budget: each weight and the replicas each version may have there."""


def budget_split(md: ModelDeployment, stable: str | None, target: str) -> list[tuple[str, str]]:
    """With strategy.canary.budget: the replica split at rest, at each setWeight, and after promotion."""
    total = replica_budget(md.spec)
    canary = md.spec.strategy.canary
    if total is None or canary is None or stable is None or stable == target:
        return []

    def line(state: RolloutState) -> str:
        got = shares(total, state)
        return " · ".join(f"v{v} {n}" for v, n in sorted(got.items(), key=lambda kv: int(kv[0]))) + f" (of {total})"

    rows = [("now", line(RolloutState(phase="Succeeded", stable_version=stable)))]
    weights = [0] + [s.set_weight for s in canary.steps if s.set_weight is not None]
    for w in weights:
        state = RolloutState(phase="Progressing", stable_version=stable, canary_version=target, canary_weight=w)
        rows.append((f"weight {w}%", line(state)))
    rows.append(("promoted", line(RolloutState(phase="Succeeded", stable_version=target))))
    back = RolloutState(phase="RollingBack", stable_version=stable, canary_version=target)
    rows.append(("rollback", line(back) + f"; v{stable} first, v{target} removed"))
    return rows


def _split(stable: str | None, target: str, weight: int) -> str:
    if stable is None or stable == target:
        return f"v{target} 100%"
    return f"v{stable} {100 - weight}% · v{target} {weight}%"


def _approval(approval: Approval, target: str, tags: dict[str, str] | None) -> str:
    """An approval step: the tag it waits for, and whether the target version carries it already."""
    want = f"{approval.tag}={approval.value}" if approval.value is not None else f"{approval.tag} set"
    if given(approval, tags):
        return f"approval (MLflow tag {want}): already {by_whom(approval, tags, target)}"
    return f"until approved (MLflow tag {want} on v{target}) or promoted"


def traffic_steps(
    md: ModelDeployment, stable: str | None, target: str, tags: dict[str, str] | None = None
) -> list[tuple[str, str]]:
    """Each step of the strategy with the traffic split it leaves behind (``tags``: the target version's)."""
    strategy = md.spec.strategy
    if stable is None or stable == target:
        return [("first version" if stable is None else "no change", f"v{target} 100%")]
    steps: list[tuple[str, str]] = []
    if strategy.canary is not None:
        weight = 0
        for i, step in enumerate(strategy.canary.steps):
            if step.set_weight is not None:
                weight = step.set_weight
                what = f"{i}: setWeight {weight} (once v{target} is ready)"
            elif step.pause is not None and step.pause.until_approved is not None:
                what = f"{i}: pause {_approval(step.pause.until_approved, target, tags)}"
            elif step.pause is not None:
                what = f"{i}: pause {step.pause.duration}" if step.pause.duration else f"{i}: pause until promoted"
            elif step.analysis is not None:
                what = f"{i}: analysis (failures above failureLimit roll back; no data waits)"
            elif step.mirror is not None:
                what = f"{i}: mirror {step.mirror.percent}% to v{target}"
            else:
                what = f"{i}: {step}"
            steps.append((what, _split(stable, target, weight)))
        steps.append(("promote", f"v{target} 100% (v{stable} kept for the scale-down delay)"))
    elif strategy.blue_green is not None:
        bg = strategy.blue_green
        steps.append((f"preview v{target} at full size", _split(stable, target, 0)))
        if bg.shadow is not None:
            shadow = f"shadow: mirror {bg.shadow.percent}% to v{target} for {bg.shadow.duration} (until the switch)"
            steps.append((shadow, _split(stable, target, 0)))
        if bg.pre_promotion_analysis is not None:
            steps.append(("pre-promotion analysis", _split(stable, target, 0)))
        if bg.approval is not None:
            steps.append((f"wait {_approval(bg.approval, target, tags)}", _split(stable, target, 0)))
        when = f"after {bg.auto_promotion_seconds}s" if bg.auto_promotion_seconds else "when promoted"
        if bg.approval is not None and not bg.auto_promotion_seconds:
            when = "when approved or promoted"
        steps.append((f"switch {when}, in one route write", f"v{target} 100%"))
        steps.append((f"remove v{stable} after {bg.scale_down_delay_seconds}s", f"v{target} 100%"))
    elif strategy.ab_test is not None:
        ab = strategy.ab_test
        steps.append((f"B v{target} ready (A is v{stable})", _split(stable, target, 0)))
        if ab.shadow is not None:
            steps.append(
                (
                    f"shadow: mirror {ab.shadow.percent}% to v{target} for {ab.shadow.duration}",
                    _split(stable, target, 0),
                )
            )
        matches = f" + {len(ab.match)} header/cookie match(es) to v{target}" if ab.match else ""
        steps.append((f"A/B test for {ab.duration}", _split(stable, target, ab.weight or 0) + matches))
        if ab.criterion is not None:
            c = ab.criterion
            decide = f"{c.goal} {c.metric}: B promoted if better by {c.min_improvement:.0%}+, else A kept"
        elif ab.approval is not None:
            decide = f"compare, then wait {_approval(ab.approval, target, tags)} (B), or abort (A)"
        else:
            decide = "compare, then wait for promote (B) or abort (A)"
        steps.append((decide, f"v{target} 100% or v{stable} 100%"))
    return steps


def first_state(stable: str | None, target: str) -> RolloutState:
    """The state the rollout's first pass decides: the target alone, or beside the stable version at weight 0."""
    if stable is None or stable == target:
        return RolloutState(phase="Succeeded", stable_version=target)
    return RolloutState(
        phase="Progressing", stable_version=stable, canary_version=target, canary_weight=0, current_step=0
    )


def children(md: ModelDeployment, uris: dict[str, str], stable: str | None, target: str) -> list[dict[str, Any]]:
    """The manifests the operator's pass would apply first (its router's children), version → storageUri."""
    return router_for(md.spec).children(md, Decision(first_state(stable, target)), uris)


def plan(
    md: ModelDeployment,
    invalid: str | None,
    stable: str | None,
    target: str | None,
    waiting: str,
    storage_uris: dict[str, str],
    verdict: Verdict | None = None,
    tags: dict[str, str] | None = None,
) -> Plan:
    """Put the pieces together (pure): the caller resolved the versions and judged the requirements.

    ``tags``: the tracked version's MLflow tags (an approval step says whether they approve already).
    """
    result = Plan(invalid=invalid, stable=stable, target=target, waiting=waiting)
    if verdict is not None:
        result.requirements, result.requirements_met = verdict.message, verdict.met
    if invalid or target is None:
        return result
    result.budget = budget_split(md, stable, target)
    result.traffic = traffic_steps(md, stable, target, tags)
    live = {v: storage_uris.get(v, "<unresolved>") for v in {stable, target} if v is not None}
    result.children = children(md, live, stable, target)
    return result
