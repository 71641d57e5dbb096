"""How `serve` writes its log: level, line format, destination, and what SIGHUP does to them.

Every line carries its severity.  The text format is
``2026-11-27 06:30:00,123 INFO sipzone[4242] revision 7 published``; ``--log-format json``
writes one JSON object per line instead (``ts`` in UTC ISO 8601, ``level``, ``logger``,
``pid``, ``msg``, and ``exc`` with a traceback when there is one), for a collector that
should not parse text.  The log goes to stderr (the journal, under systemd) or, with
``--log-file``, is appended to a file that :func:`reopen` opens again after logrotate moved it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

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
