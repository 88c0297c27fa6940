"""TaskHandle: what ``@oq.task`` returns (the function, typed, plus ``enqueue``)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar

from omniq.refs import callable_ref

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

    from omniq.app import AsyncOmniQ
    from omniq.models.limits import Limit, Rate
    from omniq.workflows import Signature

P = ParamSpec("P")
R = TypeVar("R")

__all__ = ["TaskHandle"]


class TaskHandle(Generic[P, R]):
    """A function registered with ``@oq.task``: still callable, plus ``enqueue``.

    Typed with the function's parameters: under mypy, ``handle(...)``,
    ``handle.enqueue(...)`` and ``handle.enqueue_async(...)`` check their
    arguments against the function's signature. Enqueue options (priority,
    run_in, ...) go through :meth:`with_options`, so they never collide with
    the function's own parameter names.
    """

    def __init__(self, app: AsyncOmniQ, func: Callable[P, R], options: dict[str, Any]) -> None:
        self.app = app
        self.func = func
        self.options = options
        self.ref = callable_ref(func)
        #: What enqueue names: the function itself when a limit's key is
        #: taken from its arguments (bound by its signature), else its reference.
        self._target: Callable[..., Any] | str = (
            func if options.get("concurrency") or options.get("rate") else self.ref
        )
        functools.update_wrapper(self, func)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.func(*args, **kwargs)

    def with_options(
        self,
        *,
        queue_name: str | None = None,
        priority: int | None = None,
        run_at: datetime | None = None,
        run_in: timedelta | float | None = None,
        ttl: timedelta | float | None = None,
        result_ttl: timedelta | float | None = None,
        max_retries: int | None = None,
        retry_delay: timedelta | float | None = None,
        timeout: timedelta | float | None = None,
        depends_on: Sequence[str] | None = None,
        callback: Callable[..., Any] | str | None = None,
        callback_args: Sequence[Any] | None = None,
        unique_key: str | None = None,
        name: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        store_result: bool | None = None,
        on_duplicate: Literal["return", "raise"] | None = None,
        concurrency: Limit | None = None,
        rate: Rate | None = None,
        concurrency_key: str | None = None,
        rate_key: str | None = None,
    ) -> TaskHandle[P, R]:
        """A copy of this handle whose enqueues use these options (over the decorator's).

        ``send_email.with_options(priority=5, run_in=60).enqueue("ada@example.org")``;
        ``concurrency_key=`` / ``rate_key=`` set the keys of its limits for these calls.
        """
        given = {k: v for k, v in locals().items() if k != "self" and v is not None}
        return TaskHandle(self.app, self.func, {**self.options, **given})

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A workflow member calling this function with these arguments (and the
        handle's options): ``chain(add.s(1, 2), double.s())``. In a chain or
        chord the previous result comes first, before these positional arguments
        (so they are not checked against the function's signature: some are missing)."""
        from omniq.workflows import Signature

        options = {k: v for k, v in self.options.items() if k != "on_duplicate"}
        return Signature(self.ref, args, kwargs, options, call=self.func)

    async def enqueue_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Enqueue a call with these arguments and the handle's options; return its id."""
        return await self.app.enqueue_async(self._target, list(args), kwargs, **self.options)

    def enqueue(self, *args: P.args, **kwargs: P.kwargs) -> str:
        """Blocking twin of :meth:`enqueue_async`.

        Called from another thread while the app runs on its own event loop
        (a sync endpoint of an async web app), the call is handed to that loop.
        """
        from omniq._portal import run_sync_on

        return run_sync_on(self.app.loop, self.enqueue_async, *args, **kwargs)

    # --- in the caller's transaction (see AsyncOmniQ.enqueue_async's connection=) ---

    async def enqueue_in_async(
        self,
        tx: AsyncConnection | AsyncSession | sa.Connection | Session,
        /,
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> str:
        """Enqueue a call in the open transaction of ``tx`` (the application's
        connection or ORM session); it exists once that transaction commits."""
        return await self.app.enqueue_async(
            self._target, list(args), kwargs, **self.options, **_tx_argument(tx)
        )

    def enqueue_in(self, tx: sa.Connection | Session, /, *args: P.args, **kwargs: P.kwargs) -> str:
        """Blocking twin of :meth:`enqueue_in_async`, for a sync Connection or Session;
        it runs on the calling thread, in that transaction."""
        from omniq.errors import ValidationError
        from omniq.services.caller_tx import run_inline

        if not _is_sync_tx(tx):
            raise ValidationError(
                "tx",
                "enqueue_in takes a sync Connection or Session; "
                "use `await handle.enqueue_in_async(...)` with an AsyncConnection or AsyncSession",
            )
        self.app._prepare_for_sync_caller_tx()
        return run_inline(self.enqueue_in_async(tx, *args, **kwargs))


def _tx_argument(tx: Any) -> dict[str, Any]:
    from sqlalchemy.ext.asyncio import AsyncSession
    from sqlalchemy.orm import Session

    return {"session": tx} if isinstance(tx, Session | AsyncSession) else {"connection": tx}


def _is_sync_tx(tx: Any) -> bool:
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    return isinstance(tx, sa.Connection | Session)
