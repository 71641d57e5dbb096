"""How `serve` writes its log: level, line format, destination, and what SIGHUP does to them.

Every line carries its severity.  The text format is
``2026-11-27 06:30:00,123 INFO sipzone[4242] revision 7 published``; ``--log-format json``
writes one JSON object per line instead (``ts`` in UTC ISO 8601, ``level``, ``logger``,
``pid``, ``msg``, and ``exc`` with a traceback when there is one), for a collector that
should not parse text.  The log goes to stderr (the journal, under systemd) or, with
``--log-file``, is appended to a file that :func:`reopen` opens again after logrotate moved it.

A debug switch (``sipzone debug``, :mod:`sipzone.model.debug`) adds lines of the
``sipzone.debug`` logger at DEBUG whatever the level: :class:`Trace`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import ClassVar, Self

from sipzone.eventlog import EventLog
from sipzone.model.debug import DebugSwitch, switch_of

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d] %(message)s"


class JsonLines(logging.Formatter):
    """One JSON object per record, on one line whatever the message holds."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


_handler: logging.Handler | None = None


def level_of(name: str) -> int:
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"log level {name!r}: use one of {', '.join(LEVELS)}") from None


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise ValueError(f"log format {name!r}: use one of {', '.join(FORMATS)}")
    return name


def setup(level: str = "info", fmt: str = "text", path: str | None = None) -> None:
    """Send the ``sipzone`` log (and every library's) to stderr or ``path``, at ``level``."""
    global _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
        _handler.close()
    handler: logging.Handler = (
        logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    )
    _handler = handler
    set_format(fmt)
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    logging.getLogger().setLevel(level_of(level))


def set_format(fmt: str) -> None:
    if _handler is not None:
        check_format(fmt)
        _handler.setFormatter(JsonLines() if fmt == "json" else logging.Formatter(TEXT_FORMAT))


def reopen() -> None:
    """Open the log file again under its name (after logrotate moved it); stderr stays."""
    if isinstance(_handler, logging.FileHandler):
        _handler.acquire()
        try:
            _handler.close()
            _handler.stream = _handler._open()
        finally:
            _handler.release()


TRACE_LOG = logging.getLogger("sipzone.debug")
TRACE_LINES_PER_SECOND = 200  # beyond: counted in the next line, so a flood costs no disk


class Trace:
    """The log lines of one debug switch, for the protocol of ``kind`` (a subclass says which
    messages match and how to sum one up in a line).

    Lines go out at DEBUG whatever the log level (the ``sipzone.debug`` logger's own level),
    at most :data:`TRACE_LINES_PER_SECOND`, until the switch ends.  A server holds ``None``
    while no switch is on: then the cost per message is that one check.
    """

    kind: ClassVar[str]

    def __init__(self, switch: DebugSwitch, clock: Callable[[], float] = time.time) -> None:
        self.switch = switch
        self._clock = clock
        self._lines = EventLog(TRACE_LOG, interval=1.0, burst=TRACE_LINES_PER_SECOND)
        self._ended = False
        TRACE_LOG.setLevel(logging.DEBUG)

    @classmethod
    def follow(cls, current: Self | None, settings: Mapping[str, str]) -> Self | None:
        """The trace of the switch ``settings`` hold for this kind (None: none is on):
        ``current`` itself while it is the same switch, so its rate limit carries on."""
        switch = switch_of(settings, cls.kind)
        if switch is None or switch.until <= time.time():
            return None
        if current is not None and current.switch == switch:
            return current
        logging.getLogger("sipzone").info("debug switch on: %s", switch.describe())
        return cls(switch)

    def live(self) -> bool:
        """Whether the switch is still on (its end is said once)."""
        if self._clock() < self.switch.until:
            return True
        if not self._ended:
            self._ended = True
            logging.getLogger("sipzone").info("debug switch ended: %s", self.switch.describe())
        return False

    def line(self, summary: str, whole: str | None = None) -> None:
        """One line: ``summary``, and with a switch for whole messages ``whole`` after it,
        its line breaks written as ``\\n`` (one message, one log line)."""
        if self.switch.full and whole:
            summary += " | " + whole.replace("\r\n", "\\n").replace("\n", "\\n")
        self._lines.event(logging.DEBUG, self.kind, "debug %s: %s", self.kind, summary)
