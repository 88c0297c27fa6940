"""Test helpers for users' test suites: an eager, in-memory OmniQ per test.

Enable the pytest plugin in your ``conftest.py``::

    pytest_plugins = ["omniq.testing"]

Fixtures:

``omniq_app``
    An open :class:`~omniq.OmniQ` in eager mode on a private in-memory SQLite
    database: each ``enqueue`` runs its task inline, and nothing is written
    to disk. With the ini option ``omniq_app = "myproject.tasks:oq"`` the
    fixture is *your* app (the one your ``@oq.task`` handles belong to),
    switched to eager mode on a fresh in-memory database for the test and
    restored afterwards.
``omniq_file_app``
    An open, normal-mode :class:`~omniq.OmniQ` on a SQLite file in the test's
    ``tmp_path``, for tests that run workers (``oq.run_worker()``).

:func:`eager` does the same switch as a context manager, outside pytest.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from omniq.app import MEMORY_URL, AsyncOmniQ
from omniq.errors import ConfigurationError
from omniq.sync import OmniQ

__all__ = ["eager", "omniq_app", "omniq_file_app"]


@contextlib.contextmanager
def eager(app: OmniQ | AsyncOmniQ, url: str = MEMORY_URL) -> Iterator[OmniQ]:
    """Run ``app`` (not open) in eager mode on a fresh in-memory database, then restore it.

    Yields the sync app, open; its task handles enqueue into it and run inline.
    """
    target = app.app if isinstance(app, OmniQ) else app
    if target._services is not None:
        raise ConfigurationError("omniq.testing.eager: the app is already open; close it first")
    saved = (target.url, target.mode)
    target.url, target.mode = url, "eager"
    sync_app = app if isinstance(app, OmniQ) else OmniQ._wrap(app)
    try:
        with sync_app:
            yield sync_app
    finally:
        target.url, target.mode = saved


def pytest_addoption(parser: pytest.Parser) -> None:
    """The ``omniq_app`` ini option: ``"package.module:app"`` for the ``omniq_app`` fixture."""
    parser.addini(
        "omniq_app",
        help="OmniQ app (package.module:name) that the omniq_app fixture runs eagerly in memory",
        default="",
    )


@pytest.fixture
def omniq_app(request: pytest.FixtureRequest) -> Iterator[OmniQ]:
    """An open eager OmniQ on a private in-memory database (your app with ini ``omniq_app``)."""
    ref = str(request.config.getini("omniq_app") or "")
    app: Any = _load_app(ref) if ref else OmniQ("omniq_test", mode="eager")
    with eager(app) as oq:
        yield oq


@pytest.fixture
def omniq_file_app(tmp_path: Path) -> Iterator[OmniQ]:
    """An open normal-mode OmniQ on a SQLite file in ``tmp_path`` (run workers yourself)."""
    with OmniQ("omniq_test", url=f"sqlite+aiosqlite:///{tmp_path / 'omniq_test.db'}") as oq:
        yield oq


def _load_app(ref: str) -> OmniQ | AsyncOmniQ:
    module_name, _, name = ref.partition(":")
    try:
        app: Any = importlib.import_module(module_name)
        for part in name.split("."):
            app = getattr(app, part)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"ini option omniq_app = {ref!r}: {exc}") from exc
    if not name or not isinstance(app, OmniQ | AsyncOmniQ):
        raise ConfigurationError(
            f"ini option omniq_app = {ref!r} must name an OmniQ or AsyncOmniQ (package.module:name)"
        )
    return app
