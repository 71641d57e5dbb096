"""The change feed: tells a server, cheaply and soon, that the store may have moved on, or that
it is another store now and must be read whole.

Servers call :meth:`ChangeFeed.wait` in a loop and only then read the store (in a thread), so
an idle store costs next to nothing on the event loop that answers SIP and DNS.

- SQLite: ``PRAGMA data_version`` on a connection of our own changes whenever another
  connection commits.  Reading it touches the WAL index in shared memory, a few microseconds.
  On Linux the feed reads it when inotify says one of the store's files was written or
  renamed (:mod:`sipzone.store.filewatch`), once more ``interval`` later (the event may come
  a moment before the commit is visible), and once every ``fallback`` in case an event was
  missed; elsewhere it is polled on the event loop every ``interval``.  The path gets an
  ``os.stat`` on every change reported, on every event for the database file itself, and
  every ``STAT_EVERY`` polls: a file replaced under its name
  (``mv backup.db sipzone.db``, or deleted and created again) has another inode, and one that
  shrank was truncated or rewritten; either way the feed answers :attr:`Wake.REPLACED`.  Our
  connection still holds the old file, and SQLite leaves that file's ``-wal`` and ``-shm``
  beside the new one under the same names, where the next connection would read the old
  pages over the new file (and a checkpoint would write them into it).  So the feed removes
  those two files first, when they are still the very ones it saw while connected, under a
  lock on the directory so that the workers of one server never remove a journal that another
  has just created for the new file.
- PostgreSQL: every write transaction sends ``NOTIFY sipzone`` (delivered at commit), and the
  feed LISTENs on an asynchronous connection.  A revision check once a ``fallback`` period
  covers notifications lost with a dropped connection.  A lost connection is said once (then
  once a minute with a count), retried with back-off, and its return is said once
  (:attr:`Wake.RECONNECTED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fcntl
import logging
import os
import sqlite3
import urllib.parse
from typing import Any

import sqlalchemy as sa

from sipzone.eventlog import EventLog
from sipzone.store import filewatch
from sipzone.store.filewatch import FileWatch, Stir

log = logging.getLogger("sipzone.feed")

CHANNEL = "sipzone"
RETRY_FIRST = 0.5  # seconds before the first reconnect attempt after a failed one
RETRY_MAX = 10.0  # the back-off doubles up to this
CONNECT_TIMEOUT = 5  # seconds; a host that drops packets must not hold the feed for minutes
# The path is looked at (os.stat) every tenth poll only: that costs as much as the poll, and a
# file replaced under its name is an operator's act, noticed a fifth of a second later.
STAT_EVERY = 10
JOURNALS = ("-wal", "-shm")  # what SQLite keeps beside a database file in WAL mode


class Wake(enum.Enum):
    """Why :meth:`ChangeFeed.wait` returned, and so how much the server should read."""

    CHANGED = "changed"  # the store may have moved on: follow its change log
    RECONNECTED = "reconnected"  # back after an outage: pooled connections are stale
    REPLACED = "replaced"  # another file under the store's name: read it whole


def first_line(exc: BaseException) -> str:
    """An exception as one log line: a lost database is news, not a bug, so no traceback."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _wake(nap: asyncio.Future[None]) -> None:
    if not nap.done():
        nap.set_result(None)


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


