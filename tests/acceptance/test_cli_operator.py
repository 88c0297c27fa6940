"""The `omniq` command as an operator meets it: options in either position, one-line
errors with the README's exit codes, read-only commands that create nothing, a
guarded `db downgrade`, paging, timeouts, `omniq workers`, and a fast start."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from omniq import AsyncOmniQ, OmniQ
from omniq.db import migrate
from omniq.models import WorkerInfo
from tests.waiting import wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
APP = "tests.acceptance.cli_tasks"
POSTGRES_ENV = "OMNIQ_TEST_POSTGRES_URL"


def run(
    *args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``python -m omniq ARGS`` with no OMNIQ_* variables but those given."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    base["PYTHONPATH"] = str(ROOT)
    return subprocess.run(
        [sys.executable, "-m", "omniq", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> object:
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def one_error_line(proc: subprocess.CompletedProcess[str], code: int, *words: str) -> str:
    """Assert the failure shape: exit ``code``, one stderr line naming ``words``."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("omniq: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def enqueue(url: str, *args: str) -> str:
    proc = run("--url", url, "enqueue", f"{APP}:add", *args)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


# --- global options ---------------------------------------------------------------------


@pytest.mark.parametrize("position", ["before", "after"])
def test_url_and_json_work_before_and_after_the_command(empty_db_url: str, position: str) -> None:
    def omniq(command: list[str], *options: str) -> subprocess.CompletedProcess[str]:
        if position == "before":
            return run(*options, *command)
        return run(*command, *options)

    def default_files() -> set[Path]:
        # `make demo` may have left its own database there: only new files count.
        data = ROOT / "omniq_data"
        return set(data.iterdir()) if data.exists() else set()

    before = default_files()
    # The example: `omniq --url X db upgrade` migrated the default file instead.
    upgraded = omniq(["db", "upgrade"], "--url", empty_db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert as_json(omniq(["db", "current"], "--url", empty_db_url, "--json")) == {
        "current": migrate.head(),
        "head": migrate.head(),
        "up_to_date": True,
    }
    task_id = enqueue(empty_db_url, "--args", "[1, 2]")
    listed = as_json(omniq(["tasks"], "--json", "--url", empty_db_url))
    assert isinstance(listed, list) and [t["id"] for t in listed] == [task_id]
    assert default_files() == before  # the default database was never touched


@pytest.mark.parametrize("position", ["before", "after"])
def test_project_and_base_dir_work_before_and_after_the_command(
    tmp_path: Path, position: str
) -> None:
    options = ["--project", "billing", "--base-dir", str(tmp_path / "data")]
    command = ["db", "upgrade"]
    proc = run(*options, *command) if position == "before" else run(*command, *options)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "billing.db").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


@pytest.mark.parametrize("position", ["before", "after"])
def test_debug_shows_the_traceback_before_and_after_the_command(
    tmp_path: Path, position: str
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'missing.db'}"
    plain = run("--url", url, "stats")
    one_error_line(plain, 1, "no OmniQ database")
    args = ["--debug", "--url", url, "stats"] if position == "before" else ["stats", "--debug"]
    debug = run(*args, env={"OMNIQ_DATABASE_URL": url})
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith("omniq: error: there is no")


def test_version_and_a_usage_error_are_one_line() -> None:
    from omniq import __version__

    version = run("--version")
    assert version.returncode == 0 and version.stdout.strip() == f"omniq {__version__}"
    unknown = run("taks")
    one_error_line(unknown, 2, "invalid choice: 'taks'")


# --- failures ---------------------------------------------------------------------------


def _postgres_base() -> sa.URL:
    base = os.environ.get(POSTGRES_ENV)
    if not base:
        pytest.skip(f"needs a local PostgreSQL server ({POSTGRES_ENV})")
    return sa.make_url(base).set(drivername="postgresql+asyncpg")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_postgres_connection_failures_are_one_line_each() -> None:
    base = _postgres_base()

    def url(**parts: object) -> str:
        return base.set(**parts).render_as_string(hide_password=False)  # type: ignore[arg-type]

    cases = [
        (url(host="127.0.0.1", port=_free_port()), "connection refused"),
        (url(host="no-such-host.invalid"), "unknown host 'no-such-host.invalid'"),
        (url(username="omniq_no_such_user", password=None), "authentication failed"),
        (url(database="omniq_no_such_database"), "database 'omniq_no_such_database' does not"),
    ]
    for target, words in cases:
        for command in (["tasks"], ["db", "upgrade"], ["worker", "--burst"]):
            one_error_line(run("--url", target, *command), 1, words)


