"""Shared building blocks of the API: base model, CEL rules, durations, quantities, conditions."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel, to_snake

from .names import API_VERSION as API_VERSION
from .names import GROUP as GROUP
from .names import VERSION as VERSION

CATEGORY = "slipway"

DURATION_PATTERN = r"^([0-9]{1,7}(ms|s|m|h))+$"  # at most 7 digits a part: no date arithmetic overflows
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
DNS_LABEL_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
MLFLOW_NAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9._-]*[A-Za-z0-9])?$"
MLFLOW_ALIAS_PATTERN = r"^[A-Za-z0-9_-]+$"
VERSION_PATTERN = r"^[1-9][0-9]*$"
LABEL_VALUE_PATTERN = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

_DURATION_PART = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}

M = TypeVar("M", bound="ApiModel")


@dataclass(frozen=True)
class Rule:
    """One CEL rule for `x-kubernetes-validations`, optionally with a Python twin.

    ``rule`` and ``message`` go to the API server as they are; ``field_path`` (a JSON path
    relative to the object the rule sits on, e.g. ``.min``) makes the server report the error
    on that field. ``check``, when given, is the same rule in Python: the models run it on
    validation so that code building objects gets the error before the API server does.
    Transition rules (using ``oldSelf``) have no twin.
    """

    rule: str
    message: str
    field_path: str | None = None
    reason: str | None = None
    check: Callable[[Any], bool] | None = field(default=None, compare=False)

    def to_schema(self) -> dict[str, Any]:
        """The rule as one entry of `x-kubernetes-validations`."""
        out: dict[str, Any] = {"rule": self.rule, "message": self.message}
        if self.field_path is not None:
            out["fieldPath"] = self.field_path
        if self.reason is not None:
            out["reason"] = self.reason
        return out


def _inject_rules(schema: dict[str, Any], cls: type[Any]) -> None:
    """Pydantic `json_schema_extra` hook: put a model's CEL rules into its JSON schema."""
    rules: Sequence[Rule] = getattr(cls, "cel_rules", ())
    if rules:
        schema["x-kubernetes-validations"] = [r.to_schema() for r in rules]


class ApiModel(BaseModel):
    """Base of every API model: camelCase on the wire, unknown fields refused, CEL twins run."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
        json_schema_extra=_inject_rules,
    )

    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _run_cel_twins(self) -> Self:
        for rule in type(self).cel_rules:
            if rule.check is not None and not rule.check(self):
                raise ValueError(rule.message)
        for name, info in type(self).model_fields.items():
            extra = info.json_schema_extra
            value = getattr(self, name)
            if isinstance(extra, dict) and isinstance(value, list):
                check_list_type(info.alias or name, extra, value)
        return self

    def to_dict(self) -> dict[str, Any]:
        """The object as Kubernetes stores it: camelCase keys, unset fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def check_list_type(name: str, extra: dict[str, Any], items: list[Any]) -> None:
    """The Python twin of `x-kubernetes-list-type` set/map: no duplicate items or keys."""
    kind = extra.get("x-kubernetes-list-type")
    if kind == "set":
        keys: list[Any] = list(items)
    elif kind == "map":
        fields = [to_snake(k) for k in extra["x-kubernetes-list-map-keys"]]
        keys = [tuple(getattr(item, f) for f in fields) for item in items]
    else:
        return
    if len(keys) != len(set(keys)):
        raise ValueError(f"{name}: duplicate entries")


def cel(*rules: Rule) -> Callable[[type[M]], type[M]]:
    """Class decorator: attach CEL rules (and their Python twins) to a model."""

    def apply(cls: type[M]) -> type[M]:
        cls.cel_rules = (*cls.cel_rules, *rules)
        return cls

    return apply


def _is_set(model: BaseModel, name: str) -> bool:
    return getattr(model, name) is not None


def _wire(name: str) -> str:
    return to_camel(name)


def _join(names: Sequence[str], last: str) -> str:
    if len(names) == 1:
        return names[0]
    return ", ".join(names[:-1]) + f" {last} " + names[-1]


