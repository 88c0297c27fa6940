"""Every public async method of the services has a sync twin with the same signature,
and a sync call made inside a running event loop fails fast instead of deadlocking.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from omniq.errors import SyncInAsyncContext
from omniq.services import EventStorage, ResultStorage, Services, Storage, TaskQueue
from omniq.sync import (
    SyncEventStorage,
    SyncResultStorage,
    SyncServices,
    SyncTaskQueue,
    SyncWorker,
)
from omniq.worker import Worker

PAIRS: list[tuple[type[Any], type[Any]]] = [
    (TaskQueue, SyncTaskQueue),
    (ResultStorage, SyncResultStorage),
    (EventStorage, SyncEventStorage),
    (Services, SyncServices),
    (Worker, SyncWorker),
]

#: Deliberate differences: the sync ``open`` cannot take an AsyncEngine (it would be
#: bound to another event loop than the portal's), so its ``url`` is narrower.
ANNOTATION_EXCEPTIONS = {("Services", "open_async", "url")}


def async_methods(cls: type[Any]) -> dict[str, Callable[..., Any]]:
    return {
        name: member
        for name, member in inspect.getmembers(cls)
        if name.endswith("_async") and not name.startswith("_") and callable(member)
    }


#: Async methods known to lack a sync twin (a bug to fix in omniq/sync.py; remove the
#: entry when the twin exists: the strict xfail then fails as a reminder).
KNOWN_MISSING: dict[tuple[str, str], str] = {}


def method_params() -> list[Any]:
    params = []
    for async_cls, sync_cls in PAIRS:
        for name in sorted(async_methods(async_cls)):
            reason = KNOWN_MISSING.get((async_cls.__name__, name))
            marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
            params.append(
                pytest.param(
                    async_cls, sync_cls, name, id=f"{async_cls.__name__}.{name}", marks=marks
                )
            )
    return params


@pytest.mark.parametrize(("async_cls", "sync_cls"), PAIRS, ids=[a.__name__ for a, _ in PAIRS])
def test_services_have_async_methods(async_cls: type[Any], sync_cls: type[Any]) -> None:
    methods = async_methods(async_cls)
    assert methods, f"{async_cls.__name__} has no async methods?"
    for name, method in methods.items():
        assert inspect.iscoroutinefunction(method), f"{async_cls.__name__}.{name} is not async"


@pytest.mark.parametrize(("async_cls", "sync_cls", "name"), method_params())
def test_sync_twin_exists_with_the_same_signature(
    async_cls: type[Any], sync_cls: type[Any], name: str
) -> None:
    method = getattr(async_cls, name)
    twin_name = name.removesuffix("_async")
    assert hasattr(sync_cls, twin_name), f"{sync_cls.__name__} lacks {twin_name}"
    twin = getattr(sync_cls, twin_name)
    assert not inspect.iscoroutinefunction(twin), f"{sync_cls.__name__}.{twin_name} is async"
    wrapped = getattr(twin, "__wrapped__", None)
    if wrapped is not None:
        # A portal twin must wrap the async method of the same name, not another one.
        assert getattr(wrapped, "__name__", None) == name, (
            f"{sync_cls.__name__}.{twin_name} wraps {wrapped.__qualname__}"
        )
        assert twin.__name__ == twin_name
    a_params = list(inspect.signature(method).parameters.values())
    s_params = list(inspect.signature(twin).parameters.values())
    where = f"{sync_cls.__name__}.{twin_name} vs {async_cls.__name__}.{name}"
    assert [(p.name, p.kind, p.default) for p in s_params] == [
        (p.name, p.kind, p.default) for p in a_params
    ], where
    for a, s in zip(a_params, s_params, strict=True):
        if (async_cls.__name__, name, a.name) in ANNOTATION_EXCEPTIONS:
            continue
        assert s.annotation == a.annotation, f"{where}: parameter {a.name}"


def test_public_sync_methods_are_all_twins() -> None:
    """Nothing extra on the sync side that has no async original (typos, leftovers)."""
    for async_cls, sync_cls in PAIRS:
        twins = {n.removesuffix("_async") for n in async_methods(async_cls)}
        public = {
            name
            for name, member in inspect.getmembers(sync_cls)
            if not name.startswith("_") and callable(member)
        }
        assert public - twins == set(), sync_cls.__name__


@pytest.fixture
async def sync_services(tmp_path: Path) -> AsyncIterator[SyncServices]:
    """A SyncServices over an engine that is never connected (no database needed)."""
    storage = Storage.from_url(f"sqlite+aiosqlite:///{tmp_path / 'never.db'}")
    try:
        yield SyncServices(Services(storage))
    finally:
        await storage.close()


@pytest.mark.anyio
async def test_sync_call_inside_event_loop_raises(
    sync_services: SyncServices, tmp_path: Path
) -> None:
    calls: list[Callable[[], object]] = [
        lambda: sync_services.queue.size(),
        lambda: sync_services.queue.enqueue("tests.helpers:func"),
        lambda: sync_services.results.get("x"),
        lambda: sync_services.events.get_latest_events(),
        lambda: sync_services.close(),
        lambda: SyncServices.open(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}"),
    ]
    for call in calls:
        with pytest.raises(SyncInAsyncContext) as err:
            call()
        assert "_async" in str(err.value) or "open_async" in str(err.value)
        assert isinstance(err.value, RuntimeError)
    assert not (tmp_path / "other.db").exists()
