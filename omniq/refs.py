"""Callable references: functions stored as ``"package.module:qualname"``.

Also the process's *code functions*: functions handed over as objects by code
(``Task(func=some_function)``), which workers of this process may run, as
they may run functions registered with ``@task``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import threading
from collections.abc import Callable
from typing import Any

from omniq.errors import SerializationError, TaskNotFound, ValidationError

__all__ = ["callable_ref", "code_functions", "function_ref", "remember_function", "resolve_ref"]


def callable_ref(func: Callable[..., Any] | str) -> str:
    """The ``"package.module:qualname"`` reference of an importable callable.

    Raises :class:`SerializationError` for lambdas, closures, bound methods of
    instances and anything that cannot be imported back by that name.
    """
    if isinstance(func, str):
        return func
    try:
        known = _REFS.get(func)
    except TypeError:  # unhashable callables are worked out each time
        known = None
    if known is not None:
        return known
    ref = _callable_ref(func)
    if len(_REFS) < _REFS_LIMIT:
        with contextlib.suppress(TypeError):
            _REFS[func] = ref
    return ref


#: References already worked out, by callable (module-level functions: a few per app).
_REFS: dict[Any, str] = {}
_REFS_LIMIT = 4096


def _callable_ref(func: Callable[..., Any]) -> str:
    if isinstance(func, functools.partial):
        raise SerializationError("functools.partial objects cannot be referenced; pass args")
    target = inspect.unwrap(func) if not hasattr(func, "__omniq_ref__") else func
    ref = getattr(func, "__omniq_ref__", None)
    if isinstance(ref, str):
        return ref
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if inspect.ismethod(func) and not inspect.isclass(func.__self__):
        raise SerializationError(
            f"{qualname} is a bound method of an instance and cannot be referenced by name; "
            "use a module-level function or a classmethod/staticmethod"
        )
    if not module or not qualname:
        raise SerializationError(f"{func!r} has no module/qualname to reference")
    if "<lambda>" in qualname or "<locals>" in qualname:
        raise SerializationError(
            f"{module}:{qualname} is a lambda or closure and cannot be imported by name; "
            "define it at module level (or opt in to pickle)"
        )
    if module == "__main__":
        import __main__

        spec = getattr(__main__, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
    return f"{module}:{qualname}"


def resolve_ref(ref: str) -> Callable[..., Any]:
    """Import ``package.module:qualname`` and return the object it names.

    This imports the module: callers that must not import arbitrary modules
    (the worker) check their allow-list before calling it.
    """
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise TaskNotFound(f"invalid function reference {ref!r}")
    parts = qualname.split(".")
    if any(p.startswith("__") and p.endswith("__") for p in parts):
        raise TaskNotFound(f"function reference {ref!r} names a dunder attribute; refused")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in parts:
            obj = getattr(obj, part)
            # "allowed.module:os.system" must not reach into modules it imports.
            if inspect.ismodule(obj):
                raise TaskNotFound(f"function reference {ref!r} leads into module {part!r}")
    except (ImportError, AttributeError) as exc:
        raise TaskNotFound(f"cannot resolve function reference {ref!r}: {exc}") from exc
    if not callable(obj):
        raise TaskNotFound(f"{ref!r} is not callable")
    return obj  # type: ignore[no-any-return]


#: Functions handed over as objects by code in this process, by reference.
#: ``omniq.worker.default_registry`` reads (and ``@task`` writes) this table.
code_functions: dict[str, Callable[..., Any]] = {}
_code_lock = threading.Lock()


def remember_function(func: Callable[..., Any], name: str | None = None) -> str:
    """Reference ``func`` (under ``name`` if given); workers of this process may run it."""
    ref = name or callable_ref(func)
    with _code_lock:
        code_functions[ref] = func
    return ref


def function_ref(value: Any, field: str) -> str:
    """:func:`callable_ref` of a task's function (or callback), refusing with a
    :class:`ValidationError` naming ``field``: not a function, or one that cannot
    be imported back by its name."""
    if not isinstance(value, str) and not callable(value):
        raise ValidationError(
            field,
            f"expected a function or a 'module:qualname' reference, got {type(value).__name__}",
        )
    try:
        return callable_ref(value)
    except SerializationError as exc:
        raise ValidationError(
            field,
            f"{exc}. A task stores its function by reference (module and name) so that "
            "any worker can import it: pass a function defined at module level",
        ) from None