def exactly_one(*names: str, prefix: str = "") -> Rule:
    """A rule that exactly one of the given (snake_case) fields is set."""
    wire = [_wire(n) for n in names]
    expr = " + ".join(f"(has(self.{w}) ? 1 : 0)" for w in wire) + " == 1"
    shown = [f"{prefix}{w}" for w in wire]
    return Rule(
        rule=expr,
        message=f"set exactly one of {_join(shown, 'or')}",
        check=lambda m: sum(_is_set(m, n) for n in names) == 1,
    )


def at_least_one(*names: str, prefix: str = "") -> Rule:
    """A rule that at least one of the given (snake_case) fields is set."""
    wire = [_wire(n) for n in names]
    shown = [f"{prefix}{w}" for w in wire]
    return Rule(
        rule=" || ".join(f"has(self.{w})" for w in wire),
        message=f"set at least one of {_join(shown, 'or')}",
        check=lambda m: any(_is_set(m, n) for n in names),
    )


def ordered_bounds(low: str = "min", high: str = "max") -> Rule:
    """A rule that, when both bounds are set, the lower is not above the higher."""

    def check(m: BaseModel) -> bool:
        lo, hi = getattr(m, low), getattr(m, high)
        return lo is None or hi is None or lo <= hi

    return Rule(
        rule=f"!has(self.{low}) || !has(self.{high}) || self.{low} <= self.{high}",
        message=f"{low} must be less than or equal to {high}",
        field_path=f".{low}",
        check=check,
    )


def parse_duration(text: str) -> timedelta:
    """Parse a duration such as ``90s``, ``5m``, ``1h30m`` or ``250ms`` into a timedelta."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"not a duration: {text!r} (use e.g. 30s, 5m, 1h30m, 250ms)")
    seconds = sum(int(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART.findall(text))
    return timedelta(seconds=seconds)


Duration = Annotated[str, Field(pattern=DURATION_PATTERN, max_length=32)]
"""A duration: digits followed by ms, s, m or h, repeated (``30s``, ``5m``, ``1h30m``)."""

Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=QUANTITY_PATTERN, max_length=64)]
"""A Kubernetes resource quantity (``500m``, ``2Gi``, ``1``), as an integer or a string."""

VersionNumber = Annotated[int, Field(ge=1)] | Annotated[str, Field(pattern=VERSION_PATTERN, max_length=10)]
"""An MLflow model version number, as an integer (``7``) or a string (``"7"``)."""

ModelName = Annotated[str, Field(pattern=MLFLOW_NAME_PATTERN, min_length=1, max_length=128)]
"""An MLflow registered-model name."""

AliasName = Annotated[str, Field(pattern=MLFLOW_ALIAS_PATTERN, min_length=1, max_length=63)]
"""An MLflow model alias."""

ShortText = Annotated[str, Field(max_length=253)]
"""A name-like string: a label value, a node-selector value, an alert name."""

Text = Annotated[str, Field(max_length=4096)]
"""A free-form string such as a command argument or a parameter value."""

Stage = Literal["None", "Staging", "Production", "Archived"]
"""An MLflow model-version stage."""


def version_str(version: int | str) -> str:
    """A version number as MLflow spells it (always a string)."""
    return str(version)


def alias_ok(alias: str | None) -> bool:
    """Whether an alias is allowed: MLflow reserves ``latest`` and ``v<digits>``."""
    return alias is None or (alias != "latest" and not re.fullmatch(r"[vV][0-9]+", alias))


def alias_rule(name: str = "alias") -> Rule:
    """The rule that an alias is not one MLflow reserves."""
    return Rule(
        rule=(f"!has(self.{name}) || (self.{name} != 'latest' && !self.{name}.matches('^[vV][0-9]+$'))"),
        message=f"{name} must not be 'latest' or 'v<number>': MLflow reserves them",
        field_path=f".{name}",
        check=lambda m: alias_ok(getattr(m, name)),
    )


class ObjectMeta(BaseModel):
    """The parts of Kubernetes object metadata the operator reads; the rest is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = Field(None, description="Name of the object, unique in its namespace.")
    namespace: str | None = Field(None, description="Namespace of the object.")
    labels: dict[str, str] | None = Field(None, description="Labels.")
    annotations: dict[str, str] | None = Field(None, description="Annotations.")
    uid: str | None = Field(None, description="Unique id set by the API server.")
    generation: int | None = Field(None, description="Spec generation set by the API server.")
    resource_version: str | None = Field(None, description="Version for optimistic locking.")


