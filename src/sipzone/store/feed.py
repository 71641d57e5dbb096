"""The change feed: tells a server, cheaply and soon, that the store may have moved on.

Servers call :meth:`ChangeFeed.wait` in a loop and only then read the change log (in a thread),
so an idle store costs next to nothing on the event loop that answers SIP and DNS.

- SQLite: ``PRAGMA data_version`` on a connection of our own changes whenever another
  connection commits.  Reading it touches the WAL index in shared memory, a few microseconds,
  so it is polled on the event loop every ``interval``.
- PostgreSQL: every write transaction sends ``NOTIFY sipzone`` (delivered at commit), and the
  feed LISTENs on an asynchronous connection.  A revision check once a ``fallback`` period
  covers notifications lost with a dropped connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from typing import Any

import sqlalchemy as sa

log = logging.getLogger("sipzone.feed")

CHANNEL = "sipzone"


class ChangeFeed:
    """``await feed.wait()`` returns when the store may have changed since the last return."""

    def __init__(self, url: str, interval: float = 0.02, fallback: float = 1.0) -> None:
        self.url = sa.engine.make_url(url)
        self.interval = interval
        self.fallback = fallback
        self._sqlite: sqlite3.Connection | None = None
        self._version: int | None = None
        self._pg: Any = None
        self._notifies: Any = None

    @property
    def kind(self) -> str:
        return self.url.get_backend_name()

    async def wait(self) -> None:
        if self.kind == "sqlite":
            await self._wait_sqlite()
        elif self.kind == "postgresql":
            await self._wait_postgresql()
        else:
            await asyncio.sleep(self.interval)

    async def _wait_sqlite(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                if self._sqlite is None:
                    self._sqlite = sqlite3.connect(
                        self.url.database or "", isolation_level=None, check_same_thread=False
                    )
                version = int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error:
                self.close()
                return  # let the caller look at the store itself; it will say what is wrong
            if version != self._version:
                # The first reading returns too: a change may have landed between the
                # snapshot load and this connection, and only the change log can tell.
                self._version = version
                return

    async def _wait_postgresql(self) -> None:
        import psycopg

        try:
            if self._pg is None:
                conninfo = self.url.set(drivername="postgresql").render_as_string(
                    hide_password=False
                )
                self._pg = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                await self._pg.execute(f"LISTEN {CHANNEL}")
                return  # as with SQLite: whatever committed before LISTEN, look once
            async for _ in self._pg.notifies(timeout=self.fallback, stop_after=1):
                break
            # Coalesce a burst (a bulk import sends one notification per batch).
            async for _ in self._pg.notifies(timeout=0.005):
                pass
        except psycopg.Error:
            log.warning("LISTEN connection lost; reconnecting")
            await self.aclose()
            await asyncio.sleep(self.interval)

    def close(self) -> None:
        if self._sqlite is not None:
            with contextlib.suppress(sqlite3.Error):
                self._sqlite.close()
            self._sqlite = None
            self._version = None

    async def aclose(self) -> None:
        self.close()
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
            self._pg = None


def notify_sql() -> sa.TextClause:
    """What a PostgreSQL write transaction runs so that every feed wakes at its commit."""
    return sa.text(f"SELECT pg_notify('{CHANNEL}', CAST(:revision AS text))")
