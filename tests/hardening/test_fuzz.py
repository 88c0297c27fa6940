"""Fuzzing the edges: random and adversarial values into enqueue, enqueue_many, schedules,
queries and the CLI.

The contract under test: every call either succeeds or raises an
:class:`omniq.errors.OmniQError` whose message names the offending field (the
CLI: exit 0, or exit 1/2 with one ``omniq: error: ...`` line); what succeeded
reads back; a failed ``enqueue_many`` wrote none of its tasks; and the SQLite
file passes ``PRAGMA integrity_check`` after every example. Any other
exception escaping is a bug, and Hypothesis reports its minimal example.

Each example perturbs one field with an adversarial value, the others being
valid, so that an error can be held to naming that field. Async calls go
through one blocking portal (one event loop, one open AsyncOmniQ per test).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from omniq.app import AsyncOmniQ
from omniq.errors import OmniQError, TaskNotFound, ValidationError
from omniq.models import Task
from tests.hardening import ROOT, ref

T = TypeVar("T")

#: Examples per property and engine: the whole module stays well under a minute.
EXAMPLES = {"sqlite": 60, "postgres": 15}
#: OMNIQ_FUZZ_EXPLORE=N: N times the examples, randomized (a longer local hunt for bugs).
EXPLORE = int(os.environ.get("OMNIQ_FUZZ_EXPLORE", "0") or 0)


def fuzz_settings(n: int) -> settings:
    return settings(
        max_examples=n * EXPLORE if EXPLORE else n,
        deadline=None,
        derandomize=not EXPLORE,  # reproducible in CI; a failure prints its minimal example
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
        ],
    )


# --- the harness: one event loop and one open AsyncOmniQ per test ---------------------------------


@attrs.define
class Harness:
    portal: BlockingPortal
    oq: AsyncOmniQ
    url: str

    @property
    def engine(self) -> str:
        return "sqlite" if self.url.startswith("sqlite") else "postgres"

    @property
    def examples(self) -> int:
        return EXAMPLES[self.engine]

    def run(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``fn(*args, **kwargs)`` on the portal's loop."""
        return self.portal.call(functools.partial(fn, *args, **kwargs))

    def attempt(
        self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> tuple[T | None, OmniQError | None]:
        """The result, or the OmniQError raised; any other exception escapes (a bug)."""
        try:
            return self.run(fn, *args, **kwargs), None
        except OmniQError as exc:
            return None, exc

    def count(self) -> int:
        stats = self.run(self.oq.services.queue.stats_async)
        return sum(n for per in stats.values() for n in per.values())

    def check_integrity(self) -> None:
        if self.engine != "sqlite":
            return
        path = self.url.removeprefix("sqlite+aiosqlite:///")
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


@pytest.fixture
def harness(db_url: str) -> Iterator[Harness]:
    with start_blocking_portal() as portal:
        oq = AsyncOmniQ(url=db_url)
        portal.call(oq.open_async)
        try:
            yield Harness(portal, oq, db_url)
        finally:
            portal.call(oq.close_async)


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def assert_names_field(exc: OmniQError, field: str, value: Any = None) -> None:
    """The error names ``field`` (or one of its spellings)."""
    if isinstance(value, str) and "\x00" in value and "NUL" in str(exc):
        return  # PostgreSQL refuses NUL in any text parameter, before any field is known
    aliases = ALIASES.get(field, (field,))
    if isinstance(exc, ValidationError) and exc.field in aliases:
        return
    text = _norm(str(exc))
    assert any(_norm(a) in text for a in aliases), (
        f"{type(exc).__name__} for a bad {field!r} does not name it: {exc}"
    )


ALIASES: dict[str, tuple[str, ...]] = {
    # callable_ref's errors are about "the reference" of whatever was passed
    "func": ("func", "reference"),
    "callback": ("callback", "reference"),
    "func_args": ("func_args",),
    "func_kwargs": ("func_kwargs",),
    "callback_args": ("callback_args",),
    "run_at": ("run_at", "at"),
    "run_in": ("run_in", "run_at"),
    "cron": ("cron", "cron_expression", "schedule"),
    "interval": ("interval", "schedule"),
    "at": ("at", "run_at", "schedule"),
    "start_at": ("start_at", "run_at"),
    "misfire": ("misfire", "misfire_policy", "MisfirePolicy"),
    "status": ("status", "TaskStatus"),
    "event_type": ("event_type", "EventType"),
    "level": ("level", "EventLevel"),
    "task_options": ("task_options", "priority", "max_retries", "timeout", "ttl", "tags"),
}


# --- value strategies -----------------------------------------------------------------------------

NASTY = [
    "",
    " ",
    "'",
    '"',
    "\\",
    "%",
    "_",
    ";",
    "--",
    "/*",
    "?",
    ":id",
    "$1",
    "NULL",
    "\x00",
    "a\x00b",
    "\n",
    "\r\n\t",
    "\u202e",
    "😀",
    "ü",
    "x'; DROP TABLE omniq_tasks; --",
    "'); DELETE FROM omniq_events; --",
    "a" * 200,
    "a" * 201,
    "é" * 200,
]

utf8_text = st.text(st.characters(codec="utf-8"), max_size=40)
strings = st.one_of(st.sampled_from(NASTY), utf8_text)
junk = st.sampled_from([None, 0, -1, 1.5, math.nan, b"bytes", object(), [], {}, ("t",)])

json_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    utf8_text,
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(utf8_text, inner, max_size=4)
    ),
    max_leaves=12,
)


