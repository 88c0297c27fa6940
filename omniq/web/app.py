"""``create_app``: the dashboard as an ASGI app (Starlette), to serve or mount."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from omniq.app import AsyncOmniQ
from omniq.errors import (
    DatabaseBusy,
    DatabaseUnavailable,
    InvalidTransition,
    OmniQError,
    ScheduleNotFound,
    TaskNotFound,
    ValidationError,
)
from omniq.sync import OmniQ
from omniq.web import actions, metrics, pages
from omniq.web.backend import Backend
from omniq.web.rendering import STATIC_DIR, error_page
from omniq.web.security import (
    CSRF_FIELD,
    AccessRule,
    Refused,
    check_csrf,
    resolve_access,
)

__all__ = ["DEFAULT_BULK_CAP", "create_app"]

log = logging.getLogger("omniq.web")

#: The most tasks one "retry all" / "cancel all" changes.
DEFAULT_BULK_CAP = 1000

Handler = Callable[[Request], Awaitable[Response]]


def _guarded(handler: Handler) -> Handler:
    """``handler`` behind access control (and, for POST, read_only and CSRF), with
    every error answered by a page that says what went wrong."""

    async def endpoint(request: Request) -> Response:
        state = request.app.state
        try:
            access = await resolve_access(request, state.access)
            if not access.read:
                raise Refused(403, "access= does not allow this client to open the dashboard")
            request.state.can_act = access.act and not state.read_only
            if request.method == "POST":
                if state.read_only:
                    raise Refused(403, "this dashboard is read-only (read_only=True)")
                if not access.act:
                    raise Refused(403, "access= allows this client to look, not to act")
                form = await request.form()
                submitted = form.get(CSRF_FIELD)
                check_csrf(request, submitted if isinstance(submitted, str) else None)
                request.state.form = form
            return await handler(request)
        except Refused as exc:
            return error_page(request, exc.status, exc.message)
        except ValidationError as exc:
            return error_page(request, 400, str(exc))
        except (TaskNotFound, ScheduleNotFound) as exc:
            return error_page(request, 404, str(exc))
        except InvalidTransition as exc:
            return error_page(request, 409, str(exc))
        except (DatabaseUnavailable, DatabaseBusy) as exc:
            return error_page(request, 503, f"the database is not answering: {exc}")
        except OmniQError as exc:
            log.error("dashboard: %s: %s", type(exc).__name__, exc)
            return error_page(request, 500, f"{type(exc).__name__}: {exc}")
        except Exception:
            log.exception("dashboard: unexpected error on %s %s", request.method, request.url.path)
            return error_page(request, 500, "unexpected error; the server log has the details")

    return endpoint


async def _not_found(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "no such page", 405: "this page does not take that method"}.get(status, "error")
    return error_page(request, status, message)


def create_app(
    oq: AsyncOmniQ | OmniQ,
    *,
    access: AccessRule | None = None,
    read_only: bool = False,
    bulk_cap: int = DEFAULT_BULK_CAP,
) -> Starlette:
    """The dashboard of ``oq``'s database as an ASGI app.

    Mount it in your app (``app.mount("/omniq", create_app(oq))``; links
    follow the prefix) or serve it (``omniq dashboard``). ``access``
    receives each request and returns :class:`~omniq.web.Access` (or a
    ``(read, act)`` pair); without it only loopback clients are served.
    ``read_only=True`` hides and refuses every action. ``bulk_cap`` bounds
    "retry all" and "cancel all". With prometheus_client installed,
    ``/metrics`` serves the database gauges (see :mod:`omniq.metrics`).
    """
    if isinstance(bulk_cap, bool) or not isinstance(bulk_cap, int) or bulk_cap < 1:
        raise ValidationError("bulk_cap", f"must be a positive integer, got {bulk_cap!r}")
    g = _guarded
    routes = [
        Route("/", g(pages.overview), name="overview"),
        Route("/live", g(pages.overview_live), name="overview_live"),
        Route("/tasks", g(pages.tasks), name="tasks"),
        Route("/dead", g(pages.dead), name="dead"),
        Route("/tasks/{task_id}", g(pages.task), name="task"),
        Route("/tasks/{task_id}/retry", g(actions.task_retry), methods=["POST"], name="retry"),
        Route("/tasks/{task_id}/cancel", g(actions.task_cancel), methods=["POST"], name="cancel"),
        Route("/bulk", g(actions.bulk), methods=["POST"], name="bulk"),
        Route("/schedules", g(pages.schedules), name="schedules"),
        Route("/schedules/{schedule_id}", g(pages.schedule), name="schedule"),
        Route(
            "/schedules/{schedule_id}/{action}",
            g(actions.schedule_action),
            methods=["POST"],
            name="schedule_action",
        ),
        Route(
            "/queues/{action}",  # the queue is a form field: any name, "/" and "?" too
            g(actions.queue_action),
            methods=["POST"],
            name="queue_action",
        ),
        Route("/workers", g(pages.workers), name="workers"),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    if metrics.available():  # the database gauges for Prometheus ("omniq[metrics]")
        routes.append(Route("/metrics", g(metrics.metrics), name="metrics"))
    backend = Backend(oq)

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.close()

    app = Starlette(
        routes=routes,
        exception_handlers={404: _not_found, 405: _not_found},
        lifespan=lifespan,
    )
    app.state.backend = backend
    app.state.access = access
    app.state.read_only = read_only
    app.state.bulk_cap = bulk_cap
    return app
