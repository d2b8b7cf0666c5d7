"""The pydantic -> structural OpenAPI conversion, on small models."""

from __future__ import annotations

from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from slipway.api.common import ApiModel, Quantity, Rule, at_least_one, cel, exactly_one
from slipway.api.schema import SchemaError, structural_schema, walk


class Inner(ApiModel):
    """Inner docstring."""

    set_weight: int | None = Field(None, ge=0, le=100, description="A weight.")


@cel(at_least_one("inner", "other"))
class Outer(ApiModel):
    """Outer docstring."""

    inner: Inner | None = Field(None, description="Field text wins over the docstring.")
    other: Inner = Field(default=Inner(set_weight=3), description="With a model default.")
    kind: Literal["a"] = Field("a", description="One-value literal.")
    ratio: float = Field(0.5, gt=0, description="Exclusive bound.")
    size: Quantity = Field(1, description="Int or string.")
    names: list[Annotated[str, Field(max_length=8)]] = Field(default=[], max_length=4, description="Bounded list.")


def test_refs_and_optionals_are_inlined() -> None:
    schema = structural_schema(Outer)
    inner = schema["properties"]["inner"]
    assert inner["type"] == "object"
    assert inner["description"] == "Field text wins over the docstring."
    assert inner["properties"]["setWeight"] == {
        "description": "A weight.",
        "type": "integer",
        "minimum": 0,
        "maximum": 100,
    }
    for path, node in walk(schema):
        assert "$ref" not in node and "title" not in node, path


def test_defaults_drop_nulls() -> None:
    schema = structural_schema(Outer)
    assert schema["properties"]["other"]["default"] == {"setWeight": 3}
    assert schema["properties"]["names"]["default"] == []


def test_const_becomes_enum_and_bounds_become_openapi_3_0() -> None:
    props = structural_schema(Outer)["properties"]
    assert props["kind"]["enum"] == ["a"]
    assert props["ratio"]["minimum"] == 0 and props["ratio"]["exclusiveMinimum"] is True


def test_int_or_string() -> None:
    size = structural_schema(Outer)["properties"]["size"]
    assert size["x-kubernetes-int-or-string"] is True
    assert size["anyOf"] == [{"type": "integer"}, {"type": "string"}]
    assert "pattern" in size and size["maxLength"] == 64


def test_lists_keep_bounds() -> None:
    names = structural_schema(Outer)["properties"]["names"]
    assert names["maxItems"] == 4 and names["items"] == {"type": "string", "maxLength": 8}


def test_rules_come_from_the_decorator() -> None:
    rules = structural_schema(Outer)["x-kubernetes-validations"]
    assert rules == [{"rule": "has(self.inner) || has(self.other)", "message": "set at least one of inner or other"}]


def test_rule_twin_runs_in_python() -> None:
    @cel(exactly_one("a", "b"))
    class Pair(ApiModel):
        a: int | None = Field(None, description="a")
        b: int | None = Field(None, description="b")

    Pair(a=1)
    with pytest.raises(ValueError, match="exactly one of a or b"):
        Pair(a=1, b=2)
    with pytest.raises(ValueError, match="exactly one of a or b"):
        Pair()


def test_rule_without_twin_is_server_only() -> None:
    rule = Rule(rule="self == oldSelf", message="immutable")

    @cel(rule)
    class Frozen(ApiModel):
        x: int = Field(1, description="x")

    Frozen(x=2)
    assert structural_schema(Frozen)["x-kubernetes-validations"] == [rule.to_schema()]


def test_unsupported_unions_are_refused() -> None:
    class Bad(BaseModel):
        value: int | float = Field(1, description="not structural")

    with pytest.raises(SchemaError, match="not structural"):
        structural_schema(Bad)


def test_free_form_objects_are_refused() -> None:
    class Loose(BaseModel):
        anything: object = Field(None, description="no type")

    with pytest.raises(SchemaError, match="no type"):
        structural_schema(Loose)