def _nest(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


bad_values = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf]),
    st.builds(object),
    st.just({1, 2}),
    st.just(b"\x00\xff"),
    st.just(datetime(2020, 1, 1, tzinfo=UTC)),
    st.integers(min_value=1, max_value=5000).map(_nest),
    st.just("x" * 2_000_000),
)
args_values = st.one_of(
    st.lists(json_values, max_size=4),
    st.lists(st.one_of(json_values, bad_values), min_size=1, max_size=3),
    st.dictionaries(utf8_text, json_values, max_size=3),
    strings,
    junk,
)
kwargs_values = st.one_of(
    st.dictionaries(strings, st.one_of(json_values, bad_values), max_size=3),
    st.dictionaries(st.integers(), json_values, min_size=1, max_size=2),
    st.lists(json_values, max_size=2),
    strings,
    junk,
)
durations = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.timedeltas(),
    st.sampled_from([timedelta.max, timedelta.min, timedelta(0), timedelta(microseconds=1)]),
    strings,
    junk,
)
datetimes = st.one_of(
    st.datetimes(timezones=st.timezones()),
    st.datetimes(),  # naive
    st.sampled_from(
        [
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            datetime(9999, 12, 31, 23, 0, tzinfo=timezone(timedelta(hours=-14))),
            datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=14))),
        ]
    ),
    strings,
    junk,
)
ints = st.one_of(
    st.integers(),
    st.sampled_from([2**31 - 1, 2**31, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, True]),
    st.floats(),
    strings,
    junk,
)
refs = st.one_of(
    st.sampled_from(
        [
            ref("noop"),
            "os:system",
            "a:b",
            "a.b.c:d.e",
            ":",
            "a:",
            ":b",
            "a:b:c",
            "1a:b",
            "a b:c",
            "x'; DROP TABLE omniq_tasks; --:f",
            "ü:ß",
        ]
    ),
    strings,
    junk,
)
tag_lists = st.one_of(
    st.lists(strings, max_size=4), strings, st.lists(junk, min_size=1, max_size=2), junk
)
id_lists = st.one_of(
    st.lists(st.uuids().map(str), max_size=3), strings, st.lists(strings, max_size=2), junk
)

#: One adversarial strategy per option of enqueue / build_task.
TASK_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "func": refs,
    "func_args": args_values,
    "func_kwargs": kwargs_values,
    "queue_name": st.one_of(strings, junk),
    "priority": ints,
    "run_at": datetimes,
    "run_in": durations,
    "ttl": durations,
    "result_ttl": durations,
    "max_retries": ints,
    "retry_delay": durations,
    "timeout": durations,
    "depends_on": id_lists,
    "callback": refs,
    "callback_args": args_values,
    "unique_key": st.one_of(strings, junk),
    "name": st.one_of(strings, junk),
    "description": st.one_of(strings, junk),
    "tags": tag_lists,
    "store_result": st.one_of(st.booleans(), junk, strings),
}

valid_names = st.text(
    st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=200
)


@st.composite
def valid_task_options(draw: st.DrawFn) -> dict[str, Any]:
    """Options that are all valid (random where it matters)."""
    return {
        "func": ref("noop"),
        "func_args": draw(st.lists(json_values, max_size=3)),
        "func_kwargs": draw(st.dictionaries(utf8_text, json_values, max_size=3)),
        "queue_name": draw(st.one_of(st.sampled_from(["default", "q"]), valid_names)),
        "priority": draw(st.integers(min_value=-(2**63), max_value=2**63 - 1)),
        "name": draw(st.one_of(st.none(), valid_names)),
        "tags": draw(st.lists(valid_names, max_size=3)),
    }


