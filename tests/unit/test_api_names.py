"""The names contract lives in slipway.api.names: its names, and no other module spells the group or `-v<N>`."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

from slipway.api import names

PACKAGE = Path(names.__file__).resolve().parent.parent


def test_the_contract():
    assert f"{names.GROUP}/{names.VERSION}" == names.API_VERSION
    assert names.modelversion_name("Digits_CNN", 7) == "digits-cnn-v7"
    assert names.isvc_name("digits", "7") == "digits-v7"
    assert names.predictor_name("digits", "7") == "digits-v7-predictor"
    for key in (names.LABEL_MODEL, names.LABEL_VERSION, names.LABEL_DEPLOYMENT, names.ACTION_ANNOTATION):
        assert key.startswith(f"{names.GROUP}/")


@pytest.mark.parametrize(
    ("child", "want"),
    [("digits-v7", "7"), ("digits-v12", "12"), ("digits-v7-predictor", None), ("other-v7", None), ("digits-vx", None)],
)
def test_version_of_reads_back_versioned_name(child: str, want: str | None):
    assert names.version_of("digits", child) == want
    if want is not None:
        assert names.versioned_name("digits", want) == child


def _spellings(path: Path) -> list[str]:
    """String constants (not docstrings, not the apiVersion Literal types) naming the group or `-v{...}`."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    literal_types = {
        id(sub.slice)
        for sub in ast.walk(tree)
        if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == "Literal"
    }
    found = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and names.GROUP in node.value
            and id(node) not in docstrings | literal_types
        ):
            found.append(f"line {node.lineno}: {node.value!r}")
        if isinstance(node, ast.JoinedStr):
            for before, after in itertools.pairwise(node.values):
                if (
                    isinstance(before, ast.Constant)
                    and str(before.value).endswith("-v")
                    and isinstance(after, ast.FormattedValue)
                ):
                    found.append(f"line {node.lineno}: an f-string ending in -v{{…}}")
    return found


def test_no_module_spells_the_contract_again():
    offenders = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel == "api/names.py":
            continue
        found = _spellings(path)
        if found:
            offenders[rel] = found
    assert offenders == {}