class ChangeFeed:
    """``await feed.wait()`` returns (a :class:`Wake`) when the store may have changed since
    the last return."""

    def __init__(
        self, url: str, interval: float = 0.02, fallback: float = 1.0, *, watch: bool = True
    ) -> None:
        self.url = sa.engine.make_url(url)
        self.interval = interval
        self.fallback = fallback
        self.events = EventLog(log)
        self._path = self.url.database or ""
        if self._path == ":memory:":
            self._path = ""
        self._sqlite: sqlite3.Connection | None = None
        self._version: int | None = None
        self._file: tuple[int, int] | None = None  # (device, inode) our connection reads
        self._size = 0
        self._polls = 0
        self._journals: dict[str, tuple[int, int]] = {}  # suffix -> identity while connected
        self._replaced = False  # the file went away; whatever comes next is read whole
        self._pg: Any = None
        self._retry = RETRY_FIRST
        self._down = False
        self._nudged = False  # a write of this process came between two naps: look now
        self._napping: asyncio.Future[None] | None = None
        self._watch: FileWatch | None = None  # inotify on the store's directory (Linux)
        self._watch_tried = not watch  # watch=False: poll every ``interval`` (tests, NFS)
        self._stirred = Stir.NOTHING  # what the file events since the last poll said
        self._follow = False  # an event woke the last poll: look again ``interval`` later

    def nudge(self) -> None:
        """Check the store now (call on the loop): this process has just written to it.  A
        SQLite poll otherwise waits up to ``interval``; PostgreSQL's NOTIFY needs no nudge."""
        nap = self._napping
        if nap is not None and not nap.done():
            nap.set_result(None)
        else:
            self._nudged = True

    @property
    def kind(self) -> str:
        return self.url.get_backend_name()

    @property
    def down(self) -> bool:
        """True while the feed has lost its PostgreSQL connection (it keeps retrying)."""
        return self._down

    async def wait(self, timeout: float | None = None) -> Wake:
        """The next reason to read the store.  With ``timeout``, return :attr:`Wake.CHANGED`
        after that long even if nothing happened (a caller retrying a failed read), except
        while the store is out of reach (a lost server, a missing file): reading it then
        could only fail again, or create an empty SQLite file where the store was."""
        if self.kind == "sqlite":
            return await self._wait_sqlite(timeout)
        if self.kind == "postgresql":
            return await self._wait_postgresql(timeout)
        await asyncio.sleep(self.interval)
        return Wake.CHANGED

    # ---------------------------------------------------------------- SQLite

    async def _wait_sqlite(self, timeout: float | None) -> Wake:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        if not self._watch_tried:
            self._watch_tried = True
            self._start_watch(loop)
        while True:
            await self._nap(loop, deadline)
            wake = self._poll_sqlite()
            if wake is not None:
                return wake
            if deadline is not None and loop.time() >= deadline and not self._replaced:
                return Wake.CHANGED

    async def _nap(self, loop: asyncio.AbstractEventLoop, deadline: float | None) -> None:
        """Wait until a file event or :meth:`nudge`, or at most ``interval`` (polling, not
        connected, or following up an event) or ``fallback`` (watching); the first look is
        at once.  One future and one timer: ``asyncio.wait_for`` on an Event (a task, its
        cancellation) cost five times what a poll does."""
        follow, self._follow = self._follow, False
        if self._nudged or self._stirred is not Stir.NOTHING or self._polls == 0:
            self._nudged = False
            self._follow = self._stirred is not Stir.NOTHING
            return
        watching = self._watch is not None and self._sqlite is not None and not follow
        delay = self.fallback if watching else self.interval
        if deadline is not None:
            delay = max(0.0, min(delay, deadline - loop.time()))
        nap = self._napping = loop.create_future()
        timer = loop.call_later(delay, _wake, nap)
        try:
            await nap
        finally:
            timer.cancel()
            self._napping = None
        self._follow = self._stirred is not Stir.NOTHING

    def _start_watch(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._path:
            self._watch = filewatch.watch(self._path)
        if self._watch is not None:
            loop.add_reader(self._watch.fd, self._on_file_event)

    def _on_file_event(self) -> None:
        watch = self._watch
        assert watch is not None
        stir = watch.read()
        if stir is Stir.LOST:
            log.info("store directory of %s is no longer watched; polling it", self._path)
            self._stop_watch()
        if stir is not Stir.NOTHING:
            self._stirred = max(self._stirred, stir)
            nap = self._napping
            if nap is not None and not nap.done():
                nap.set_result(None)

    def _stop_watch(self) -> None:
        if self._watch is not None:
            with contextlib.suppress(Exception):  # a loop already closed has no reader left
                asyncio.get_running_loop().remove_reader(self._watch.fd)
            self._watch.close()
            self._watch = None

    def _stat(self) -> os.stat_result | None:
        try:
            return os.stat(self._path) if self._path else None
        except OSError:  # gone, or out of our reach: either way not readable now
            return None

    def _poll_sqlite(self) -> Wake | None:
        self._polls += 1
        stirred, self._stirred = self._stirred, Stir.NOTHING
        if self._sqlite is None:
            return self._reconnect_sqlite()
        if self._polls % STAT_EVERY == 0 or stirred >= Stir.FILE:
            wake = self._look_at_file()
            if wake is not None or self._sqlite is None:
                return wake
        try:
            version = int(self._sqlite.execute("PRAGMA data_version").fetchone()[0])
        except sqlite3.Error:  # a truncated file, say: looked at first
            wake = self._look_at_file()
            self.close()
            return wake or Wake.CHANGED
        if version != self._version:
            # The first reading returns too: a change may have landed between the snapshot
            # load and this connection, and only the change log can tell.  Whether the file
            # is still the one we read is looked at first: a truncated file reads as changed.
            self._version = version
            return self._look_at_file() or Wake.CHANGED
        return None

    def _look_at_file(self) -> Wake | None:
        """:attr:`Wake.REPLACED` when the file at the path is not the one our connection
        reads (or shrank under it); None when it still is, or is gone (then we let it go)."""
        if not self._path:
            return None
        st = self._stat()
        if st is None or _identity(st) != self._file:
            self._let_go(st)
            return Wake.REPLACED if st is not None else None
        if st.st_size < self._size:
            # Truncated, or rewritten in place (cp over it): the same inode, other bytes.
            log.warning(
                "store file %s shrank from %d to %d bytes; reading it whole",
                self._path,
                self._size,
                st.st_size,
            )
            self._size = st.st_size
            return Wake.REPLACED
        self._size = st.st_size
        return None

    def _reconnect_sqlite(self) -> Wake | None:
        if self._path and self._stat() is None:
            return None  # still gone: said once, wait for it quietly
        try:
            self._connect_sqlite()
        except sqlite3.Error:
            self.close()
            return Wake.CHANGED  # let the caller read the store: it will say what is wrong
        if self._replaced:
            self._replaced = False
            return Wake.REPLACED
        return self._poll_sqlite()

    def _connect_sqlite(self) -> None:
        if not self._path:
            self._sqlite = sqlite3.connect(":memory:", isolation_level=None)
            return
        before = self._stat()
        # mode=rw: a feed never creates a store file where the operator removed one.
        uri = f"file:{urllib.parse.quote(self._path)}?mode=rw"
        self._sqlite = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        self._sqlite.execute("PRAGMA data_version").fetchone()  # opens the file and journals
        after = self._stat()
        if before is None or after is None or _identity(before) != _identity(after):
            raise sqlite3.OperationalError("the store file changed while connecting")
        self._file, self._size = _identity(after), after.st_size
        self._journals = {}
        for suffix in JOURNALS:
            with contextlib.suppress(FileNotFoundError):
                self._journals[suffix] = _identity(os.stat(self._path + suffix))

    def _let_go(self, st: os.stat_result | None) -> None:
        """The file we read is no longer at the path: drop its journals and our connection."""
        removed = self._drop_stale_journals()
        note = f"; removed its stale {' and '.join(removed)}" if removed else ""
        if st is None:
            log.warning(
                "store file %s is gone%s; serving the last snapshot until it is back",
                self._path,
                note,
            )
        else:
            log.warning(
                "store file %s was replaced (inode %d -> %d)%s; reading it whole",
                self._path,
                self._file[1] if self._file else 0,
                st.st_ino,
                note,
            )
        self.close()
        self._replaced = st is None

    def _drop_stale_journals(self) -> list[str]:
        removed: list[str] = []
        try:
            directory = os.open(os.path.dirname(self._path) or ".", os.O_RDONLY)
        except OSError:
            return removed
        try:
            fcntl.flock(directory, fcntl.LOCK_EX)  # released with the descriptor
            for suffix, identity in self._journals.items():
                # Our connection still holds the old journals open, so their inode numbers
                # cannot have gone to new files: the same identity means the same old file.
                with contextlib.suppress(OSError):
                    if _identity(os.stat(self._path + suffix)) == identity:
                        os.unlink(self._path + suffix)
                        removed.append(os.path.basename(self._path + suffix))
        finally:
            os.close(directory)
        return removed

    # ---------------------------------------------------------------- PostgreSQL

    async def _wait_postgresql(self, timeout: float | None) -> Wake:
        import psycopg

        fallback = self.fallback if timeout is None else min(self.fallback, timeout)

        while True:
            if self._pg is None:
                try:
                    await self._connect_postgresql()
                except psycopg.Error as exc:
                    await self._close_pg()
                    self._lost(exc)
                    await asyncio.sleep(self._retry)
                    self._retry = min(self._retry * 2, RETRY_MAX)
                    continue
                self._retry = RETRY_FIRST
                if self._down:
                    self._down = False
                    self.events.forget("lost")
                    log.info("store connection is back; following changes again")
                    return Wake.RECONNECTED
                return Wake.CHANGED  # as with SQLite: whatever committed before LISTEN, look once
            try:
                async for _ in self._pg.notifies(timeout=fallback, stop_after=1):
                    break
                # Coalesce a burst (a bulk import sends one notification per batch).
                async for _ in self._pg.notifies(timeout=0.005):
                    pass
            except psycopg.Error as exc:
                await self._close_pg()
                self._lost(exc)  # and reconnect at once: a restarted server is back already
                continue
            return Wake.CHANGED

    async def _connect_postgresql(self) -> None:
        import psycopg

        conninfo = self.url.set(drivername="postgresql").render_as_string(hide_password=False)
        if "application_name" not in self.url.query:  # seen in pg_stat_activity
            conninfo += ("&" if "?" in conninfo else "?") + "application_name=sipzone%20feed"
        self._pg = await psycopg.AsyncConnection.connect(
            conninfo, autocommit=True, connect_timeout=CONNECT_TIMEOUT
        )
        await self._pg.execute(f"LISTEN {CHANNEL}")

    def _lost(self, exc: BaseException) -> None:
        self._down = True
        self.events.warning(
            "lost",
            "store connection lost (%s); serving the last snapshot, retrying with back-off",
            first_line(exc),
        )

    async def _close_pg(self) -> None:
        if self._pg is not None:
            with contextlib.suppress(Exception):
                await self._pg.close()
            self._pg = None

    # ---------------------------------------------------------------- both

    def close(self) -> None:
        if self._sqlite is not None:
            with contextlib.suppress(sqlite3.Error):
                self._sqlite.close()
            self._sqlite = None
            self._version = None
            self._file = None
            self._journals = {}

    async def aclose(self) -> None:
        self.close()
        self._stop_watch()
        await self._close_pg()


def notify_sql() -> sa.TextClause:
    """What a PostgreSQL write transaction runs so that every feed wakes at its commit."""
    return sa.text(f"SELECT pg_notify('{CHANNEL}', CAST(:revision AS text))")
