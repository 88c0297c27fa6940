"""The dashboard's pure parts: cursors, the filter form, the chart's geometry."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from omniq.errors import ValidationError
from omniq.models import TaskFilter, TaskSort, TaskStatus
from omniq.services.browse import BulkAction, decode_cursor, encode_cursor
from omniq.services.overview import MinuteOutcomes

web = pytest.importorskip("omniq.web", reason='needs the web extra: "omniq[web]"')

from omniq.web.chart import HEIGHT, throughput_chart  # noqa: E402
from omniq.web.forms import DEAD_STATUSES, parse_listing  # noqa: E402

AT = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sort", "key"),
    [
        (TaskSort.NEWEST, (AT, "a-b")),
        (TaskSort.OLDEST, (AT, "z")),
        (TaskSort.PRIORITY, (-5, AT, "id-1")),
    ],
)
def test_cursor_round_trips(sort: TaskSort, key: tuple[object, ...]) -> None:
    assert decode_cursor(sort, encode_cursor(sort, key)) == key


@pytest.mark.parametrize(
    "cursor", ["", "!!!", "e30", encode_cursor(TaskSort.PRIORITY, (1, AT, "x")), "WzFd"]
)
def test_bad_cursors_are_validation_errors(cursor: str) -> None:
    with pytest.raises(ValidationError, match="cursor"):
        decode_cursor(TaskSort.NEWEST, cursor)


def test_filter_narrowing_for_bulk_actions() -> None:
    everything = TaskFilter()
    retry = everything.narrowed(BulkAction.RETRY.statuses)
    assert retry is not None and TaskStatus.COMPLETED not in retry.statuses
    pending_only = TaskFilter(statuses=frozenset({TaskStatus.PENDING}))
    assert pending_only.narrowed(BulkAction.RETRY.statuses) is None
    cancel = pending_only.narrowed(BulkAction.CANCEL.statuses)
    assert cancel is not None and cancel.statuses == {TaskStatus.PENDING}


def test_listing_parses_and_writes_back_its_query() -> None:
    params = {"queue": " q ", "func": "mod:f", "from": "2026-01-02T03:04", "sort": "priority"}
    listing = parse_listing(params, ["failed", "pending"])
    flt = listing.filter
    assert flt.queue_name == "q" and flt.func == "mod:f"
    assert flt.statuses == {TaskStatus.FAILED, TaskStatus.PENDING}
    assert flt.created_from == datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    assert listing.sort is TaskSort.PRIORITY
    again = parse_listing(dict(listing.form_pairs()), [
        v for k, v in listing.form_pairs() if k == "status"
    ])  # fmt: skip
    assert again == listing
    assert "cursor=abc" in listing.query(cursor="abc")
    offset = parse_listing({"from": "2026-01-02T03:04:00+02:00"}, []).filter.created_from
    assert offset == datetime(2026, 1, 2, 1, 4, tzinfo=UTC)


def test_dead_letter_listing_defaults_to_its_statuses() -> None:
    assert parse_listing({}, [], allowed=DEAD_STATUSES).filter.statuses == DEAD_STATUSES
    with pytest.raises(ValidationError, match="not listed here"):
        parse_listing({}, ["running"], allowed=DEAD_STATUSES)


def test_chart_scales_bars_to_the_peak() -> None:
    start = AT.replace(second=0, microsecond=0)
    series = [
        MinuteOutcomes(minute=start + timedelta(minutes=i), completed=c, failed=f)
        for i, (c, f) in enumerate([(0, 0), (6, 2), (2, 0)])
    ]
    chart = throughput_chart(series)
    assert (chart.peak, chart.completed, chart.failed) == (8, 8, 2)
    empty, peak, small = chart.bars
    assert empty.completed_height == empty.failed_height == 0
    assert peak.completed_height + peak.failed_height == HEIGHT - 4
    assert peak.failed_y == HEIGHT - peak.failed_height
    assert small.completed_height == pytest.approx((HEIGHT - 4) / 4)
    assert "2 completed, 0 failed" in small.title
    assert throughput_chart([]).bars == []


def test_a_time_past_the_calendar_in_utc_is_a_validation_error_not_a_crash() -> None:
    # 9999-12-31T23:59:59-23:00 is in year 10000 in UTC: the page answered 500.
    with pytest.raises(ValidationError, match="out of range"):
        parse_listing({"from": "9999-12-31T23:59:59-23:00"}, [])
