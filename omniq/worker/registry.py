"""Which functions a worker may run: registered ones and allowed modules only.

A task stores its function as ``"package.module:qualname"``. A worker resolves
that reference only if the function was registered (``@task``) or its module
is in the allow-list (``allow_modules``, or modules given to ``omniq worker
--app``). Anything else fails the task with :class:`TaskNotFound`, and the
module named in the reference is never imported.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from omniq.errors import TaskNotFound
from omniq.refs import callable_ref, code_functions, resolve_ref

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["TaskRegistry", "default_registry", "task"]


class TaskRegistry:
    """Functions this process may run, by reference, plus allowed modules."""

    def __init__(
        self,
        allow_modules: Iterable[str] = (),
        *,
        parents: Iterable[TaskRegistry] = (),
        functions: dict[str, Callable[..., Any]] | None = None,
    ) -> None:
        #: Registered functions by reference (``functions``: a table shared with others).
        self._functions: dict[str, Callable[..., Any]] = {} if functions is None else functions
        self._modules: set[str] = set()
        #: Functions imported for allowed references (imported once, not per task).
        self._imported: dict[str, Callable[..., Any]] = {}
        self._lock = threading.Lock()
        #: Registries consulted too, live (functions registered there later count).
        self.parents = tuple(parents)
        for module in allow_modules:
            self.allow_module(module)

    def register(self, func: F, name: str | None = None) -> F:
        """Allow ``func`` (under its reference, or ``name``) and return it unchanged."""
        ref = name or callable_ref(func)
        with self._lock:
            self._functions[ref] = func
        return func

    def unregister(self, name: str | Callable[..., Any]) -> bool:
        """Withdraw a registered function (by reference, name or the function itself).

        Workers stop running it: its tasks then fail as not allowed (unless its
        module is allowed). Returns False if nothing was registered under it.
        """
        ref = name if isinstance(name, str) else callable_ref(name)
        with self._lock:
            self._imported.pop(ref, None)
            return self._functions.pop(ref, None) is not None

    def allow_module(self, module: str) -> None:
        """Allow every function of ``module`` (and its submodules)."""
        if not module or not all(part.isidentifier() for part in module.split(".")):
            raise TaskNotFound(f"invalid module name {module!r}")
        with self._lock:
            self._modules.add(module)

    def import_modules(self, modules: Iterable[str]) -> None:
        """Import ``modules`` now (their ``@task`` functions register) and allow them."""
        for module in modules:
            self.allow_module(module)
            importlib.import_module(module)

    def is_allowed(self, ref: str) -> bool:
        """True if ``ref`` is registered or lives in an allowed module (here or in a parent)."""
        if ref in self._functions:
            return True
        module = ref.partition(":")[0]
        if any(module == m or module.startswith(m + ".") for m in self._modules):
            return True
        return any(parent.is_allowed(ref) for parent in self.parents)

    def _registered(self, ref: str) -> Callable[..., Any] | None:
        func = self._functions.get(ref)
        if func is not None:
            return func
        for parent in self.parents:
            func = parent._registered(ref)
            if func is not None:
                return func
        return None

    def resolve(self, ref: str) -> Callable[..., Any]:
        """The function for ``ref``; :class:`TaskNotFound` if it is not allowed or missing."""
        func = self._registered(ref) or self._imported.get(ref)
        if func is not None:
            return func
        if not self.is_allowed(ref):
            raise TaskNotFound(
                f"function {ref!r} is not registered with @task and its module is not "
                "allowed on this worker (allow_modules / omniq worker --app); not imported"
            )
        # Allow-lists only grow: an allowed reference stays allowed, import it once.
        func = self._imported[ref] = resolve_ref(ref)
        return func


#: The process-wide registry that ``@omniq.task`` registers into; it also holds
#: the functions code handed over as objects (``Task(func=f)``, see omniq.refs).
default_registry = TaskRegistry(functions=code_functions)


@overload
def task(func: F, /) -> F: ...
@overload
def task(*, name: str | None = None) -> Callable[[F], F]: ...
def task(func: F | None = None, /, *, name: str | None = None) -> F | Callable[[F], F]:
    """Decorator: allow workers of this process to run ``func``."""

    def decorate(f: F) -> F:
        return default_registry.register(f, name)

    return decorate(func) if func is not None else decorate
