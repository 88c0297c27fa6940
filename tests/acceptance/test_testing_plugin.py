"""omniq.testing as a user enables it: `pytest_plugins = ["omniq.testing"]` in a test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TASKS = '''
from omniq import OmniQ

oq = OmniQ("shop")


@oq.task(queue_name="emails")
def send_receipt(order_id: int, total: str) -> str:
    return f"receipt {order_id}: {total}"


@oq.task
def ship(order_id: int) -> str:
    return f"shipped {order_id}"


def place_order(order_id: int) -> tuple[str, str]:
    """User code under test: enqueues two tasks, the second after the first."""
    first = send_receipt.enqueue(order_id, total="9.99")
    second = ship.with_options(depends_on=[first]).enqueue(order_id)
    return first, second
'''

CONFTEST = """
pytest_plugins = ["omniq.testing"]
"""

TESTS = """
from shop_tasks import place_order


def test_place_order_runs_both_tasks_inline(omniq_app):
    first, second = place_order(7)
    assert omniq_app.get_result(first).result == "receipt 7: 9.99"
    assert omniq_app.get_result(second).result == "shipped 7"
    assert len(omniq_app.list_tasks()) == 2


def test_each_test_gets_a_fresh_database(omniq_app):
    assert omniq_app.list_tasks() == []
    place_order(8)
    assert len(omniq_app.list_tasks()) == 2


def test_the_plain_fixture_app(omniq_app):
    def_count = len(omniq_app.list_tasks())
    assert def_count == 0


def test_file_app_runs_workers(omniq_file_app, tmp_path):
    from shop_tasks import ship

    task_id = omniq_file_app.enqueue(ship, [3])
    assert omniq_file_app.get_task(task_id).status.value == "pending"
    omniq_file_app.run_worker()
    assert omniq_file_app.get_result(task_id).result == "shipped 3"
    assert (tmp_path / "omniq_test.db").exists()
"""


def _run(folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(folder)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _suite(folder: Path, ini: str) -> None:
    (folder / "shop_tasks.py").write_text(TASKS, encoding="utf-8")
    (folder / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (folder / "test_shop.py").write_text(TESTS, encoding="utf-8")
    (folder / "pytest.ini").write_text(f"[pytest]\n{ini}", encoding="utf-8")


def test_users_suite_with_their_own_app_runs_eagerly_in_memory(tmp_path: Path) -> None:
    _suite(tmp_path, "omniq_app = shop_tasks:oq\n")
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "4 passed" in proc.stdout
    # In memory: no database file or omniq_data folder (the file app's is in its tmp_path).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "__pycache__") == [
        "conftest.py",
        "pytest.ini",
        "shop_tasks.py",
        "test_shop.py",
    ]


def test_a_failing_user_test_fails(tmp_path: Path) -> None:
    """The fixture really runs the tasks: a wrong expectation about a result fails."""
    _suite(tmp_path, "omniq_app = shop_tasks:oq\n")
    test_file = tmp_path / "test_shop.py"
    test_file.write_text(
        test_file.read_text(encoding="utf-8").replace('"shipped 7"', '"shipped 8"'),
        encoding="utf-8",
    )
    proc = _run(tmp_path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 failed, 3 passed" in proc.stdout


def test_a_bad_ini_app_reference_is_a_clear_error(tmp_path: Path) -> None:
    _suite(tmp_path, "omniq_app = shop_tasks:nope\n")
    proc = _run(tmp_path, "-k", "fresh")
    assert proc.returncode != 0
    assert "omniq_app = 'shop_tasks:nope'" in proc.stdout + proc.stderr


PLAIN_TESTS = """
def triple(x):
    return 3 * x


def test_default_fixture_app_is_eager(omniq_app):
    task_id = omniq_app.enqueue(triple, [5])
    assert omniq_app.get_result(task_id).result == 15
    assert omniq_app.app.mode == "eager"
"""


def test_without_the_ini_option_the_fixture_is_a_fresh_eager_app(tmp_path: Path) -> None:
    (tmp_path / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (tmp_path / "test_plain.py").write_text(PLAIN_TESTS, encoding="utf-8")
    proc = _run(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    assert not (tmp_path / "omniq_data").exists()
