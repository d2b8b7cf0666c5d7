"""The committed CRDs, the chart's copy and docs/reference.md match what the models generate,
and the generated schemas keep the rules Kubernetes and its CEL cost estimator need."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from slipway.api import crd
from slipway.api.common import GROUP, VERSION
from slipway.api.schema import walk

ROOT = Path(__file__).resolve().parents[2]
CRDS = {info.kind: crd.build_crd(info) for info in crd.KINDS}


def test_committed_files_match_the_models() -> None:
    stale = crd.drift(ROOT)
    assert stale == [], f"generated files out of date, run hack/gen-crds: {stale}"


def test_chart_copy_is_identical() -> None:
    for info in crd.KINDS:
        name = f"{info.crd_name}.yaml"
        assert (ROOT / "crds" / name).read_bytes() == (ROOT / "charts/slipway/crds" / name).read_bytes()


def test_generator_script_check_mode_passes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack/gen-crds"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_check_mode_reports_drift(tmp_path: Path) -> None:
    assert crd.main(["--check", str(tmp_path)]) == 1
    assert crd.main([str(tmp_path)]) == 0
    assert crd.main(["--check", str(tmp_path)]) == 0
    (tmp_path / "docs/reference.md").write_text("stale\n", encoding="utf-8")
    assert crd.drift(tmp_path) == ["docs/reference.md"]


def test_files_are_valid_yaml_crds() -> None:
    for info in crd.KINDS:
        text = (ROOT / "crds" / f"{info.crd_name}.yaml").read_text(encoding="utf-8")
        assert yaml.safe_load(text) == CRDS[info.kind]


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_names_and_subresources(kind: str) -> None:
    spec = CRDS[kind]["spec"]
    assert spec["group"] == GROUP
    assert spec["names"]["categories"] == ["slipway"]
    short = {"TrainingRun": "tr", "ModelVersion": "mv", "ModelDeployment": "md"}
    short |= {"AnalysisTemplate": "at", "ClusterAnalysisTemplate": "cat"}
    assert spec["names"]["shortNames"] == [short[kind]]
    assert spec["scope"] == ("Cluster" if kind == "ClusterAnalysisTemplate" else "Namespaced")
    (version,) = spec["versions"]
    assert version["name"] == VERSION
    assert version["served"] and version["storage"]
    templates = kind.endswith("AnalysisTemplate")  # read, never written, by the operator: no status
    assert version.get("subresources") == (None if templates else {"status": {}})


@pytest.mark.parametrize(
    ("kind", "columns"),
    [
        ("ModelVersion", ["Model", "Version", "Stage", "Aliases", "Accuracy", "Age"]),
        ("ModelDeployment", ["Model", "Stable", "Canary", "Weight", "Phase", "Age"]),
        ("TrainingRun", ["Model", "Phase", "Run", "Metric", "Age"]),
    ],
)
def test_printer_columns(kind: str, columns: list[str]) -> None:
    cols = CRDS[kind]["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in cols if not c.get("priority")] == columns


def _schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_schema_is_structural(kind: str) -> None:
    for path, node in walk(_schema(kind)):
        assert "$ref" not in node and "allOf" not in node and "oneOf" not in node, path
        assert "nullable" not in node and "uniqueItems" not in node, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path
            assert node["anyOf"] == [{"type": "integer"}, {"type": "string"}], path
        else:
            assert "type" in node, path
        if "properties" in node:
            assert "additionalProperties" not in node, path
        if node.get("x-kubernetes-preserve-unknown-fields"):
            pytest.fail(f"{path}: preserve-unknown-fields is not needed anywhere")


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_field_has_a_description(kind: str) -> None:
    for path, node in walk(_schema(kind)):
        if path.endswith(("[]", "{}")) or path == "metadata":
            continue
        assert node.get("description"), f"{kind} {path or '(root)'} has no description"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_spec_is_bounded_for_cel_cost(kind: str) -> None:
    """Every spec string, list and map has a size bound, so the API server can estimate the
    cost of the CEL rules over them."""
    for path, node in walk(_schema(kind)["properties"]["spec"], "spec"):
        kind_ = node.get("type")
        if kind_ == "string" and "enum" not in node:
            assert "maxLength" in node, f"{path}: string without maxLength"
        if node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node, f"{path}: int-or-string without maxLength"
        if kind_ == "array":
            assert "maxItems" in node, f"{path}: list without maxItems"
        if kind_ == "object" and "additionalProperties" in node:
            assert "maxProperties" in node, f"{path}: map without maxProperties"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_rules_have_messages(kind: str) -> None:
    found = 0
    for path, node in walk(_schema(kind)):
        for rule in node.get("x-kubernetes-validations", []):
            found += 1
            assert rule["rule"].strip(), path
            assert rule["message"].strip(), path
            assert set(rule) <= {"rule", "message", "fieldPath", "reason"}, path
    assert found > 0


def test_defaults_are_in_the_schema() -> None:
    canary = _schema("ModelDeployment")["properties"]["spec"]["properties"]["strategy"]
    assert canary["default"]["canary"]["steps"][0] == {"setWeight": 10}
    workers = _schema("TrainingRun")["properties"]["spec"]["properties"]["workers"]
    assert workers["default"] == 1 and workers["minimum"] == 1


def test_durations_have_a_pattern() -> None:
    spec = _schema("ModelDeployment")["properties"]["spec"]
    window = spec["properties"]["rollback"]["properties"]["window"]
    assert window["pattern"] == "^([0-9]{1,7}(ms|s|m|h))+$"
    assert window["default"] == "30m"


def test_version_is_int_or_string() -> None:
    spec = _schema("ModelVersion")["properties"]["spec"]
    version = spec["properties"]["version"]
    assert version["x-kubernetes-int-or-string"] is True
    assert version["minimum"] == 1
    assert version["pattern"] == "^[1-9][0-9]*$"
