"""Argo CD health checks and actions, run in Lua 5.1 (as Argo CD's gopher-lua) against their test data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from lupa import lua51

REPO = Path(__file__).resolve().parents[2]
CUSTOM = REPO / "argocd" / "resource_customizations" / "ml.slipway.dev"
sys.path.insert(0, str(REPO / "hack"))

import gen_argocd  # noqa: E402


def run_lua(script: Path, obj: dict[str, Any]) -> Any:
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    lua.globals().obj = lua.table_from(obj, recursive=True)
    return lua.execute(script.read_text())


def to_py(value: Any) -> Any:
    if lua51.lua_type(value) == "table":
        keys = list(value.keys())
        if keys and all(isinstance(k, int) for k in keys):
            return [to_py(value[k]) for k in sorted(keys)]
        return {k: to_py(v) for k, v in value.items()}
    return value


CASES = [
    (kind, case)
    for kind in ("ModelDeployment", "ModelVersion", "TrainingRun")
    for case in yaml.safe_load((CUSTOM / kind / "health_test.yaml").read_text())["tests"]
]


@pytest.mark.parametrize(("kind", "case"), CASES, ids=[f"{k}-{Path(c['inputPath']).stem}" for k, c in CASES])
def test_health(kind: str, case: dict[str, Any]) -> None:
    obj = yaml.safe_load((CUSTOM / kind / case["inputPath"]).read_text())
    hs = to_py(run_lua(CUSTOM / kind / "health.lua", obj))
    assert hs == case["healthStatus"]


def test_actions_set_the_annotation_and_discovery_enables_them_by_phase() -> None:
    obj = yaml.safe_load((CUSTOM / "ModelDeployment" / "testdata" / "paused.yaml").read_text())
    actions = to_py(run_lua(CUSTOM / "ModelDeployment" / "actions" / "discovery.lua", obj))
    assert actions["resume"] == {"disabled": False} and actions["pause"] == {"disabled": True}
    assert actions["retry"] == {"disabled": True} and actions["promote"] == {"disabled": False}
    for action in ("promote", "promote-full", "abort", "retry", "pause", "resume"):
        out = to_py(run_lua(CUSTOM / "ModelDeployment" / "actions" / action / "action.lua", obj))
        assert out["metadata"]["annotations"]["ml.slipway.dev/action"] == action


def test_argocd_cm_is_generated_from_the_lua_files() -> None:
    assert (REPO / "argocd" / "argocd-cm.yaml").read_text() == gen_argocd.render()
