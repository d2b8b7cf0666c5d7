"""Turn a pydantic model's JSON schema into a Kubernetes structural OpenAPI v3 schema.

Pydantic writes JSON Schema 2020-12 with ``$defs``/``$ref``, ``anyOf [X, null]`` for optional
fields, ``const`` for one-value literals and numeric ``exclusiveMinimum``. Kubernetes wants a
structural schema: everything inlined, a ``type`` on every node, no ``anyOf`` except the
int-or-string pattern, OpenAPI 3.0 boolean exclusive bounds. This module does exactly that
translation and refuses anything it does not understand, so a model that cannot be expressed
as a CRD fails loudly at generation time instead of at install time.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

# Keys kept in the output, in the order they are written.
_KEY_ORDER = (
    "description",
    "type",
    "format",
    "enum",
    "default",
    "minimum",
    "exclusiveMinimum",
    "maximum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "pattern",
    "minItems",
    "maxItems",
    "minProperties",
    "maxProperties",
    "x-kubernetes-int-or-string",
    "anyOf",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-map-type",
    "x-kubernetes-preserve-unknown-fields",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "x-kubernetes-validations",
)
_DROPPED = frozenset({"title"})
_INT_OR_STRING_KEYS = frozenset(
    {
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "pattern",
        "minLength",
        "maxLength",
        "format",
    }
)


class SchemaError(ValueError):
    """A model uses a construct that has no structural-schema equivalent; fix the model."""


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, as Kubernetes accepts it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    return convert(raw, defs, where=model.__name__)


def convert(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    """Convert one JSON-schema node (and everything under it) to structural form."""
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").rsplit("/", 1)[-1]]
        return convert({**target, **node}, defs, where)
    if "allOf" in node:
        parts = node.pop("allOf")
        if len(parts) != 1:
            raise SchemaError(f"{where}: allOf with {len(parts)} parts")
        return convert({**parts[0], **node}, defs, where)
    if "anyOf" in node:
        return _convert_any_of(node, defs, where)
    for key in _DROPPED:
        node.pop(key, None)
    if node.get("default", 0) is None:
        del node["default"]
    if "const" in node:
        node["enum"] = [node.pop("const")]
    for bound, plain in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        if bound in node and not isinstance(node[bound], bool):
            node[plain] = node.pop(bound)
            node[bound] = True
    if "default" in node:
        node["default"] = _strip_none(node["default"])
    if "type" not in node and "x-kubernetes-int-or-string" not in node:
        raise SchemaError(f"{where}: no type in {sorted(node)}")
    if node.get("type") == "object":
        props = node.get("properties")
        if props is not None:
            node.pop("additionalProperties", None)
            node["properties"] = {name: convert(sub, defs, f"{where}.{name}") for name, sub in props.items()}
        elif isinstance(node.get("additionalProperties"), dict):
            node["additionalProperties"] = convert(node["additionalProperties"], defs, f"{where}[*]")
    if node.get("type") == "array":
        node["items"] = convert(node["items"], defs, f"{where}[]")
    if "uniqueItems" in node:
        raise SchemaError(f"{where}: uniqueItems is not allowed; use x-kubernetes-list-type: set")
    return _ordered(node, where)


def _convert_any_of(node: dict[str, Any], defs: dict[str, Any], where: str) -> dict[str, Any]:
    branches = [b for b in node.pop("anyOf") if b.get("type") != "null"]
    if len(branches) == 1:
        return convert({**branches[0], **node}, defs, where)
    types = sorted(b.get("type", "?") for b in branches)
    if types != ["integer", "string"]:
        raise SchemaError(f"{where}: anyOf of {types} is not structural (only int-or-string is)")
    for key in _DROPPED:
        node.pop(key, None)
    if node.get("default", 0) is None:
        del node["default"]
    for branch in branches:
        extra = set(branch) - _INT_OR_STRING_KEYS - {"type"} - _DROPPED
        if extra:
            raise SchemaError(f"{where}: int-or-string branch has {sorted(extra)}")
        for key in _INT_OR_STRING_KEYS & set(branch):
            node[key] = branch[key]
    node["x-kubernetes-int-or-string"] = True
    node["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    return _ordered(node, where)


def _strip_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_strip_none(v) for v in value]
    return copy.deepcopy(value)


def _ordered(node: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = set(node) - set(_KEY_ORDER)
    if unknown:
        raise SchemaError(f"{where}: unsupported schema keys {sorted(unknown)}")
    if "x-kubernetes-validations" in node:
        node["x-kubernetes-validations"] = [
            {k: rule[k] for k in ("rule", "message", "fieldPath", "reason") if k in rule}
            for rule in node["x-kubernetes-validations"]
        ]
    return {key: node[key] for key in _KEY_ORDER if key in node}


def walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every node of a structural schema with its dotted path (``[]`` for items, ``{}`` for
    map values), parents before children, in field order."""
    out = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        out += walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("additionalProperties"), dict):
        out += walk(schema["additionalProperties"], f"{path}{{}}")
    if "items" in schema:
        out += walk(schema["items"], f"{path}[]")
    return out
