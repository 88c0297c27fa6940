"""Sync twins of the async services, all through one portal (see ``omniq._portal``).

Every public ``*_async`` method has a twin here without the suffix and with
the same signature; each twin is one line.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import sqlalchemy as sa

from omniq._portal import run_sync, sync_twin
from omniq.app import AsyncOmniQ, TaskHandle
from omniq.config import OmniQConfig
from omniq.errors import ConfigurationError
from omniq.models import Settings, Task
from omniq.services import EventStorage, ResultStorage, Services, TaskQueue, WorkflowService
from omniq.services.caller_tx import is_sync_transaction, run_inline
from omniq.worker import Worker
from omniq.workflows import Signature, WorkflowHandle

P = ParamSpec("P")
R = TypeVar("R")

__all__ = [
    "OmniQ",
    "SyncEventStorage",
    "SyncResultStorage",
    "SyncServices",
    "SyncTaskQueue",
    "SyncWorker",
    "SyncWorkflowService",
]


def tx_twin(async_method: Callable[..., Any]) -> Callable[..., Any]:
    """:func:`sync_twin` of a method taking ``connection=`` / ``session=``.

    Given a sync Connection or Session, the work runs on the calling thread,
    in that transaction (a sync connection is not handed to another thread);
    otherwise through the portal like every twin.
    """
    portal_twin = sync_twin(async_method)
    name = async_method.__name__

    @functools.wraps(async_method)
    def method(self: Any, /, *args: Any, **kwargs: Any) -> Any:
        if not is_sync_transaction(kwargs):
            return portal_twin(self, *args, **kwargs)
        target = self._async
        if not target._ready_for_caller_tx():
            run_sync(target._prepare_caller_tx_async)
        return run_inline(getattr(target, name)(*args, **kwargs))

    method.__name__ = portal_twin.__name__
    method.__qualname__ = portal_twin.__qualname__
    return method


class SyncTaskQueue:
    """Blocking twin of :class:`omniq.services.TaskQueue`."""

    def __init__(self, queue: TaskQueue) -> None:
        self._async = queue

    build_task = property(lambda self: self._async.build_task)
    enqueue = tx_twin(TaskQueue.enqueue_async)
    enqueue_many = tx_twin(TaskQueue.enqueue_many_async)
    enqueue_together = tx_twin(TaskQueue.enqueue_together_async)
    dequeue = sync_twin(TaskQueue.dequeue_async)
    dequeue_many = sync_twin(TaskQueue.dequeue_many_async)
    dequeue_ids = sync_twin(TaskQueue.dequeue_ids_async)
    complete = sync_twin(TaskQueue.complete_async)
    complete_many = sync_twin(TaskQueue.complete_many_async)
    settle_completions = sync_twin(TaskQueue.settle_completions_async)
    cancels_requested = sync_twin(TaskQueue.cancels_requested_async)
    fail = sync_twin(TaskQueue.fail_async)
    release = sync_twin(TaskQueue.release_async)
    release_many = sync_twin(TaskQueue.release_many_async)
    mark_started = sync_twin(TaskQueue.mark_started_async)
    fail_many = sync_twin(TaskQueue.fail_many_async)
    settle_orphans = sync_twin(TaskQueue.settle_orphans_async)
    renew_leases = sync_twin(TaskQueue.renew_leases_async)
    recover_expired_leases = sync_twin(TaskQueue.recover_expired_leases_async)
    cancel = sync_twin(TaskQueue.cancel_async)
    requeue = sync_twin(TaskQueue.requeue_async)
    update_task = sync_twin(TaskQueue.update_task_async)
    delete_task = sync_twin(TaskQueue.delete_task_async)
    clear = sync_twin(TaskQueue.clear_async)
    get_task = sync_twin(TaskQueue.get_task_async)
    list_tasks = sync_twin(TaskQueue.list_tasks_async)
    get_attempts = sync_twin(TaskQueue.get_attempts_async)
    get_progress = sync_twin(TaskQueue.get_progress_async)
    size = sync_twin(TaskQueue.size_async)
    stats = sync_twin(TaskQueue.stats_async)
    set_queue_limit = sync_twin(TaskQueue.set_queue_limit_async)
    clear_queue_limit = sync_twin(TaskQueue.clear_queue_limit_async)
    get_queue_limit = sync_twin(TaskQueue.get_queue_limit_async)
    list_queue_limits = sync_twin(TaskQueue.list_queue_limits_async)
    pause_queue = sync_twin(TaskQueue.pause_queue_async)
    resume_queue = sync_twin(TaskQueue.resume_queue_async)
    list_paused_queues = sync_twin(TaskQueue.list_paused_queues_async)
    prune_limits = sync_twin(TaskQueue.prune_limits_async)
    expire_due = sync_twin(TaskQueue.expire_due_async)
    quarantine_unknown_statuses = sync_twin(TaskQueue.quarantine_unknown_statuses_async)
    cancel_running = sync_twin(TaskQueue.cancel_running_async)
    heartbeat = sync_twin(TaskQueue.heartbeat_async)
    purge_finished = sync_twin(TaskQueue.purge_finished_async)
    schedule = tx_twin(TaskQueue.schedule_async)
    upsert_schedule = sync_twin(TaskQueue.upsert_schedule_async)
    get_schedule = sync_twin(TaskQueue.get_schedule_async)
    list_schedules = sync_twin(TaskQueue.list_schedules_async)
    get_ready_schedules = sync_twin(TaskQueue.get_ready_schedules_async)
    update_schedule = sync_twin(TaskQueue.update_schedule_async)
    pause_schedule = sync_twin(TaskQueue.pause_schedule_async)
    resume_schedule = sync_twin(TaskQueue.resume_schedule_async)
    cancel_schedule = sync_twin(TaskQueue.cancel_schedule_async)
    delete_schedule = sync_twin(TaskQueue.delete_schedule_async)


class SyncResultStorage:
    """Blocking twin of :class:`omniq.services.ResultStorage`."""

    def __init__(self, results: ResultStorage) -> None:
        self._async = results

    store = sync_twin(ResultStorage.store_async)
    get = sync_twin(ResultStorage.get_async)
    get_latest = sync_twin(ResultStorage.get_latest_async)
    list_results = sync_twin(ResultStorage.list_results_async)
    get_results = sync_twin(ResultStorage.get_results_async)
    update = sync_twin(ResultStorage.update_async)
    delete = sync_twin(ResultStorage.delete_async)
    cleanup_expired = sync_twin(ResultStorage.cleanup_expired_async)
    get_stats = sync_twin(ResultStorage.get_stats_async)
    wait = sync_twin(ResultStorage.wait_async)


class SyncWorkflowService:
    """Blocking twin of :class:`omniq.services.WorkflowService`."""

    def __init__(self, workflows: WorkflowService) -> None:
        self._async = workflows

    enqueue = tx_twin(WorkflowService.enqueue_async)
    get = sync_twin(WorkflowService.get_async)
    result = sync_twin(WorkflowService.result_async)


class SyncEventStorage:
    """Blocking twin of :class:`omniq.services.EventStorage`."""

    def __init__(self, events: EventStorage) -> None:
        self._async = events

    log = sync_twin(EventStorage.log_async)
    log_many = sync_twin(EventStorage.log_many_async)
    get_events = sync_twin(EventStorage.get_events_async)
    get_latest_events = sync_twin(EventStorage.get_latest_events_async)
    cleanup_expired = sync_twin(EventStorage.cleanup_expired_async)
    get_stats = sync_twin(EventStorage.get_stats_async)


class SyncServices:
    """Blocking twin of :class:`omniq.services.Services`; use as a context manager."""

    def __init__(self, services: Services) -> None:
        self._async = services
        self.queue = SyncTaskQueue(services.queue)
        self.results = SyncResultStorage(services.results)
        self.events = SyncEventStorage(services.events)
        self.workflows = SyncWorkflowService(services.workflows)

    @classmethod
    def open(
        cls,
        url: str | sa.URL,
        settings: Settings | None = None,
        *,
        queues: Sequence[str] | None = None,
        **engine_kwargs: Any,
    ) -> SyncServices:
        """Connect to ``url`` and check the schema (blocking)."""
        return cls(run_sync(Services.open_async, url, settings, queues=queues, **engine_kwargs))

    close = sync_twin(Services.close_async)

    def __enter__(self) -> SyncServices:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


class SyncWorker:
    """Blocking twin of :class:`omniq.worker.Worker`; ``start`` runs it in the portal thread."""

    def __init__(self, worker: Worker) -> None:
        self._async = worker

    @property
    def worker_id(self) -> str:
        """The worker's id."""
        return self._async.worker_id

    start = sync_twin(Worker.start_async)
    stop = sync_twin(Worker.stop_async)
    run_until_complete = sync_twin(Worker.run_until_complete_async)
    process_task = sync_twin(Worker.process_task_async)
    run_claimed = sync_twin(Worker.run_claimed_async)
    get_stats = sync_twin(Worker.get_stats_async)

    def _stop_for_exit(self) -> None:
        self._async.stop_for_exit("signal received")
        self.stop()

    def run(self, *, install_signal_handlers: bool = False) -> None:
        """Work until :meth:`stop` (from another thread); Ctrl-C stops it gracefully.

        With ``install_signal_handlers`` (main thread only), SIGTERM and SIGINT
        stop it gracefully too, and ``run`` returns then.
        """
        previous: dict[signal.Signals, Any] = {}
        if install_signal_handlers:
            if threading.current_thread() is not threading.main_thread():
                raise ConfigurationError("install_signal_handlers=True needs the main thread")

            def on_signal(_signum: int, _frame: Any) -> None:
                # The handler runs in this thread, which waits for run_async: stop
                # elsewhere, on the worker's loop, as for a process about to exit.
                threading.Thread(target=self._stop_for_exit, name="omniq-stop", daemon=True).start()

            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, on_signal)
        try:
            run_sync(self._async.run_async)
        except KeyboardInterrupt:
            self.stop()
            raise
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