def test_a_postgres_url_without_asyncpg_says_which_extra_to_install(tmp_path: Path) -> None:
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(
        "import sys\n"
        "class _NoAsyncpg:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'asyncpg' or name.startswith('asyncpg.'):\n"
        "            raise ModuleNotFoundError(\"No module named 'asyncpg'\", name='asyncpg')\n"
        "        return None\n"
        "sys.meta_path.insert(0, _NoAsyncpg())\n",
        encoding="utf-8",
    )
    env = {"PYTHONPATH": f"{shim}{os.pathsep}{ROOT}"}
    proc = run("--url", "postgresql+asyncpg://postgres@127.0.0.1/x", "tasks", env=env)
    one_error_line(proc, 1, 'pip install "omniq[postgres]"')


def test_alembic_errors_and_bad_input_exit_2_with_one_line(db_url: str) -> None:
    one_error_line(run("--url", db_url, "db", "downgrade", "9999", "--yes"), 2, "'9999'")
    one_error_line(run("--url", db_url, "db", "upgrade", "9999"), 2, "unknown revision")
    one_error_line(run("--url", db_url, "task", "no-such-id"), 2, "no task with id")
    one_error_line(run("--url", db_url, "result", "no-such-id"), 2, "no task with id")
    one_error_line(run("--url", db_url, "cancel", "no-such-id"), 2, "no task with id")
    one_error_line(run("--url", db_url, "schedule", "pause", "nope"), 2, "no schedule")
    one_error_line(run("--url", db_url, "worker", "--concurrency", "-3"), 2, "--concurrency")
    one_error_line(run("--url", db_url, "worker", "--concurrency=0"), 2, "1 or more")
    for form in (["--in", "-5s"], ["--in=-5s"]):
        proc = run("--url", db_url, "enqueue", f"{APP}:add", *form)
        one_error_line(proc, 2, "--in", "negative")
    for app in ("my app", "tasks.", "../tasks", "pkg:func"):
        one_error_line(run("--url", db_url, "worker", "--burst", "--app", app), 2, "--app")
    one_error_line(run("--url", db_url, "tasks", "--limit", "many"), 2, "--limit")
    assert as_json(run("--url", db_url, "tasks", "--json")) == []  # nothing was written


