"""Promotion requirements: does a version meet a ModelDeployment's spec.requirements? A pure function."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from slipway.api.common import parse_duration
from slipway.api.requirements import Requirements


@dataclass(frozen=True)
class VersionFacts:
    """What is known of one model version (None: unknown, e.g. the MLmodel could not be read)."""

    version: str
    tags: Mapping[str, str] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    registered_at: datetime | None = None
    has_signature: bool | None = None
    training_run: str | None = None
    """namespace/name of the TrainingRun that registered it (its slipway.trainingrun tag)."""
    training_gates_passed: bool | None = None
    """Whether that TrainingRun's gates all passed and it registered this version (None: not found)."""


@dataclass(frozen=True)
class Failure:
    """One requirement the version does not meet."""

    requirement: str
    """Which: metrics.<name>, tags.<key>, signature, trainingRunGate or minAge."""
    message: str
    retry_after: float | None = None
    """Seconds until it will hold by itself (minAge), else None."""


@dataclass(frozen=True)
class Verdict:
    """The version and the requirements it fails (none: it may be rolled out)."""

    version: str
    failures: tuple[Failure, ...] = ()

    @property
    def met(self) -> bool:
        """Whether every requirement holds."""
        return not self.failures

    @property
    def message(self) -> str:
        """One line for the condition and the event."""
        if self.met:
            return f"version {self.version} meets the requirements"
        why = "; ".join(f.message for f in self.failures)
        return f"version {self.version} is not rolled out: {why}"

    @property
    def retry_after(self) -> float | None:
        """When to look again because a requirement will hold by itself (the soonest), else None."""
        waits = [f.retry_after for f in self.failures if f.retry_after is not None]
        return min(waits) if waits else None


def _metric(name: str, low: float | None, high: float | None, metrics: Mapping[str, float]) -> Failure | None:
    value = metrics.get(name)
    if value is None or not math.isfinite(value):
        return Failure(f"metrics.{name}", f"metric {name} was not logged by the version's run")
    if low is not None and value < low:
        return Failure(f"metrics.{name}", f"metric {name}={value:.4g} < min {low:g}")
    if high is not None and value > high:
        return Failure(f"metrics.{name}", f"metric {name}={value:.4g} > max {high:g}")
    return None


def evaluate(requirements: Requirements | None, facts: VersionFacts, now: datetime) -> Verdict:
    """Check each requirement in turn (metrics, tags, signature, trainingRunGate, minAge); all failures listed."""
    failures: list[Failure] = []
    if requirements is None:
        return Verdict(facts.version)
    for gate in requirements.metrics or []:
        failure = _metric(gate.metric, gate.min, gate.max, facts.metrics)
        if failure is not None:
            failures.append(failure)
    for tag in requirements.tags or []:
        have = facts.tags.get(tag.key)
        if have is None:
            want = f" (want {tag.value})" if tag.value is not None else ""
            failures.append(Failure(f"tags.{tag.key}", f"tag {tag.key} is missing{want}"))
        elif tag.value is not None and have != tag.value:
            failures.append(Failure(f"tags.{tag.key}", f"tag {tag.key} is {have!r}, not {tag.value!r}"))
    if requirements.signature and facts.has_signature is not True:
        why = "has no input signature" if facts.has_signature is False else "signature could not be read yet"
        failures.append(Failure("signature", f"the logged model {why}"))
    if requirements.training_run_gate and facts.training_gates_passed is not True:
        if facts.training_run is None:
            why = "was not registered by a TrainingRun"
        elif facts.training_gates_passed is None:
            why = f"TrainingRun {facts.training_run} that registered it is not found"
        else:
            why = f"TrainingRun {facts.training_run} did not pass its gates for it"
        failures.append(Failure("trainingRunGate", f"the version {why}"))
    if requirements.min_age is not None:
        need = parse_duration(requirements.min_age).total_seconds()
        if facts.registered_at is None:
            failures.append(Failure("minAge", "the registration time is unknown"))
        else:
            age = (now - facts.registered_at).total_seconds()
            if age < need:
                failures.append(
                    Failure("minAge", f"registered {age:.0f}s ago, minAge {requirements.min_age}", need - age)
                )
    return Verdict(facts.version, tuple(failures))
