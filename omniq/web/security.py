"""Who may see and steer the dashboard, and proof that a POST came from its own page.

- ``access``: a callable given the request, returning :class:`Access` (or a
  ``(read, act)`` pair), possibly awaitable. Without one, only clients on
  loopback are served: the dashboard shows every task's data, so exposing
  it takes a decision (``create_app(oq, access=...)``).
- ``read_only``: no action is shown, and every POST is refused.
- CSRF: a random token in a cookie (SameSite=Strict) that every form repeats
  in a hidden field (double submit); a POST whose field does not match the
  cookie, or whose Origin is another site, is refused. Nothing changes on GET.
"""

from __future__ import annotations

import hmac
import inspect
import ipaddress
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import attrs
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["CSRF_COOKIE", "CSRF_FIELD", "Access", "AccessRule", "Refused", "check_csrf"]

CSRF_COOKIE = "omniq_csrf"
CSRF_FIELD = "csrf"


@attrs.frozen
class Access:
    """What a request may do: see the dashboard (``read``), change things (``act``)."""

    read: bool = True
    act: bool = False


AccessRule = Callable[
    [Request], "Access | tuple[bool, bool] | Awaitable[Access | tuple[bool, bool]]"
]


class Refused(Exception):
    """The request may not do this: answered with ``status`` and ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def is_loopback(request: Request) -> bool:
    """True when the client connected from this machine (127.0.0.0/8 or ::1)."""
    host = request.client.host if request.client else ""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def resolve_access(request: Request, rule: AccessRule | None) -> Access:
    """The :class:`Access` of ``request`` under ``rule`` (None: loopback only)."""
    if rule is None:
        if not is_loopback(request):
            raise Refused(
                403,
                "This OmniQ dashboard only answers clients on this machine (loopback). "
                "To open it to others, pass access= to omniq.web.create_app: a function "
                "that receives the request and returns Access(read=..., act=...).",
            )
        return Access(read=True, act=True)
    decided: Any = rule(request)
    if inspect.isawaitable(decided):
        decided = await decided
    if isinstance(decided, Access):
        return decided
    if (
        isinstance(decided, tuple)
        and len(decided) == 2
        and all(isinstance(x, bool) for x in decided)
    ):
        return Access(read=decided[0], act=decided[1])
    raise TypeError(f"access= must return Access or (read, act), got {decided!r}")


def csrf_token(request: Request) -> str:
    """This client's CSRF token (a new one if it has none yet; see :func:`set_csrf_cookie`)."""
    token = request.cookies.get(CSRF_COOKIE)
    if not token or len(token) != 43:
        token = getattr(request.state, "new_csrf", None) or secrets.token_urlsafe(32)
        request.state.new_csrf = token
    return token


def set_csrf_cookie(request: Request, response: Response) -> None:
    """Send the token made for this request (if one was made) as a cookie."""
    token = getattr(request.state, "new_csrf", None)
    if token:
        root = request.scope.get("root_path") or "/"
        response.set_cookie(
            CSRF_COOKIE, token, path=root, httponly=True, samesite="strict", secure=False
        )


def check_csrf(request: Request, submitted: str | None) -> None:
    """Refuse a POST whose token does not match the cookie, or that came from another site."""
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise Refused(403, "refused: the form was sent from another site (Origin mismatch)")
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie or not submitted or not hmac.compare_digest(cookie, submitted):
        raise Refused(
            403,
            "refused: the form's CSRF token is missing or stale; reload the page and try again",
        )
