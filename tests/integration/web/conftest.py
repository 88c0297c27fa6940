"""The dashboard through Starlette's test client, on every engine (``db_url``).

The app under test is built on a blocking :class:`omniq.OmniQ` (its own
portal thread), so the test seeds data with plain calls while the test
client runs the ASGI app on another loop: the dashboard hands each service
call to the loop that owns the connections.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

pytest.importorskip("starlette", reason='the dashboard tests need the web extra: "omniq[web]"')

from starlette.testclient import TestClient

from omniq import OmniQ, Settings
from omniq.web import create_app

#: A client on this machine (the default access rule serves loopback only).
LOCAL = ("127.0.0.1", 50123)


@pytest.fixture
def oq(db_url: str) -> Iterator[OmniQ]:
    """A blocking OmniQ on the test database whose workers may run tests.app_tasks."""
    with OmniQ(
        url=db_url,
        settings=Settings(default_max_retries=0),
        allow_modules=["tests.app_tasks"],
    ) as app:
        yield app


@contextmanager
def dashboard(app: Any, **options: Any) -> Iterator[TestClient]:
    """A test client (on loopback) of ``create_app(app, **options)``."""
    client_address = options.pop("client", LOCAL)
    with TestClient(create_app(app, **options), client=client_address) as client:
        yield client


@pytest.fixture
def client(oq: OmniQ) -> Iterator[TestClient]:
    """The dashboard of ``oq`` with default options."""
    with dashboard(oq) as c:
        yield c


_TOKEN = re.compile(r'name="csrf" value="([^"]+)"')


def token(client: TestClient, url: str = "/tasks") -> str:
    """The CSRF token a page of the dashboard gives this client."""
    page = client.get(url)
    assert page.status_code == 200, page.text
    found = _TOKEN.search(page.text)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


def post(client: TestClient, url: str, data: dict[str, Any] | None = None) -> Any:
    """POST a form with a valid CSRF token; the redirect is not followed."""
    return client.post(url, data={"csrf": token(client), **(data or {})}, follow_redirects=False)