class ResourceRequirements(ApiModel):
    """Compute resources of a container, as in a Pod: requests and limits by resource name.

    Extended resources work as in a Pod, e.g. ``nvidia.com/gpu: 1`` under ``limits``.
    """

    requests: dict[str, Quantity] | None = Field(
        None,
        max_length=16,
        description="Minimum resources reserved, e.g. cpu: 500m, memory: 1Gi.",
    )
    limits: dict[str, Quantity] | None = Field(
        None,
        max_length=16,
        description="Maximum resources allowed, e.g. memory: 2Gi, nvidia.com/gpu: 1.",
    )


class Toleration(ApiModel):
    """A Pod toleration, e.g. to schedule onto tainted GPU nodes."""

    key: str | None = Field(None, max_length=316, description="Taint key; empty matches all keys.")
    operator: Literal["Exists", "Equal"] = Field("Equal", description="Exists matches any value; Equal matches value.")
    value: str | None = Field(None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        None, ge=0, description="For NoExecute: how long the pod stays bound after the taint."
    )


class EnvVar(ApiModel):
    """An environment variable for the container."""

    name: str = Field(pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$", max_length=128, description="Variable name.")
    value: str = Field("", max_length=4096, description="Variable value.")


class Condition(ApiModel):
    """A status condition, as metav1.Condition."""

    type: str = Field(
        pattern=CONDITION_TYPE_PATTERN,
        max_length=316,
        description="Type of condition in CamelCase, e.g. Ready, Registered, InvalidSpec.",
    )
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    observed_generation: int | None = Field(None, ge=0, description="metadata.generation the condition was set for.")
    last_transition_time: datetime = Field(description="When the condition last changed from one status to another.")
    reason: str = Field(
        pattern=CONDITION_REASON_PATTERN,
        min_length=1,
        max_length=1024,
        description="Machine-readable CamelCase reason for the last transition.",
    )
    message: str = Field("", max_length=32768, description="Human-readable details.")


CONDITIONS_EXTRA: dict[str, Any] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}


@dataclass(frozen=True)
class PrinterColumn:
    """One `kubectl get` column of a CRD."""

    name: str
    json_path: str
    type: Literal["string", "integer", "number", "boolean", "date"] = "string"
    description: str = ""
    priority: int = 0

    def to_crd(self) -> dict[str, Any]:
        """The column as an `additionalPrinterColumns` entry."""
        out: dict[str, Any] = {"name": self.name, "type": self.type, "jsonPath": self.json_path}
        if self.description:
            out["description"] = self.description
        if self.priority:
            out["priority"] = self.priority
        return out


AGE_COLUMN = PrinterColumn("Age", ".metadata.creationTimestamp", "date", "Time since creation.")


@dataclass(frozen=True)
class KindInfo:
    """Everything the CRD generator needs to know about one kind besides its models."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    description: str
    resource: type[ApiModel]
    spec: type[ApiModel]
    status: type[BaseModel] | None
    """None: the kind has no status (nor status subresource)."""
    columns: tuple[PrinterColumn, ...]
    spec_rules: tuple[Rule, ...] = ()
    """Rules on spec that have no place on the spec model: transition rules (``oldSelf``)."""
    scope: Literal["Namespaced", "Cluster"] = "Namespaced"

    @property
    def singular(self) -> str:
        """Lower-case singular name."""
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        """Name of the CustomResourceDefinition object."""
        return f"{self.plural}.{GROUP}"


def name_rule(max_length: int, why: str) -> Rule:
    """A root rule on metadata.name: a DNS-1035 label of at most ``max_length`` characters."""

    def check(resource: Any) -> bool:
        name = resource.metadata.name
        return name is None or (
            len(name) <= max_length and re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) is not None
        )

    return Rule(
        rule=(
            f"self.metadata.name.size() <= {max_length} && self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')"
        ),
        message=(
            f"metadata.name must be a DNS-1035 label (lower-case letters, digits, '-', starting "
            f"with a letter) of at most {max_length} characters: {why}"
        ),
        field_path=".metadata.name",
        check=check,
    )


IMMUTABLE_SPEC = Rule(rule="self == oldSelf", message="spec is immutable")
