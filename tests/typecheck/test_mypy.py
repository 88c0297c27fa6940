"""Users' task modules type-check under ``mypy --strict``: handles keep signatures, enqueue checks.

mypy runs in a subprocess from a scratch folder, so it finds OmniQ the way a
user's project does: installed (editable or not) in the environment, typed
by its ``py.typed`` marker.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mypy", reason="the typing test needs mypy (the dev extra)")

SAMPLE = Path(__file__).with_name("user_tasks.py")

WRONG = """
from omniq import OmniQ

oq = OmniQ("typed_wrong")


@oq.task(queue_name="emails")
def send_email(to: str, subject: str) -> str:
    return to + subject


send_email.enqueue(42, subject="Welcome")
"""

WRONG_ASYNC = """
from omniq import AsyncOmniQ

oq = AsyncOmniQ("typed_wrong")


@oq.task
async def resize(width: int, height: int) -> None:
    return None


async def main() -> None:
    await resize.enqueue_async(640, heigth=480)
    await resize.with_options(priority="high").enqueue_async(640, 480)
    n: int = await resize(1, 2)
"""


def _mypy(folder: Path, module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-incremental",
            "--cache-dir",
            str(folder / ".mypy_cache"),
            "--python-executable",
            sys.executable,
            module,
        ],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_a_correct_user_module_passes_mypy_strict(tmp_path: Path) -> None:
    shutil.copy(SAMPLE, tmp_path / "user_tasks.py")
    proc = _mypy(tmp_path, "user_tasks.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success: no issues found" in proc.stdout


def test_a_wrong_argument_to_enqueue_fails_mypy(tmp_path: Path) -> None:
    (tmp_path / "wrong_tasks.py").write_text(WRONG, encoding="utf-8")
    proc = _mypy(tmp_path, "wrong_tasks.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # Found through py.typed (not "missing library stubs or py.typed marker").
    assert "py.typed" not in proc.stdout and "import-untyped" not in proc.stdout, proc.stdout
    assert (
        'Argument 1 to "enqueue" of "TaskHandle" has incompatible type "int"; expected "str"'
        in proc.stdout
    ), proc.stdout


def test_wrong_keywords_and_options_fail_mypy(tmp_path: Path) -> None:
    (tmp_path / "wrong_async.py").write_text(WRONG_ASYNC, encoding="utf-8")
    proc = _mypy(tmp_path, "wrong_async.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout
    assert 'Unexpected keyword argument "heigth" for "enqueue_async" of "TaskHandle"' in out, out
    assert 'Argument "priority" to "with_options" of "TaskHandle" has incompatible type' in out
    assert 'Incompatible types in assignment (expression has type "None"' in out, out
