"""The dashboard's actions (POST only, CSRF-checked by the app): each one goes through
the same service call as the API and the CLI, which writes its event."""

from __future__ import annotations

from urllib.parse import quote, urlencode

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from omniq.errors import ValidationError
from omniq.services.browse import BulkAction
from omniq.web.backend import Backend
from omniq.web.forms import DEAD_STATUSES, parse_listing
from omniq.web.rendering import render

__all__ = ["bulk", "queue_action", "schedule_action", "task_cancel", "task_retry"]


def _backend(request: Request) -> Backend:
    backend: Backend = request.app.state.backend
    return backend


def _form(request: Request) -> FormData:
    form: FormData = request.state.form
    return form


def _back(request: Request, route: str, notice: str, query: str = "", **params: str) -> Response:
    path = request.url_for(route, **{k: quote(v, safe="") for k, v in params.items()}).path
    query = "&".join(x for x in (query, urlencode({"notice": notice})) if x)
    return RedirectResponse(f"{path}?{query}", status_code=303)


async def task_retry(request: Request) -> Response:
    """Requeue one failed, cancelled or expired task."""
    task_id = request.path_params["task_id"]
    await _backend(request).call(lambda s: s.queue.requeue_async(task_id))
    return _back(request, "task", "Task sent back to the queue.", task_id=task_id)


async def task_cancel(request: Request) -> Response:
    """Cancel one task (a running one is asked to stop)."""
    task_id = request.path_params["task_id"]
    changed = await _backend(request).call(lambda s: s.queue.cancel_async(task_id))
    notice = "Task cancelled (or asked to stop)." if changed else "The task had already finished."
    return _back(request, "task", notice, task_id=task_id)


async def schedule_action(request: Request) -> Response:
    """Pause, resume or cancel a schedule."""
    schedule_id = request.path_params["schedule_id"]
    action = request.path_params["action"]
    calls = {
        "pause": lambda s: s.queue.pause_schedule_async(schedule_id),
        "resume": lambda s: s.queue.resume_schedule_async(schedule_id),
        "cancel": lambda s: s.queue.cancel_schedule_async(schedule_id),
    }
    if action not in calls:
        raise ValidationError("action", f"unknown schedule action {action!r}")
    changed = await _backend(request).call(calls[action])
    return _back(request, "schedule", f"Schedule is {changed.status}.", schedule_id=schedule_id)


async def queue_action(request: Request) -> Response:
    """Pause or resume the queue named by the form's ``queue`` field (workers stop or
    resume claiming its tasks)."""
    queue = _form(request).get("queue")
    if not isinstance(queue, str) or not queue:
        raise ValidationError("queue", "name the queue to pause or resume")
    action = request.path_params["action"]
    if action not in ("pause", "resume"):
        raise ValidationError("action", f"unknown queue action {action!r}")
    backend = _backend(request)
    if action == "pause":
        await backend.call(lambda s: s.queue.pause_queue_async(queue))
    else:
        await backend.call(lambda s: s.queue.resume_queue_async(queue))
    done = "paused" if action == "pause" else "resumed"
    return _back(request, "overview", f"Queue {queue} {done}.")


async def bulk(request: Request) -> Response:
    """Retry or cancel every task matching a filter, up to the cap, after a confirmation.

    Without ``confirmed`` this answers a page that states how many tasks the
    action applies to and the cap; confirming it posts again with ``confirmed``.
    """
    form = _form(request)
    try:
        action = BulkAction(str(form.get("action", "")))
    except ValueError:
        raise ValidationError("action", "must be retry or cancel") from None
    view = "dead" if form.get("view") == "dead" else "tasks"
    values = {k: str(v) for k, v in form.items() if isinstance(v, str)}
    statuses = [str(v) for v in form.getlist("status")]
    listing = parse_listing(values, statuses, allowed=DEAD_STATUSES if view == "dead" else None)
    cap: int = request.app.state.bulk_cap
    backend = _backend(request)
    if form.get("confirmed") != "yes":
        count = await backend.browse(lambda b: b.actionable_async(action, listing.filter, cap))
        return render(
            request,
            "confirm.html",
            action=action.value,
            count=count,
            cap=cap,
            view=view,
            listing=listing,
        )
    outcome = await backend.browse(lambda b: b.apply_async(action, listing.filter, cap))
    done = "retried" if action is BulkAction.RETRY else "cancelled"
    notice = f"{outcome.changed} task(s) {done}"
    if outcome.skipped:
        notice += f"; {outcome.skipped} had changed meanwhile and were left alone"
    return _back(request, view, notice + ".", query=listing.query(cursor=None))