def test_a_closed_pipe_ends_quietly(db_url: str) -> None:
    with OmniQ(url=db_url) as oq:
        oq.enqueue_many([oq.build_task(f"{APP}:add", [i, 1]) for i in range(800)])
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    producer = subprocess.Popen(
        [sys.executable, "-m", "omniq", "--url", db_url, "tasks", "--limit", "800"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    head = subprocess.run(["head", "-1"], stdin=producer.stdout, capture_output=True, timeout=60)
    assert producer.stdout is not None and producer.stderr is not None
    producer.stdout.close()
    stderr = producer.stderr.read().decode()
    producer.stderr.close()
    assert producer.wait(timeout=60) in (0, 141), stderr
    assert stderr == ""
    assert head.stdout.decode().split()[:2] == ["ID", "QUEUE"]


# --- read-only commands -----------------------------------------------------------------


def test_read_only_commands_never_create_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "x.db"
    url = f"sqlite+aiosqlite:///{missing}"
    commands = [
        ["tasks"],
        ["task", "some-id"],
        ["results"],
        ["result", "some-id"],
        ["events"],
        ["stats"],
        ["schedules"],
        ["workers"],
        ["db", "current"],
        ["db", "check"],
    ]
    for command in commands:
        one_error_line(run("--url", url, *command), 1, f"no OmniQ database at {missing}")
        one_error_line(run(*command, env={"OMNIQ_DATABASE_URL": url}), 1, "no OmniQ database")
    assert list(tmp_path.iterdir()) == []


def test_read_only_commands_leave_an_empty_file_as_it_is(tmp_path: Path) -> None:
    """`omniq tasks` on a 0-byte file said its schema was behind, and had written
    SQLite's header into it meanwhile (4,096 bytes)."""
    empty = tmp_path / "empty.db"
    empty.touch()
    for command in (["tasks"], ["stats"], ["cancel", "some-id"]):
        one_error_line(
            run("--url", f"sqlite+aiosqlite:///{empty}", *command), 1, "is an empty file"
        )
    assert empty.stat().st_size == 0 and sorted(tmp_path.iterdir()) == [empty]


def test_read_only_commands_leave_an_old_sqlite_schema_as_it_is(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    assert run("--url", url, "db", "upgrade", "0006").returncode == 0
    one_error_line(run("--url", url, "tasks"), 1, "omniq db upgrade")
    assert as_json(run("--url", url, "db", "current", "--json")) == {
        "current": "0006",
        "head": migrate.head(),
        "up_to_date": False,
    }


# --- db downgrade and check -------------------------------------------------------------


def test_db_downgrade_needs_a_revision_and_a_confirmation(empty_db_url: str) -> None:
    url = empty_db_url
    assert run("--url", url, "db", "upgrade").returncode == 0
    one_error_line(run("--url", url, "db", "downgrade"), 2, "needs the target revision")

    refused = run("--url", url, "db", "downgrade", "0006")  # stdin is not a terminal
    assert refused.returncode == 2, refused.stderr
    assert "0008  observability" in refused.stderr
    assert "0007  task attempts history" in refused.stderr
    assert refused.stderr.strip().splitlines()[-1].startswith("omniq: error: ")
    assert "--yes" in refused.stderr
    current = as_json(run("--url", url, "db", "current", "--json"))
    assert isinstance(current, dict) and current["current"] == migrate.head()

    done = run("--url", url, "db", "downgrade", "0006", "--yes")
    assert done.returncode == 0, done.stderr
    assert "0007  task attempts history" in done.stderr
    assert "database at revision 0006" in done.stdout

    check = run("--url", url, "db", "check")
    assert check.returncode == 1
    assert len(check.stdout) < 1000, check.stdout
    assert "database at 0006, head is" in check.stdout
    assert "add table omniq_task_attempts" in check.stdout
    assert "run `omniq db upgrade`" in check.stdout
    assert run("--url", url, "db", "upgrade").returncode == 0
    assert run("--url", url, "db", "check").stdout.strip() == "schema matches head"


def test_db_check_on_an_unmigrated_database_is_a_short_summary(
    empty_db_url: str, tmp_path: Path
) -> None:
    if empty_db_url.startswith("sqlite"):
        Path(sa.make_url(empty_db_url).database or "").touch()
    check = run("--url", empty_db_url, "db", "check")
    assert check.returncode == 1, check.stderr
    lines = check.stdout.strip().splitlines()
    assert lines[0] == f"schema differs from head: database at <empty>, head is {migrate.head()}"
    assert any(line.strip().startswith("add table omniq_events") for line in lines)
    assert "more (--json lists all)" in check.stdout
    assert len(lines) <= 12 and all(len(line) < 120 for line in lines), check.stdout
    as_data = run("--url", empty_db_url, "db", "check", "--json")
    assert as_data.returncode == 1
    assert len(json.loads(as_data.stdout)["differences"]) > 8


# --- listing, waiting, cancelling -------------------------------------------------------


def test_tasks_says_when_it_shows_the_first_n_of_more(db_url: str) -> None:
    ids = [enqueue(db_url, "--args", f"[{i}, 0]") for i in range(3)]
    first = run("--url", db_url, "tasks", "--limit", "2")
    assert first.returncode == 0
    assert [line.split()[0] for line in first.stdout.splitlines()[1:]] == ids[:2]
    assert first.stderr.strip() == (
        "omniq: showing tasks 1-2 of more; next page: --offset 2 (--limit 2)"
    )
    rest = run("--url", db_url, "tasks", "--limit", "2", "--offset", "2")
    assert [line.split()[0] for line in rest.stdout.splitlines()[1:]] == ids[2:]
    assert rest.stderr == ""
    page = run("--url", db_url, "tasks", "--limit", "2", "--json")
    assert [t["id"] for t in json.loads(page.stdout)] == ids[:2]
    assert "showing tasks 1-2 of more" in page.stderr
    assert run("--url", db_url, "tasks", "--limit", "3").stderr == ""


def test_events_are_newest_first_by_time(db_url: str) -> None:
    task_id = enqueue(db_url, "--args", "[1, 2]")
    worker = run("--url", db_url, "worker", "--app", APP, "--burst")
    assert worker.returncode == 0, worker.stderr
    events = as_json(run("--url", db_url, "events", "--task", task_id, "--json"))
    assert isinstance(events, list) and len(events) >= 4
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert events[-1]["event_type"] == "enqueued" and events[0]["event_type"] == "completed"
    paged = run("--url", db_url, "events", "--task", task_id, "--limit", "2")
    assert "showing events 1-2 of more" in paged.stderr


def test_result_wait_says_it_timed_out(db_url: str) -> None:
    task_id = enqueue(db_url, "--in", "1h")
    proc = run("--url", db_url, "result", task_id, "--wait", "--timeout", "2s")
    one_error_line(proc, 3, "timed out after 2s", "still pending")
    not_yet = run("--url", db_url, "result", task_id)
    one_error_line(not_yet, 1, "no result yet")


def test_cancelling_a_finished_task_says_so_on_stderr(db_url: str) -> None:
    task_id = enqueue(db_url, "--in", "1h")
    cancelled = run("--url", db_url, "cancel", task_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == "cancelled"
    again = run("--url", db_url, "cancel", task_id)
    assert again.returncode == 1 and again.stdout == ""
    assert again.stderr.strip() == (
        f"omniq: task {task_id} already finished (cancelled): nothing to cancel"
    )
    as_data = run("--url", db_url, "cancel", task_id, "--json")
    assert as_data.returncode == 1
    assert json.loads(as_data.stdout) == {"cancelled": False, "status": "cancelled"}


# --- omniq workers ----------------------------------------------------------------------


def test_workers_lists_alive_and_lost_workers(db_url: str) -> None:
    assert run("--url", db_url, "workers").stdout.strip() == "no workers registered"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    worker = subprocess.Popen(
        [
            *(sys.executable, "-m", "omniq", "worker", "--url", db_url, "--app", APP),
            *("--queues", "default,mail", "--concurrency", "3", "--executor", "thread"),
        ],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:

        def listed() -> bool:
            rows = as_json(run("--url", db_url, "workers", "--json"))
            return isinstance(rows, list) and len(rows) == 1

        wait_until_sync(listed, "the worker process to register")
        (row,) = as_json(run("--json", "workers", "--url", db_url))  # type: ignore[misc]
        assert row["pid"] == worker.pid and row["host"] == socket.gethostname()
        assert row["queues"] == ["default", "mail"]
        assert (row["concurrency"], row["executor"], row["state"]) == (3, "thread", "alive")
        assert row["version"] and row["started_at"] and row["last_heartbeat"]
        table = run("--url", db_url, "workers")
        header = table.stdout.splitlines()[0].split()
        assert header[:7] == ["ID", "HOST", "PID", "QUEUES", "CONCURRENCY", "EXECUTOR", "VERSION"]
        assert header[-1] == "STATE" and table.stdout.splitlines()[1].split()[-1] == "alive"
        with OmniQ(url=db_url) as oq:
            assert [w.pid for w in oq.list_workers()] == [worker.pid]
    finally:
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=60)
    assert worker.returncode == 0, stderr
    assert as_json(run("--url", db_url, "workers", "--json")) == []

    async def register_a_silent_worker() -> None:
        async with AsyncOmniQ(url=db_url) as oq:
            long_ago = oq.services.storage.now() - timedelta(hours=1)
            info = WorkerInfo(
                id="silent",
                host="elsewhere",
                pid=4242,
                concurrency=1,
                executor="async",
                version="0",
                started_at=long_ago,
                last_heartbeat=long_ago,
            )
            await oq.services.workers.register_async(info)

    asyncio.run(register_a_silent_worker())
    (lost,) = as_json(run("--url", db_url, "workers", "--json"))  # type: ignore[misc]
    assert (lost["id"], lost["state"]) == ("silent", "lost")
    assert run("--url", db_url, "workers").stdout.splitlines()[1].split()[-1] == "lost"


# --- start-up ---------------------------------------------------------------------------


def test_help_and_version_do_not_import_the_database_layer() -> None:
    for args in (["--help"], ["--version"], ["tasks", "--help"]):
        proc = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "omniq", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()}
        assert "omniq.cli" in imported
        assert not {"sqlalchemy", "alembic", "omniq.app", "attrs"} & imported, sorted(imported)


def test_import_omniq_still_exports_its_whole_api() -> None:
    code = (
        "import omniq, sys\n"
        "assert 'sqlalchemy' not in sys.modules\n"
        "missing = [n for n in omniq.__all__ if getattr(omniq, n, None) is None]\n"
        "assert not missing, missing\n"
        "assert set(omniq.__all__) <= set(dir(omniq))\n"
        "from omniq import AsyncOmniQ, OmniQ, TaskNotFound, task\n"
        "assert issubclass(TaskNotFound, omniq.OmniQError)\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def _downgrade_at_a_terminal(url: str, answer: bytes) -> tuple[int, str]:
    """``omniq db downgrade 0007`` with a terminal on stdin that answers ``answer``."""
    import pty

    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMNIQ_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "omniq", "--url", url, "db", "downgrade", "0007"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": str(ROOT)},
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    try:
        os.write(leader, answer)
        _, stderr = proc.communicate(timeout=60)
    finally:
        os.close(leader)
    return proc.returncode, stderr.decode()


def test_db_downgrade_asks_at_a_terminal(empty_db_url: str) -> None:
    assert run("--url", empty_db_url, "db", "upgrade").returncode == 0
    code, stderr = _downgrade_at_a_terminal(empty_db_url, b"no\n")
    assert code == 1 and "0008  observability" in stderr and "Type 'yes'" in stderr
    assert "not confirmed, nothing changed" in stderr
    current = as_json(run("--url", empty_db_url, "db", "current", "--json"))
    assert isinstance(current, dict) and current["current"] == migrate.head()
    code, stderr = _downgrade_at_a_terminal(empty_db_url, b"yes\n")
    assert code == 0, stderr
    current = as_json(run("--url", empty_db_url, "db", "current", "--json"))
    assert isinstance(current, dict) and current["current"] == "0007"
