"""The metrics extra is optional: OmniQ imports and works without prometheus_client,
and asking for metrics without it names the extra to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: Run first in each child: prometheus_client cannot be imported there.
BLOCK = "import sys; sys.modules['prometheus_client'] = None\n"


def _python(code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", BLOCK + code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
    )


def test_omniq_runs_a_worker_without_prometheus_client(tmp_path: Path) -> None:
    code = """
import omniq, omniq.cli, omniq.worker
from omniq import OmniQ
with OmniQ("plain", url="sqlite+aiosqlite:///plain.db") as oq:
    oq.enqueue("tests.app_tasks:add", [1, 2])
    stats = oq.run_worker(allow_modules=["tests.app_tasks"])
assert stats.completed == 1, stats
assert not any(name.startswith("prometheus") for name in sys.modules if sys.modules[name])
try:
    import omniq.metrics
except ImportError as exc:
    print(exc)
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "omniq[metrics]"' in proc.stdout


def test_metrics_options_without_the_extra_name_it(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"
    for args in (
        ["worker", "--burst", "--metrics-port", "0"],
        ["metrics", "--port", "0"],
    ):
        code = f"from omniq.cli import main; sys.exit(main({['--url', url, *args]!r}))"
        proc = _python(code, tmp_path)
        assert proc.returncode == 1, proc.stderr
        assert "needs the metrics extra" in proc.stderr
        assert 'pip install "omniq[metrics]"' in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not (tmp_path / "cli.db").exists()  # refused before opening anything


def test_the_dashboard_has_no_metrics_page_without_the_extra(tmp_path: Path) -> None:
    code = """
from starlette.testclient import TestClient
from omniq import OmniQ
from omniq.web import create_app
with OmniQ("web", url="sqlite+aiosqlite:///web.db") as oq:
    with TestClient(create_app(oq), client=("127.0.0.1", 5000)) as client:
        assert client.get("/").status_code == 200
        print(client.get("/metrics").status_code)
"""
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "404"
