"""The tenancy policy: which namespaces may use which MLflow model names and experiments (globs); pure.

On a cluster shared by several teams, one MLflow server often serves them all. Without a policy a
TrainingRun in any namespace could register into (and move the alias of) any model, and a
ModelDeployment could follow any model. The policy lists rules; each names namespaces (globs)
and the model names and experiment names (globs) they may use. A namespace may use what any
rule matching it allows. An empty policy (the default) allows everything: a single-team install
behaves as before. Once a policy has rules, a namespace no rule names may use nothing.

Globs are :func:`fnmatch.fnmatchcase` patterns (``*``, ``?``, ``[seq]``), matched case-sensitively
against the namespace and the model or experiment name as written in the spec.
"""

from __future__ import annotations

import json
from fnmatch import fnmatchcase

from pydantic import BaseModel, ConfigDict, Field


class TenancyRule(BaseModel):
    """Namespaces (globs) and the models and experiments (globs) they may use."""

    model_config = ConfigDict(extra="forbid")

    namespaces: list[str] = Field(min_length=1, description="Namespaces this rule is for (globs).")
    models: list[str] = Field(default_factory=list, description="MLflow registered model names they may use (globs).")
    experiments: list[str] = Field(default_factory=list, description="MLflow experiment names they may log to (globs).")

    def covers(self, namespace: str) -> bool:
        """Whether this rule is for ``namespace``."""
        return any(fnmatchcase(namespace, glob) for glob in self.namespaces)


class Tenancy(BaseModel):
    """The whole policy: no rules means open (every namespace may use every model and experiment)."""

    model_config = ConfigDict(extra="forbid")

    rules: list[TenancyRule] = Field(default_factory=list)

    @classmethod
    def parse(cls, raw: str) -> Tenancy:
        """The policy from its JSON form (SLIPWAY_TENANCY: ``{"rules": [...]}`` or the bare list); "" is open."""
        if not raw.strip():
            return cls()
        data = json.loads(raw)
        return cls.model_validate({"rules": data} if isinstance(data, list) else data)

    @property
    def open(self) -> bool:
        """Whether everything is allowed."""
        return not self.rules

    def allows_model(self, namespace: str, model: str) -> bool:
        """Whether ``namespace`` may use the registered model ``model``."""
        return self.open or any(r.covers(namespace) and _any(model, r.models) for r in self.rules)

    def allows_experiment(self, namespace: str, experiment: str) -> bool:
        """Whether ``namespace`` may log to the experiment ``experiment``."""
        return self.open or any(r.covers(namespace) and _any(experiment, r.experiments) for r in self.rules)

    def forbids_model(self, namespace: str, model: str, field: str) -> str | None:
        """Why ``model`` (written in ``field``) is refused in ``namespace``; None if allowed."""
        if self.allows_model(namespace, model):
            return None
        return f"{field}: namespace {namespace} may not use MLflow model {model!r} (the operator's tenancy policy)"

    def forbids_experiment(self, namespace: str, experiment: str, field: str) -> str | None:
        """Why ``experiment`` (written in ``field``) is refused in ``namespace``; None if allowed."""
        if self.allows_experiment(namespace, experiment):
            return None
        return (
            f"{field}: namespace {namespace} may not use MLflow experiment {experiment!r} "
            "(the operator's tenancy policy)"
        )


def _any(name: str, globs: list[str]) -> bool:
    return any(fnmatchcase(name, glob) for glob in globs)
