"""The tenancy policy: open by default, globs per namespace, a namespace no rule names may use nothing."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from slipway.settings import Settings
from slipway.tenancy import Tenancy

RULES = [
    {"namespaces": ["team-a", "team-a-*"], "models": ["team-a.*", "shared-?"], "experiments": ["team-a/*"]},
    {"namespaces": ["platform"], "models": ["*"], "experiments": ["*"]},
]


def test_an_empty_policy_is_open() -> None:
    t = Settings.from_env({}).tenancy
    assert t.open and t.allows_model("anyone", "any.model") and t.allows_experiment("anyone", "x")
    assert t.forbids_model("anyone", "m", "spec.model.name") is None


def test_globs_per_namespace() -> None:
    t = Tenancy.parse(json.dumps(RULES))
    assert t.allows_model("team-a", "team-a.digits") and t.allows_model("team-a-dev", "shared-1")
    assert not t.allows_model("team-a", "team-b.digits")
    assert not t.allows_model("team-a", "shared-10")
    assert t.allows_experiment("team-a-dev", "team-a/exp") and not t.allows_experiment("team-a", "team-b/exp")
    assert t.allows_model("platform", "team-b.digits")
    assert not t.allows_model("team-b", "team-b.digits"), "a namespace no rule names may use nothing"
    why = t.forbids_model("team-a", "team-b.digits", "spec.model.name")
    assert why is not None and "spec.model.name" in why and "'team-b.digits'" in why and "team-a" in why


def test_from_the_environment_as_the_chart_writes_it() -> None:
    t = Settings.from_env({"SLIPWAY_TENANCY": json.dumps(RULES)}).tenancy
    assert not t.open and len(t.rules) == 2
    assert Tenancy.parse(json.dumps({"rules": RULES})) == t


def test_a_malformed_policy_stops_the_operator_at_start() -> None:
    with pytest.raises(ValidationError):
        Tenancy.parse(json.dumps([{"models": ["x"]}]))  # no namespaces
    with pytest.raises(ValidationError):
        Tenancy.parse(json.dumps([{"namespaces": ["a"], "modles": ["x"]}]))
