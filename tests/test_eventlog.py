"""The rate-limited event log: one line per event and interval, with the hidden count."""

from __future__ import annotations

import logging

import pytest

from sipzone.eventlog import MAX_EVENTS, EventLog


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_one_line_per_interval_with_count(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    events = EventLog(logging.getLogger("t.eventlog"), interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, "t.eventlog"):
        for _ in range(1000):
            events.warning("bad-via", "bad Via from %s", "192.0.2.1")
        clock.now = 10.5
        events.warning("bad-via", "bad Via from %s", "192.0.2.1")
        events.warning("other", "other thing")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "bad Via from 192.0.2.1",
        "bad Via from 192.0.2.1 (999 more since the last line)",
        "other thing",
    ]
    assert events.total == 1002


def test_a_burst_of_lines_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    """A debug trace writes many lines a second, then counts the rest (sipzone.logs.Trace)."""
    clock = Clock()
    events = EventLog(logging.getLogger("t.eventlog"), interval=1.0, clock=clock, burst=3)
    with caplog.at_level(logging.WARNING, "t.eventlog"):
        for i in range(10):
            events.warning("sip", "message %d", i)
        clock.now = 1.0
        events.warning("sip", "message %d", 10)
        events.warning("sip", "message %d", 11)
    assert [r.getMessage() for r in caplog.records] == [
        "message 0",
        "message 1",
        "message 2",
        "message 10 (7 more since the last line)",
        "message 11",
    ]


def test_forget_makes_the_next_occurrence_new(caplog: pytest.LogCaptureFixture) -> None:
    events = EventLog(logging.getLogger("t.eventlog"), interval=60.0, clock=Clock())
    with caplog.at_level(logging.WARNING, "t.eventlog"):
        assert events.error("db", "database lost")
        assert not events.error("db", "database lost")
        events.forget("db")
        assert events.error("db", "database lost")
    assert len(caplog.records) == 2


def test_distinct_keys_are_bounded() -> None:
    events = EventLog(logging.getLogger("t.eventlog"), clock=Clock())
    for i in range(MAX_EVENTS * 3):
        events.warning(f"k{i}", "x")
    assert len(events._seen) == MAX_EVENTS