@st.composite
def task_case(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    """Valid options with one field replaced by an adversarial value."""
    options = draw(valid_task_options())
    field = draw(st.sampled_from(sorted(TASK_FIELDS)))
    options[field] = draw(TASK_FIELDS[field])
    return field, options


def _split(options: dict[str, Any]) -> tuple[Any, Any, Any, dict[str, Any]]:
    rest = dict(options)
    return rest.pop("func"), rest.pop("func_args", None), rest.pop("func_kwargs", None), rest


# --- explicit edge cases (always tried, whatever Hypothesis draws) --------------------------------

FAR = datetime(9999, 12, 31, 23, 59, tzinfo=UTC)
BAD_DURATIONS: list[Any] = [
    -1,
    -0.001,
    math.nan,
    math.inf,
    -math.inf,
    1e12,
    1e300,
    10**30,
    timedelta.max,
    timedelta.min,
    timedelta(days=-1),
    "10s",
    None,
]
ENQUEUE_EDGES: list[tuple[str, Any]] = [
    *[
        ("func_args", v)
        for v in (
            [math.nan],
            [math.inf],
            [-math.inf],
            [_nest(3000)],
            [_nest(300)],
            ["x" * 5_000_000],
            [object()],
            [{1, 2}],
            [b"x"],
            "abc",
            {"a": 1},
            [2**200],
            [{"k": math.nan}],
        )
    ],
    *[("func_kwargs", v) for v in ({1: 2}, {"a": math.nan}, {"a": _nest(3000)}, "abc", [1])],
    *[
        ("run_at", v)
        for v in (
            datetime(2030, 1, 1),
            FAR,
            datetime.max.replace(tzinfo=UTC),
            datetime.min.replace(tzinfo=UTC),
            "2020-01-01",
            0,
        )
    ],
    *[
        (f, v)
        for f in ("run_in", "ttl", "result_ttl", "retry_delay", "timeout")
        for v in BAD_DURATIONS
    ],
    *[("timeout", v) for v in (0, timedelta(0))],
    *[("priority", v) for v in (2**63, -(2**63) - 1, 2**63 - 1, 1.5, math.nan, True, "1")],
    *[("max_retries", v) for v in (-1, 2**31, 2**31 - 1, 2**63, 1.5, True)],
    *[("queue_name", v) for v in ("", "\x00", "a" * 201, "a" * 200, 5, "x'; DROP TABLE x; --")],
    *[(f, "a\x00b") for f in ("name", "description", "unique_key")],
    *[("tags", v) for v in ("abc", [1], ["a\x00"], [None], {"a": 1})],
    *[("depends_on", v) for v in ("abc", ["nope"], [None], [1])],
    *[("callback", v) for v in ("nope", 5, "os:system")],
    *[("callback_args", v) for v in ([math.nan], "abc", {"a": 1}, [_nest(3000)])],
    *[("store_result", v) for v in ("yes", 2, None)],
]


def check_enqueue_edge(h: Harness, field: str, value: Any) -> str | None:
    """None if the contract holds for enqueue with ``field=value``, else what broke."""
    options: dict[str, Any] = {"func": ref("noop"), "func_args": [1], "func_kwargs": {}}
    options[field] = value
    func, args, kwargs, rest = _split(options)
    before = h.count()
    try:
        task_id, error = h.attempt(h.oq.enqueue_async, func, args, kwargs, **rest)
        if error is not None:
            assert_names_field(error, field)
            assert h.count() == before
        else:
            assert task_id is not None
            check_stored(h, task_id, options)
        h.check_integrity()
    except (AssertionError, Exception) as exc:  # collected: every case is tried
        return f"{field}={_short(value)}: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def _short(value: Any) -> str:
    try:
        text = repr(value)
    except RecursionError:
        return f"<{type(value).__name__} nested too deeply to show>"
    return text if len(text) < 60 else text[:57] + "..."


def test_enqueue_edge_cases(harness: Harness) -> None:
    failures = [
        problem
        for field, value in ENQUEUE_EDGES
        if (problem := check_enqueue_edge(harness, field, value)) is not None
    ]
    assert not failures, "\n".join(failures)


SCHEDULE_EDGES: list[tuple[str, Any]] = [
    *[
        ("cron", v)
        for v in (
            "0 0 30 2 *",
            "0 0 31 2 *",
            "61 * * * *",
            "",
            "@reboot",
            "* * * * * * *",
            "\x00",
            5,
        )
    ],
    *[("interval", v) for v in (0, *BAD_DURATIONS)],
    *[("at", v) for v in (datetime(2030, 1, 1), FAR, datetime.min.replace(tzinfo=UTC), "x")],
    *[("start_at", v) for v in (datetime(2030, 1, 1), FAR, datetime.min.replace(tzinfo=UTC))],
    *[("timezone", v) for v in ("Mars/Base", "", "../../etc/passwd", "UTC\x00", 5)],
    *[("misfire", v) for v in ("sometimes", "", 5)],
    *[("misfire_grace", v) for v in BAD_DURATIONS],
    *[("max_runs", v) for v in (-1, 2**31, 2**63, 1.5)],
    *[
        ("task_options", v)
        for v in (
            {"bogus": 1},
            {"priority": math.nan},
            {"priority": 2**63},
            {"timeout": -1},
            {"tags": "abc"},
            {"ttl": 1e300},
        )
    ],
    *[("func_args", v) for v in ([math.nan], [_nest(3000)], "abc")],
    *[("tags", v) for v in ("abc", [1])],
    ("name", "a\x00"),
]


def check_schedule_edge(h: Harness, field: str, value: Any, kind: str) -> str | None:
    options: dict[str, Any] = {"func": ref("noop"), "func_args": [1]}
    if field not in ("cron", "interval", "at"):
        options[kind] = {"cron": "*/5 * * * *", "interval": 60, "at": FAR}[kind]
    if field == "task_options":
        options.update(value)
    else:
        options[field] = value
    func, args, kwargs, rest = _split(options)
    try:
        schedule_id, error = h.attempt(h.oq.schedule_async, func, args, kwargs, **rest)
        if error is not None:
            assert_names_field(error, field)
        else:
            assert schedule_id is not None
            schedule, error = h.attempt(h.oq.get_schedule_async, schedule_id)
            assert error is None, f"an accepted schedule cannot be read back: {error!r}"
            assert schedule is not None
        h.check_integrity()
    except (AssertionError, Exception) as exc:
        return f"{kind}: {field}={_short(value)}: {type(exc).__name__}: {str(exc)[:300]}"
    return None


def test_schedule_edge_cases(harness: Harness) -> None:
    failures = [
        problem
        for field, value in SCHEDULE_EDGES
        for kind in (("cron",) if field in ("cron", "interval", "at") else ("cron", "interval"))
        if (problem := check_schedule_edge(harness, field, value, kind)) is not None
    ]
    assert not failures, "\n".join(failures)


QUERY_EDGES: list[tuple[str, str, Any]] = [
    *[("list_tasks", f, v) for f in ("limit", "offset") for v in (-1, 2**63, 2**70, 1.5, "1")],
    *[("list_tasks", "status", v) for v in ("bogus", ["pending", "nope"], "", 5)],
    *[("get_events", f, v) for f in ("limit", "offset") for v in (-1, 2**63, 2**70)],
    ("get_events", "event_type", "bogus"),
    ("get_events", "level", "loud"),
    *[
        ("get_events", f, v)
        for f in ("start_time", "end_time")
        for v in (datetime(2020, 1, 1), FAR, "2020-01-01")
    ],
    *[("get_result", "timeout", v) for v in (-1, math.nan, math.inf, 1e300, "1s")],
    *[
        (c, "task_id", v)
        for c in ("get_task", "get_result", "cancel", "requeue")
        for v in ("", "nope", "\x00", "a" * 10_000, "'; DROP TABLE omniq_tasks; --")
    ],
]


def test_query_edge_cases(harness: Harness) -> None:
    h = harness
    oq = h.oq
    known = h.run(oq.enqueue_async, ref("noop"), [1])
    calls: dict[str, Callable[..., Awaitable[Any]]] = {
        "list_tasks": oq.list_tasks_async,
        "get_events": oq.get_events_async,
        "get_result": oq.get_result_async,
        "get_task": oq.get_task_async,
        "cancel": oq.cancel_async,
        "requeue": oq.requeue_async,
    }
    failures = []
    for call, field, value in QUERY_EDGES:
        kwargs: dict[str, Any] = {field: value}
        if call == "get_result" and field == "timeout":
            kwargs.update(task_id=known, wait=True)
        try:
            if field == "task_id" and call != "get_result":
                _, error = h.attempt(calls[call], value)
            else:
                _, error = h.attempt(calls[call], **kwargs)
            if error is not None and not isinstance(error, TaskNotFound):
                assert_names_field(error, field, value)
            h.check_integrity()
        except (AssertionError, Exception) as exc:
            failures.append(f"{call}({field}={_short(value)}): {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


# --- enqueue --------------------------------------------------------------------------------------


def check_stored(h: Harness, task_id: str, options: dict[str, Any]) -> Task:
    """A task that was accepted reads back, and can be found by its queue."""
    task, error = h.attempt(h.oq.get_task_async, task_id)
    assert error is None, f"an accepted task cannot be read back: {error!r}"
    assert task is not None and task.id == task_id
    if isinstance(options.get("unique_key"), str) and task.unique_key == options["unique_key"]:
        return task  # possibly the live task that already held the key
    queue = options.get("queue_name") or "default"
    if isinstance(queue, str):
        assert task.queue_name == queue
        listed = h.run(h.oq.list_tasks_async, queue_name=queue, limit=10_000)
        assert task_id in {t.id for t in listed}
    return task


def test_enqueue_fuzz(harness: Harness) -> None:
    h = harness

    @fuzz_settings(h.examples)
    @given(case=task_case())
    def run(case: tuple[str, dict[str, Any]]) -> None:
        field, options = case
        func, args, kwargs, rest = _split(options)
        before = h.count()
        task_id, error = h.attempt(h.oq.enqueue_async, func, args, kwargs, **rest)
        if error is not None:
            assert_names_field(error, field)
            assert h.count() == before
        else:
            assert task_id is not None
            task = check_stored(h, task_id, options)
            deduplicated = task.unique_key is not None and task.unique_key == options.get(
                "unique_key"
            )
            assert h.count() == before + (0 if deduplicated and h.count() == before else 1)
        h.check_integrity()

    run()


def test_valid_enqueue_round_trips(harness: Harness) -> None:
    h = harness

    @fuzz_settings(h.examples)
    @given(options=valid_task_options())
    def run(options: dict[str, Any]) -> None:
        func, args, kwargs, rest = _split(options)
        task_id = h.run(h.oq.enqueue_async, func, args, kwargs, **rest)
        task = check_stored(h, task_id, options)
        assert task.func_args == tuple(args)
        assert task.func_kwargs == kwargs
        assert task.priority == options["priority"]
        assert task.name == options["name"]
        assert task.tags == tuple(options["tags"])
        h.check_integrity()

    run()


@st.composite
def batch_case(draw: st.DrawFn) -> tuple[str, list[dict[str, Any]], int]:
    """A batch of valid tasks and one adversarial one at a random position."""
    good = draw(st.lists(valid_task_options(), min_size=1, max_size=4))
    field, bad = draw(task_case())
    position = draw(st.integers(min_value=0, max_value=len(good)))
    return field, [*good[:position], bad, *good[position:]], position


def test_enqueue_many_is_all_or_nothing(harness: Harness) -> None:
    h = harness
    queue = h.oq.services.queue

    @fuzz_settings(h.examples)
    @given(case=batch_case(), raw_record=st.booleans())
    def run(case: tuple[str, list[dict[str, Any]], int], raw_record: bool) -> None:
        field, batch, position = case
        tasks: list[Task] = []
        for i, options in enumerate(batch):
            func, args, kwargs, rest = _split(options)
            if i == position and raw_record:
                # A Task record built directly: nothing is serialized until the write.
                try:
                    tasks.append(
                        Task(func=func, func_args=args, func_kwargs=kwargs, **_record_fields(rest))
                    )
                except OmniQError as exc:
                    assert_names_field(exc, field)
                    return
                continue
            built, refused = _try(queue.build_task, func, args, kwargs, **rest)
            if refused is not None:
                assert i == position, f"a valid task was refused: {refused!r}"
                assert_names_field(refused, field)
                return
            assert built is not None
            tasks.append(built)
        before = h.count()
        ids, error = h.attempt(queue.enqueue_many_async, tasks)
        if error is not None:
            assert_names_field(error, field)
            assert h.count() == before, "a failed enqueue_many wrote some of its tasks"
            for task in tasks:
                assert h.run(h.oq.get_task_async, task.id) is None
        else:
            assert ids is not None and len(ids) == len(tasks)
            # A unique key held by a live task returns that task's id instead.
            written = sum(1 for task, task_id in zip(tasks, ids, strict=True) if task.id == task_id)
            assert written == len(tasks) or any(t.unique_key is not None for t in tasks)
            assert h.count() == before + written
            for task_id, options in zip(ids, batch, strict=True):
                check_stored(h, task_id, options)
        h.check_integrity()

    run()


def _try(fn: Callable[..., T], *args: Any, **kwargs: Any) -> tuple[T | None, OmniQError | None]:
    """A sync call's result, or the OmniQError it raised."""
    try:
        return fn(*args, **kwargs), None
    except OmniQError as exc:
        return None, exc


def _record_fields(options: dict[str, Any]) -> dict[str, Any]:
    """build_task options that are also Task fields (the rest are edge conveniences)."""
    fields = {a.name for a in attrs.fields(Task)}
    return {k: v for k, v in options.items() if k in fields}


def test_duplicate_ids_in_enqueue_many_write_nothing(harness: Harness) -> None:
    h = harness
    queue = h.oq.services.queue
    existing = h.run(h.oq.enqueue_async, ref("noop"), [1])
    before = h.count()
    batch = [
        queue.build_task(ref("noop"), [2]),
        queue.build_task(ref("noop"), [3], task_id=existing),
    ]
    _, error = h.attempt(queue.enqueue_many_async, batch)
    assert error is not None
    assert h.count() == before
    assert h.run(h.oq.get_task_async, batch[0].id) is None


# --- schedules ------------------------------------------------------------------------------------

crons = st.one_of(
    st.sampled_from(
        [
            "* * * * *",
            "0 0 30 2 *",
            "0 0 31 4 *",
            "61 * * * *",
            "* * * * * * *",
            "@yearly",
            "@reboot",
            "*/0 * * * *",
            "0 0 29 2 1",
            "L * * * *",
            "0 0 L * *",
            "0 0 * * 5#6",
            "1-0 * * * *",
            "\x00",
            "* * * * *; DROP TABLE omniq_schedules",
        ]
    ),
    strings,
    junk,
)

SCHEDULE_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "func": refs,
    "func_args": args_values,
    "func_kwargs": kwargs_values,
    "cron": crons,
    "interval": durations,
    "at": datetimes,
    "start_at": datetimes,
    "timezone": st.one_of(
        st.sampled_from(["UTC", "Europe/Paris", "Mars/Base", "", "../../etc/passwd", "UTC\x00"]),
        strings,
        junk,
    ),
    "queue_name": st.one_of(strings, junk),
    "max_runs": ints,
    "misfire": st.one_of(
        st.sampled_from(["skip", "run_once", "run_all", "sometimes"]), strings, junk
    ),
    "misfire_grace": durations,
    "name": st.one_of(strings, junk),
    "tags": tag_lists,
    "task_options": st.tuples(
        st.sampled_from(["priority", "max_retries", "timeout", "ttl", "tags", "bogus"]),
        st.one_of(ints, durations, tag_lists),
    ),
}


@st.composite
def schedule_case(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    kind = draw(st.sampled_from(["cron", "interval", "at"]))
    bases: dict[str, dict[str, Any]] = {
        "cron": {"cron": "*/5 * * * *"},
        "interval": {"interval": 60},
        "at": {"at": datetime(2100, 1, 1, tzinfo=UTC)},
    }
    base = bases[kind]
    options: dict[str, Any] = {"func": ref("noop"), "func_args": [1], **base}
    field = draw(st.sampled_from(sorted(SCHEDULE_FIELDS)))
    value = draw(SCHEDULE_FIELDS[field])
    if field == "task_options":  # one task option (or an unknown one), by its own name
        key, option = value
        options[key] = option
        return key, options
    options[field] = value
    return field, options


def test_schedule_fuzz(harness: Harness) -> None:
    h = harness

    @fuzz_settings(h.examples)
    @given(case=schedule_case())
    def run(case: tuple[str, dict[str, Any]]) -> None:
        field, options = case
        func, args, kwargs, rest = _split(options)
        schedule_id, error = h.attempt(h.oq.schedule_async, func, args, kwargs, **rest)
        if error is not None:
            assert_names_field(error, field)
        else:
            assert schedule_id is not None
            schedule, error = h.attempt(h.oq.get_schedule_async, schedule_id)
            assert error is None, f"an accepted schedule cannot be read back: {error!r}"
            assert schedule is not None and schedule.id == schedule_id
        h.check_integrity()

    run()


# --- queries --------------------------------------------------------------------------------------

# Ids are typed ``str``: other types are a type error for mypy, not fuzzed here.
ids = st.one_of(st.uuids().map(str), strings)
statuses = st.one_of(
    st.sampled_from(["pending", "completed", "bogus", "PENDING", ""]),
    st.lists(st.sampled_from(["pending", "failed", "nope"]), max_size=3),
    strings,
    junk,
)
event_types = st.one_of(
    st.sampled_from(["enqueued", "failed", "bogus", ""]),
    st.lists(st.sampled_from(["enqueued", "nope"]), max_size=2),
    strings,
    junk,
)
limits = st.one_of(st.integers(min_value=-5, max_value=1000), ints)


@st.composite
def query_case(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    call = draw(
        st.sampled_from(["list_tasks", "get_events", "get_result", "get_task", "cancel", "requeue"])
    )
    fields: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "list_tasks": {
            "status": statuses,
            "queue_name": strings,
            "limit": limits,
            "offset": limits,
        },
        "get_events": {
            "task_id": ids,
            "event_type": event_types,
            "queue_name": strings,
            "worker_id": strings,
            "schedule_id": ids,
            "level": st.one_of(st.sampled_from(["info", "error", "loud"]), strings),
            "start_time": datetimes,
            "end_time": datetimes,
            "limit": limits,
            "offset": limits,
        },
        "get_result": {"task_id": ids, "timeout": durations},
        "get_task": {"task_id": ids},
        "cancel": {"task_id": ids},
        "requeue": {"task_id": ids},
    }
    field = draw(st.sampled_from(sorted(fields[call])))
    return call, field, {field: draw(fields[call][field])}


def test_query_fuzz(harness: Harness) -> None:
    h = harness
    oq = h.oq
    known = h.run(oq.enqueue_async, ref("noop"), [1])
    calls: dict[str, Callable[..., Awaitable[Any]]] = {
        "list_tasks": oq.list_tasks_async,
        "get_events": oq.get_events_async,
        "get_result": oq.get_result_async,
        "get_task": oq.get_task_async,
        "cancel": oq.cancel_async,
        "requeue": oq.requeue_async,
    }

    @fuzz_settings(h.examples)
    @given(case=query_case())
    def run(case: tuple[str, str, dict[str, Any]]) -> None:
        call, field, kwargs = case
        if call == "get_result" and field == "timeout":
            kwargs = {"task_id": known, "wait": True, **kwargs}
            # A wait on a pending task returns at its timeout: keep valid ones short.
            timeout = kwargs["timeout"]
            if isinstance(timeout, timedelta):
                timeout = timeout.total_seconds()
            if timeout is None or (
                isinstance(timeout, int | float) and 0.05 < timeout <= timedelta.max.total_seconds()
            ):
                kwargs["timeout"] = 0.01  # (None waits for ever, as documented)

        if call in ("get_task", "cancel", "requeue"):
            _, error = h.attempt(calls[call], kwargs["task_id"])
        else:
            _, error = h.attempt(calls[call], **kwargs)
        if error is not None:
            if isinstance(error, TaskNotFound):
                assert "task" in str(error).lower()
            else:
                assert_names_field(error, field, kwargs.get(field))
        h.check_integrity()

    run()


def test_lone_surrogates_are_refused_with_a_typed_error(harness: Harness) -> None:
    """Text that cannot be encoded (e.g. a filename decoded with surrogateescape)."""
    h = harness
    bad = "name-\udcff"
    for field, value in (
        ("func_args", [bad]),
        ("func_kwargs", {"k": bad}),
        ("queue_name", bad),
        ("name", bad),
        ("description", bad),
        ("tags", [bad]),
        ("unique_key", bad),
    ):
        options: dict[str, Any] = {"func": ref("noop"), "func_args": [1], field: value}
        func, args, kwargs, rest = _split(options)
        before = h.count()
        task_id, error = h.attempt(h.oq.enqueue_async, func, args, kwargs, **rest)
        if error is not None:
            assert h.count() == before
        else:  # stored escaped (JSON columns): it must read back unchanged
            assert task_id is not None
            task = check_stored(h, task_id, options)
            stored = {
                "func_args": list(task.func_args),
                "func_kwargs": task.func_kwargs,
                "tags": list(task.tags),
            }.get(field, getattr(task, field))
            assert stored == value, (field, stored)
    for call in (h.oq.get_task_async, h.oq.get_result_async, h.oq.cancel_async):
        h.attempt(call, bad)  # None, or a typed error
    h.check_integrity()


# --- the CLI --------------------------------------------------------------------------------------

cli_text = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30)
cli_json = st.one_of(
    st.lists(json_values, max_size=3).map(json.dumps),
    st.dictionaries(utf8_text, json_values, max_size=3).map(json.dumps),
    st.sampled_from(["", "[", "{", "null", "NaN", "[NaN]", '{"a": Infinity}', "1e999", "[1e999]"]),
    cli_text,
)
CLI_FIELDS: dict[str, st.SearchStrategy[str]] = {
    "func": st.one_of(st.sampled_from([ref("noop"), "os:system", "nope", "a:b:c", "-x"]), cli_text),
    "args": cli_json,
    "kwargs": cli_json,
    "in": st.one_of(
        st.sampled_from(
            ["10s", "5m", "0", "-1s", "1e308s", "99999999999d", "nan", "inf", "1 h", "x"]
        ),
        cli_text,
    ),
    "queue": st.one_of(
        st.sampled_from([*NASTY[:-3], "a" * 201]).filter(lambda s: "\x00" not in s), cli_text
    ),
}
CLI_ALIASES = {
    "func": ("func",),
    "args": ("--args", "func_args"),
    "kwargs": ("--kwargs", "func_kwargs"),
    "in": ("--in", "run_in"),
    "queue": ("--queue", "queue_name"),
}


CLI_EDGES: list[tuple[str, str]] = [
    ("args", "[NaN]"),
    ("args", "[1e999]"),
    ("args", "{"),
    ("args", '{"a": 1}'),
    ("kwargs", "[1]"),
    ("kwargs", '{"a": Infinity}'),
    ("in", "1e308s"),
    ("in", "99999999999d"),
    ("in", "-1s"),
    ("in", "nan"),
    ("queue", "a" * 201),
    ("queue", "x'; DROP TABLE omniq_tasks; --"),
    ("func", "os:system"),
    ("func", "not a reference"),
]


def cli_enqueue(url: str, values: dict[str, str]) -> list[str]:
    return [
        "enqueue",
        f"--url={url}",
        f"--args={values['args']}",
        f"--kwargs={values['kwargs']}",
        f"--in={values['in']}",
        f"--queue={values['queue']}",
        "--",
        values["func"],
    ]


def check_cli_outcome(h: Harness, field: str, code: int, out: str, err: str, before: int) -> None:
    """Exit 0 with a task id, or 1/2 with one ``omniq: error:`` line naming the field."""
    if code == 0:
        task_id = out.strip()
        assert uuid.UUID(task_id), out
        assert h.run(h.oq.get_task_async, task_id) is not None
        assert h.count() == before + 1
        return
    assert code in (1, 2), (code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("omniq: error: "), err
    assert any(_norm(a) in _norm(lines[0]) for a in CLI_ALIASES[field]), (field, lines[0])
    assert h.count() == before


def test_cli_edge_cases(
    harness: Harness, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI in process (fast): each adversarial option alone, on every engine."""
    h = harness
    from omniq.cli import main

    monkeypatch.delenv("OMNIQ_DATABASE_URL", raising=False)
    failures = []
    for field, value in CLI_EDGES:
        values = {"func": ref("noop"), "args": "[1]", "kwargs": "{}", "in": "", "queue": ""}
        values[field] = value
        before = h.count()
        try:
            code = main(cli_enqueue(h.url, values))
        except BaseException as exc:  # an escape is a failure, reported with the others
            failures.append(f"--{field}={value!r}: escaped {type(exc).__name__}: {exc}")
            continue
        captured = capsys.readouterr()
        try:
            check_cli_outcome(h, field, code, captured.out, captured.err, before)
        except AssertionError as exc:
            failures.append(f"--{field}={value!r}: {exc}")
    assert not failures, "\n".join(failures)


def test_cli_enqueue_fuzz(harness: Harness, tmp_path: Path) -> None:
    h = harness
    if h.engine != "sqlite":
        pytest.skip("the CLI is fuzzed on SQLite only (it is the same code on every engine)")
    env = {**os.environ, "OMNIQ_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}
    env.pop("OMNIQ_DATABASE_URL", None)

    @fuzz_settings(12)
    @given(field=st.sampled_from(sorted(CLI_FIELDS)), data=st.data())
    def run(field: str, data: st.DataObject) -> None:
        values = {"func": ref("noop"), "args": "[1]", "kwargs": "{}", "in": "", "queue": ""}
        values[field] = data.draw(CLI_FIELDS[field], label=field)
        before = h.count()
        argv = [sys.executable, "-m", "omniq", *cli_enqueue(h.url, values)]
        proc = subprocess.run(
            argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False
        )
        check_cli_outcome(h, field, proc.returncode, proc.stdout, proc.stderr, before)
        h.check_integrity()

    run()
