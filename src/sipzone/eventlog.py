"""Log lines that a hostile network or a lost database cannot turn into a flood.

A server meets the same trouble many times a second: a peer's malformed datagrams, a database
that stays away.  :class:`EventLog` writes the first occurrence of each distinct event at once,
then at most one line per ``interval`` for it (or ``burst`` lines), saying how many occurrences
the silence hid.  A
traceback belongs to bugs only: callers pass ``exc_info`` only where the failure is ours.

It imports nothing of sipzone, so every layer may use it.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL = 60.0  # seconds between two lines about the same event
MAX_EVENTS = 1024  # distinct events remembered; the least recently seen is forgotten first


@dataclass(slots=True)
class _Seen:
    logged_at: float  # when the current interval began (with its first line)
    hidden: int = 0  # occurrences since the last line
    lines: int = 1  # lines written in the current interval


class EventLog:
    """Rate-limited logging per event key (``burst`` lines per key and interval, default one,
    then a count)."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        burst: int = 1,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self.burst = burst
        self._clock = clock
        self._seen: OrderedDict[str, _Seen] = OrderedDict()
        self.total = 0  # every occurrence, logged or not

    def event(self, level: int, key: str, msg: str, *args: object) -> bool:
        """Record one occurrence of event ``key``; log ``msg % args`` if it is due.

        Returns True when a line was written.
        """
        self.total += 1
        now = self._clock()
        seen = self._seen.get(key)
        if seen is not None:
            self._seen.move_to_end(key)
            if now - seen.logged_at >= self.interval:
                seen.logged_at, seen.lines = now, 1
            elif seen.lines < self.burst:
                seen.lines += 1
            else:
                seen.hidden += 1
                return False
            hidden, seen.hidden = seen.hidden, 0
            if hidden:
                msg += " (%d more since the last line)"
                args = (*args, hidden)
        else:
            if len(self._seen) >= MAX_EVENTS:
                self._seen.popitem(last=False)
            self._seen[key] = _Seen(now)
        self.logger.log(level, msg, *args)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.event(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> bool:
        return self.event(logging.ERROR, key, msg, *args)

    def forget(self, key: str) -> None:
        """The condition behind ``key`` ended (the database is back): its next occurrence is new."""
        self._seen.pop(key, None)
