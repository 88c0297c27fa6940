"""Templates (Jinja2, autoescaped), their filters, links under any mount prefix, error pages."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jinja2
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

from omniq.web.security import CSRF_FIELD, csrf_token, set_csrf_cookie

__all__ = ["STATIC_DIR", "error_page", "render"]

HERE = Path(__file__).resolve().parent
STATIC_DIR = HERE / "static"


def _when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(value: timedelta | None) -> str:
    if value is None:
        return ""
    s = int(value.total_seconds())
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60}m"
    return f"{s // 86400}d {s % 86400 // 3600}h"


def _duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    return f"{value.total_seconds():g}s"


def _as_json(value: Any) -> str:
    try:
        return json.dumps(value, indent=2, sort_keys=True, default=repr, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(value)


@jinja2.pass_context
def _path(context: Any, name: str, query: str | dict[str, str] = "", **params: Any) -> str:
    """The path of route ``name`` under the app's mount prefix, with a query string."""
    request: Request = context["request"]
    # An id is one path segment: "?" or "#" in it must not end the path there (a
    # static file's ``path`` keeps its folders).
    quoted = {k: quote(str(v), safe="/" if k == "path" else "") for k, v in params.items()}
    path = request.url_for(name, **quoted).path
    if isinstance(query, dict):
        query = urlencode({k: v for k, v in query.items() if v is not None})
    return f"{path}?{query}" if query else path


@jinja2.pass_context
def _csrf_field(context: Any) -> Any:
    token = csrf_token(context["request"])
    return Markup(f'<input type="hidden" name="{CSRF_FIELD}" value="{token}">')


_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(HERE / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
_env.filters.update(when=_when, age=_age, duration=_duration, as_json=_as_json)
_env.globals.update(path=_path, csrf_field=_csrf_field)
templates = Jinja2Templates(env=_env)


def render(request: Request, name: str, *, status_code: int = 200, **context: Any) -> Response:
    """The HTML of template ``name``; sets the CSRF cookie on a client's first page."""
    state = request.app.state
    context.setdefault("can_act", getattr(request.state, "can_act", False))
    context.setdefault("read_only", state.read_only)
    context.setdefault("notice", request.query_params.get("notice"))
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    set_csrf_cookie(request, response)
    return response


def error_page(request: Request, status: int, message: str) -> Response:
    """A page that says what went wrong (never a traceback)."""
    titles = {400: "Bad request", 403: "Forbidden", 404: "Not found", 409: "Conflict"}
    title = titles.get(status, "Error" if status < 500 else "Server error")
    return render(
        request, "error.html", status_code=status, title=title, message=message, can_act=False
    )
