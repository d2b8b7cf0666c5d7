"""Promotion requirements: what a model version must show before a ModelDeployment rolls it out."""

from __future__ import annotations

from pydantic import Field

from .common import ApiModel, Duration, Rule, ShortText, cel
from .trainingrun import Gate

TAG_KEY_PATTERN = r"^[A-Za-z0-9_.\-/ ]+$"


class TagRequirement(ApiModel):
    """A tag the MLflow model version must carry: present, or equal to a value."""

    key: str = Field(
        min_length=1, max_length=250, pattern=TAG_KEY_PATTERN, description="Tag key, e.g. validation_status."
    )
    value: ShortText | None = Field(None, description="Required value, e.g. approved. Unset: the tag must be present.")


def _unique_metrics(r: Requirements) -> bool:
    names = [m.metric for m in r.metrics or []]
    return len(names) == len(set(names))


def _unique_tags(r: Requirements) -> bool:
    keys = [t.key for t in r.tags or []]
    return len(keys) == len(set(keys))


@cel(
    Rule(
        rule="!has(self.metrics) || self.metrics.all(m, self.metrics.filter(n, n.metric == m.metric).size() == 1)",
        message="requirements.metrics must name each metric at most once",
        field_path=".metrics",
        check=_unique_metrics,
    ),
    Rule(
        rule="!has(self.tags) || self.tags.all(t, self.tags.filter(u, u.key == t.key).size() == 1)",
        message="requirements.tags must name each key at most once",
        field_path=".tags",
        check=_unique_tags,
    ),
)
class Requirements(ApiModel):
    """What the version must show before it is rolled out, whoever moved the alias (all must hold).

    A version that fails them is not rolled out: the stable version keeps serving, the
    RequirementsMet condition and a RequirementsNotMet event name the requirement that failed,
    and the rollout starts by itself once the version meets them (e.g. a tag added in MLflow).
    """

    metrics: list[Gate] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Final metrics of the version's run that must lie within bounds, e.g. accuracy min 0.97.",
    )
    tags: list[TagRequirement] | None = Field(
        None,
        min_length=1,
        max_length=16,
        description="Tags the model version must carry, e.g. validation_status=approved.",
    )
    signature: bool = Field(False, description="The version's logged model must declare an input signature.")
    training_run_gate: bool = Field(
        False,
        description=(
            "The version must have been registered by a TrainingRun whose metric gates passed "
            "(the TrainingRun named by the version's slipway.trainingrun tag, in this cluster)."
        ),
    )
    min_age: Duration | None = Field(
        None, description="The version must have been registered at least this long ago, e.g. 1h."
    )
