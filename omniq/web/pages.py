"""The dashboard's pages (GET only: nothing here changes anything)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from omniq.errors import ScheduleNotFound, TaskNotFound, ValidationError
from omniq.models import ScheduleStatus, TaskStatus
from omniq.services.browse import RETRYABLE, BulkAction
from omniq.web.backend import Backend
from omniq.web.chart import throughput_chart
from omniq.web.forms import DEAD_STATUSES, parse_listing
from omniq.web.rendering import render

__all__ = ["dead", "overview", "overview_live", "schedule", "schedules", "task", "tasks", "workers"]

PAGE_SIZE = 50


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


async def _overview_context(request: Request) -> dict[str, Any]:
    data = await _backend(request).overview(lambda reader: reader.overview_async())
    return {
        "data": data,
        "chart": throughput_chart(data.throughput),
        "statuses": list(TaskStatus),
        "lost_after": _backend(request).settings.lease_duration,
    }


async def overview(request: Request) -> Response:
    """Per queue counts and backlog age, throughput, workers, schedules due soon."""
    return render(request, "overview.html", **await _overview_context(request))


async def overview_live(request: Request) -> Response:
    """The overview's live part alone (fetched every few seconds by the page)."""
    return render(request, "overview_live.html", **await _overview_context(request))


async def _listing(request: Request, view: str) -> Response:
    allowed = DEAD_STATUSES if view == "dead" else None
    params = request.query_params
    listing = parse_listing(params, params.getlist("status"), allowed=allowed)
    page = await _backend(request).browse(
        lambda b: b.page_async(listing.filter, listing.sort, cursor=listing.cursor, limit=PAGE_SIZE)
    )
    return render(
        request,
        "tasks.html",
        view=view,
        listing=listing,
        page=page,
        statuses=sorted(allowed, key=list(TaskStatus).index) if allowed else list(TaskStatus),
        retryable=RETRYABLE,
        actions=[a.value for a in BulkAction],
    )


async def tasks(request: Request) -> Response:
    """Tasks by queue, status, function, tag, name and time, newest (or most urgent) first."""
    return await _listing(request, "tasks")


async def dead(request: Request) -> Response:
    """Dead letters: failed, cancelled and expired tasks, with the same filters."""
    return await _listing(request, "dead")


async def task(request: Request) -> Response:
    """One task: options, status, attempts, errors, timeline, result, relations."""
    task_id = request.path_params["task_id"]
    detail = await _backend(request).browse(lambda b: b.detail_async(task_id))
    if detail is None:
        raise TaskNotFound(f"no task with id {task_id!r}")
    attempts = await _backend(request).call(lambda s: s.queue.get_attempts_async(task_id))
    progress = await _backend(request).call(lambda s: s.queue.get_progress_async(task_id))
    return render(
        request,
        "task.html",
        d=detail,
        t=detail.task,
        attempts=attempts,
        progress=progress,
        show_arguments=_backend(request).settings.log_arguments,
        retryable=RETRYABLE,
    )


async def schedules(request: Request) -> Response:
    """Every schedule (or those of one status), oldest first, a page at a time."""
    status = request.query_params.get("status") or None
    if status is not None and status not in {s.value for s in ScheduleStatus}:
        names = ", ".join(s.value for s in ScheduleStatus)
        raise ValidationError("status", f"unknown schedule status {status!r} (one of: {names})")
    raw_page = request.query_params.get("page", "1")
    if not (raw_page.isascii() and raw_page.isdigit()) or not 1 <= int(raw_page) <= 100_000:
        raise ValidationError("page", f"must be a page number, got {raw_page!r}")
    number = int(raw_page)
    rows = await _backend(request).call(
        lambda s: s.queue.list_schedules_async(
            status, limit=PAGE_SIZE + 1, offset=(number - 1) * PAGE_SIZE
        )
    )
    return render(
        request,
        "schedules.html",
        schedules=rows[:PAGE_SIZE],
        more=len(rows) > PAGE_SIZE,
        number=number,
        status=status,
        statuses=list(ScheduleStatus),
    )


async def schedule(request: Request) -> Response:
    """One schedule."""
    schedule_id = request.path_params["schedule_id"]
    found = await _backend(request).call(lambda s: s.queue.get_schedule_async(schedule_id))
    if found is None:
        raise ScheduleNotFound(f"no schedule with id {schedule_id!r}")
    return render(request, "schedule.html", s=found)


async def workers(request: Request) -> Response:
    """Registered workers: alive, or lost when silent past the lease."""
    rows = await _backend(request).call(lambda s: s.workers.list_workers_async())
    return render(
        request,
        "workers.html",
        workers=rows,
        lost_after=_backend(request).settings.lease_duration,
    )
