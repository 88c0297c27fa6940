"""What a fresh clone carries: the licence the metadata names, and a `make clean` that cleans."""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_license_file_matches_the_metadata() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    assert project["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text("utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 OmniQ contributors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS"' in text


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_clean_removes_what_builds_and_tests_leave(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Makefile", tmp_path / "Makefile")
    made = [".venv", "omniq_data", ".pytest_cache", ".mypy_cache", ".ruff_cache"]
    made += [".hypothesis", "build", "dist", "omniq.egg-info"]
    for name in made:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x", "utf-8")
    (tmp_path / "omniq").mkdir()
    (tmp_path / "README.md").write_text("kept", "utf-8")
    proc = subprocess.run(
        ["make", "clean"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Makefile", "README.md", "omniq"]


def test_the_wheel_lists_every_package_of_omniq() -> None:
    # The wheel ships exactly the listed packages: one left out (omniq.storage,
    # omniq.workers once) imports in a checkout and fails in an install.
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["tool"]["setuptools"][
            "packages"
        ]
    )
    on_disk = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for init in (ROOT / "omniq").rglob("__init__.py")
        if "__pycache__" not in init.parts
    }
    assert on_disk <= listed, sorted(on_disk - listed)
