"""Faults outside the network: a SQLite database on a small disk that fills up, and a
real restart of the local PostgreSQL server.

Small disk: a tmpfs mounted in the test's tmp_path (``mount -t tmpfs -o size=32m``;
needs root or CAP_SYS_ADMIN, as in CI, else the tests skip saying why). A ballast
file written until ENOSPC fills it; deleting the ballast frees it at once.

Restart: ``pg_ctlcluster --skip-systemctl-redirect <version> <cluster> restart`` of
the Debian/Ubuntu cluster on the URL's port, then ``pg_isready`` until it accepts.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path

import sqlalchemy as sa


def _run(*cmd: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


class SmallDisk:
    """A size-limited filesystem (tmpfs) with a ballast file to fill it."""

    def __init__(self, where: Path, size_mb: int = 32) -> None:
        self.path, self.size_mb = where, size_mb
        self.ballast = where / "ballast"
        self.mounted = False

    def mount(self) -> str | None:
        """Mount the tmpfs; None, or the reason it cannot be."""
        if shutil.which("mount") is None:
            return "no mount command"
        _reap_orphans()
        self.path.mkdir(parents=True, exist_ok=True)
        Path(f"{self.path}.pid").write_text(str(os.getpid()))  # for _reap_orphans
        options = f"size={self.size_mb}m,mode=0700"
        done = _run("mount", "-t", "tmpfs", "-o", options, "omniq-faults", str(self.path))
        if done.returncode != 0:
            return f"cannot mount a tmpfs (needs root or CAP_SYS_ADMIN): {done.stderr.strip()}"
        self.mounted = True
        return None

    def fill(self, database: Path | None = None) -> int:
        """Write the ballast until the disk is full; the bytes written.

        With ``database``, first truncate its WAL (TRUNCATE checkpoint): the next
        writes must then grow the WAL file, and meet the full disk.
        """
        if database is not None:
            _truncate_wal(database)
        written = 0
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            for size in (1 << 20, 1 << 12, 1):
                while True:
                    try:
                        n = os.write(fd, b"\0" * size)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
                    written += n
                    if n < size:
                        break
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def unmount(self) -> None:
        """Free and unmount (lazily if a file on it is still open)."""
        self.free()
        if self.mounted and _run("umount", str(self.path)).returncode != 0:
            _run("umount", "-l", str(self.path))
        self.mounted = False


def _reap_orphans() -> None:
    """Unmount our tmpfs mounts whose test process died (killed before its teardown)."""
    for line in Path("/proc/mounts").read_text().splitlines():
        device, where, *_ = line.split()
        owner = Path(f"{where}.pid")
        pid = owner.read_text().strip() if device == "omniq-faults" and owner.exists() else ""
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _run("umount", "-l", where)


def _truncate_wal(database: Path) -> None:
    conn = sqlite3.connect(database, timeout=5.0, isolation_level=None)
    try:
        deadline = time.monotonic() + 10.0
        while conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"could not checkpoint {database}")
            time.sleep(0.01)
    finally:
        conn.close()


def local_cluster(url: str) -> tuple[str, str] | str:
    """(version, cluster) of the local cluster serving ``url``, or why there is none."""
    parsed = sa.make_url(url)
    if parsed.host not in (None, "127.0.0.1", "localhost", "::1") or os.geteuid() != 0:
        return f"needs root and a local server (host {parsed.host}, uid {os.geteuid()})"
    if not (shutil.which("pg_lsclusters") and shutil.which("pg_isready")):
        return "pg_lsclusters/pg_ctlcluster/pg_isready not installed"
    listed = _run("pg_lsclusters", "--no-header").stdout.splitlines()
    port = str(parsed.port or 5432)
    found = [f[:2] for f in map(str.split, listed) if len(f) >= 3 and f[2] == port]
    return (found[0][0], found[0][1]) if found else f"no local cluster on port {port}"


def restart_postgres(url: str) -> None:
    """Really restart the local server of ``url``; return once it accepts connections again."""
    cluster = local_cluster(url)
    assert not isinstance(cluster, str), cluster
    parsed = sa.make_url(url)
    ready = ["pg_isready", "-q", "-h", parsed.host or "127.0.0.1", "-p", str(parsed.port or 5432)]
    try:
        done = _run("pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "restart")
        if done.returncode != 0:  # never leave the server down for the other tests
            _run("pg_ctlcluster", "--skip-systemctl-redirect", *cluster, "start")
            raise RuntimeError(f"pg_ctlcluster restart failed: {done.stderr.strip()}")
    finally:
        deadline = time.monotonic() + 60.0
        while _run(*ready, timeout=10).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not accept connections within 60 s")
            time.sleep(0.1)