class OmniQ:
    """Blocking twin of :class:`omniq.AsyncOmniQ`: the same API without ``_async``.

    Use ``with OmniQ(...) as oq``. Everything runs on OmniQ's portal thread,
    so it works from plain scripts and from many threads at once.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._async = kwargs.pop("_app", None) or AsyncOmniQ(*args, **kwargs)

    @classmethod
    def _wrap(cls, app: AsyncOmniQ) -> OmniQ:
        return cls(_app=app)

    @classmethod
    def from_config(cls, config: OmniQConfig, **overrides: Any) -> OmniQ:
        """Build from an :class:`omniq.config.OmniQConfig`."""
        return cls._wrap(AsyncOmniQ.from_config(config, **overrides))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> OmniQ:
        """Build from a mapping."""
        return cls._wrap(AsyncOmniQ.from_dict(data, **overrides))

    @classmethod
    def from_env(cls, **overrides: Any) -> OmniQ:
        """Build from ``OMNIQ_*`` environment variables."""
        return cls._wrap(AsyncOmniQ.from_env(**overrides))

    @classmethod
    def from_config_file(cls, path: str | os.PathLike[str], **overrides: Any) -> OmniQ:
        """Build from a TOML or JSON file."""
        return cls._wrap(AsyncOmniQ.from_config_file(path, **overrides))

    @classmethod
    def from_backend(cls, backend: Any, **overrides: Any) -> OmniQ:
        """Build on a seed-style backend."""
        return cls._wrap(AsyncOmniQ.from_backend(backend, **overrides))

    @property
    def app(self) -> AsyncOmniQ:
        """The async facade underneath."""
        return self._async

    @overload
    def task(
        self, func: Callable[P, R], /, *, queue_name: str | None = None, **options: Any
    ) -> TaskHandle[P, R]: ...
    @overload
    def task(
        self, func: None = None, /, *, queue_name: str | None = None, **options: Any
    ) -> Callable[[Callable[P, R]], TaskHandle[P, R]]: ...
    def task(
        self, func: Callable[P, R] | None = None, /, **options: Any
    ) -> TaskHandle[P, R] | Callable[[Callable[P, R]], TaskHandle[P, R]]:
        """Decorator: register a function and give it ``enqueue`` (see AsyncOmniQ.task)."""
        if func is None:
            return self._async.task(**options)
        return self._async.task(func, **options)

    def periodic(self, **options: Any) -> Callable[[Callable[P, R]], TaskHandle[P, R]]:
        """Decorator: a task that also runs on ``cron=`` or every ``interval=`` (see
        :meth:`AsyncOmniQ.periodic`); its schedule is upserted by name when the app opens."""
        return self._async.periodic(**options)

    def build_task(self, func: Callable[..., Any] | str, *args: Any, **options: Any) -> Task:
        """A Task record for :meth:`enqueue_many`."""
        return self._async.build_task(func, *args, **options)

    def __enter__(self) -> OmniQ:
        self.open()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    open = sync_twin(AsyncOmniQ.open_async)
    close = sync_twin(AsyncOmniQ.close_async)
    enqueue = tx_twin(AsyncOmniQ.enqueue_async)
    enqueue_many = tx_twin(AsyncOmniQ.enqueue_many_async)
    get_task = sync_twin(AsyncOmniQ.get_task_async)
    get_result = sync_twin(AsyncOmniQ.get_result_async)
    list_results = sync_twin(AsyncOmniQ.list_results_async)
    get_attempts = sync_twin(AsyncOmniQ.get_attempts_async)
    get_progress = sync_twin(AsyncOmniQ.get_progress_async)
    cancel = sync_twin(AsyncOmniQ.cancel_async)
    requeue = sync_twin(AsyncOmniQ.requeue_async)
    list_tasks = sync_twin(AsyncOmniQ.list_tasks_async)
    schedule = tx_twin(AsyncOmniQ.schedule_async)
    get_schedule = sync_twin(AsyncOmniQ.get_schedule_async)
    pause_schedule = sync_twin(AsyncOmniQ.pause_schedule_async)
    resume_schedule = sync_twin(AsyncOmniQ.resume_schedule_async)
    cancel_schedule = sync_twin(AsyncOmniQ.cancel_schedule_async)
    list_schedules = sync_twin(AsyncOmniQ.list_schedules_async)
    get_events = sync_twin(AsyncOmniQ.get_events_async)
    stats = sync_twin(AsyncOmniQ.stats_async)
    set_queue_limit = sync_twin(AsyncOmniQ.set_queue_limit_async)
    clear_queue_limit = sync_twin(AsyncOmniQ.clear_queue_limit_async)
    get_queue_limit = sync_twin(AsyncOmniQ.get_queue_limit_async)
    list_queue_limits = sync_twin(AsyncOmniQ.list_queue_limits_async)
    pause_queue = sync_twin(AsyncOmniQ.pause_queue_async)
    resume_queue = sync_twin(AsyncOmniQ.resume_queue_async)
    list_paused_queues = sync_twin(AsyncOmniQ.list_paused_queues_async)
    cleanup = sync_twin(AsyncOmniQ.cleanup_async)
    start_worker = sync_twin(AsyncOmniQ.start_worker_async)
    stop_worker = sync_twin(AsyncOmniQ.stop_worker_async)
    run_worker = sync_twin(AsyncOmniQ.run_worker_async)
    list_workers = sync_twin(AsyncOmniQ.list_workers_async)
    enqueue_workflow = tx_twin(AsyncOmniQ.enqueue_workflow_async)
    get_workflow = sync_twin(AsyncOmniQ.get_workflow_async)

    def signature(self, func: Callable[..., Any] | str, /, *args: Any, **kwargs: Any) -> Signature:
        """A workflow member (see :meth:`AsyncOmniQ.signature`)."""
        return self._async.signature(func, *args, **kwargs)

    def workflow(self, workflow_id: str) -> WorkflowHandle:
        """The handle of an enqueued workflow, by id."""
        return self._async.workflow(workflow_id)
