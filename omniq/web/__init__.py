"""The OmniQ dashboard: ``create_app(oq)`` is an ASGI app to mount or serve.

Needs the ``web`` extra (``pip install "omniq[web]"``): Starlette, Jinja2,
uvicorn. The core package never imports this one.
"""

from __future__ import annotations

from omniq.web.app import DEFAULT_BULK_CAP, create_app
from omniq.web.security import Access

__all__ = ["DEFAULT_BULK_CAP", "Access", "create_app"]
