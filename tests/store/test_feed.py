"""The change feed wakes on another connection's commit, on SQLite and on PostgreSQL; it says
when the SQLite file under the store's name is another one, and rides out a lost PostgreSQL
with one line each way."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from pathlib import Path

import pytest

from sipzone.store.feed import ChangeFeed, Wake
from sipzone.store.repository import Store
from tests.conftest import Connections


async def wakes_after_write(store: Store) -> tuple[bool, bool]:
    feed = ChangeFeed(store.url, interval=0.01, fallback=5.0)
    try:
        await asyncio.wait_for(feed.wait(), 5)  # the first look always returns
        quiet = asyncio.ensure_future(feed.wait())
        await asyncio.sleep(0.3)
        woke_while_idle = quiet.done()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, store.add_tenant, "acme")
        await asyncio.wait_for(quiet, 5)
        return woke_while_idle, quiet.result() is Wake.CHANGED
    finally:
        await feed.aclose()


def test_feed_is_quiet_until_a_commit_then_wakes(store: Store) -> None:
    woke_while_idle, woke_after_write = asyncio.run(wakes_after_write(store))
    assert not woke_while_idle
    assert woke_after_write


def test_a_timeout_wakes_a_caller_that_retries(store: Store) -> None:
    async def run() -> Wake:
        feed = ChangeFeed(store.url, interval=0.01, fallback=5.0)
        try:
            await feed.wait()
            return await asyncio.wait_for(feed.wait(timeout=0.2), 2)
        finally:
            await feed.aclose()

    assert asyncio.run(run()) is Wake.CHANGED


def make_store(path: Path, *domains: str) -> None:
    store = Store(f"sqlite:///{path}")
    try:
        store.init()
        for domain in domains:
            store.add_domain(domain)
    finally:
        store.close()


def domains(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return sorted(row[0] for row in conn.execute("SELECT name FROM domains"))


def test_a_commit_wakes_a_watching_feed_whose_poll_is_half_a_minute_away(sqlite_url: str) -> None:
    """On Linux the feed sleeps on inotify, not on a timer: only the file event can wake it."""
    store = Store(sqlite_url)
    store.init()

    async def run() -> tuple[bool, Wake]:
        feed = ChangeFeed(sqlite_url, interval=30.0, fallback=30.0)
        try:
            await asyncio.wait_for(feed.wait(), 2)  # the first look is at once
            waiter = asyncio.create_task(feed.wait())
            await asyncio.sleep(0.3)
            idle = not waiter.done()
            store.add_tenant("resa")  # another connection commits
            return idle, await asyncio.wait_for(waiter, 2)
        finally:
            await feed.aclose()

    try:
        assert asyncio.run(run()) == (True, Wake.CHANGED)
    finally:
        store.close()


class Watch:
    """A feed on its own event loop, stepped by the test: told of the store's files by
    inotify alone (a poll half a minute away), or polling without it."""

    def __init__(self, path: Path, mode: str) -> None:
        self.loop = asyncio.new_event_loop()
        url = f"sqlite:///{path}"
        if mode == "inotify":
            self.feed = ChangeFeed(url, interval=30.0, fallback=30.0)
        else:
            self.feed = ChangeFeed(url, interval=0.01, watch=False)

    def wait(self, timeout: float = 2.0) -> Wake | None:
        """What the feed says within ``timeout`` seconds (None: nothing)."""
        try:
            return self.loop.run_until_complete(asyncio.wait_for(self.feed.wait(), timeout))
        except TimeoutError:
            return None

    def close(self) -> None:
        self.loop.run_until_complete(self.feed.aclose())
        self.loop.close()


@pytest.fixture
def live(tmp_path: Path) -> Path:
    path = tmp_path / "live.db"
    make_store(path, "old.example.com")
    return path


@pytest.fixture(params=["inotify", "poll"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_file_moved_over_the_store_is_replaced_and_the_old_journal_is_not_read_into_it(
    live: Path, mode: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    watch = Watch(live, mode)
    try:
        assert watch.wait() is Wake.CHANGED
        # A write lands in the write-ahead log while the feed holds the file, as a server does.
        with contextlib.closing(sqlite3.connect(live)) as writer:
            writer.execute("UPDATE domains SET name = 'wal.example.com'")
            writer.commit()
        assert watch.wait() is Wake.CHANGED
        assert Path(f"{live}-wal").exists()
        backup = tmp_path / "backup.db"
        make_store(backup, "new.example.com")
        os.rename(backup, live)
        with caplog.at_level(logging.WARNING, "sipzone.feed"):
            assert watch.wait() is Wake.REPLACED
        assert not Path(f"{live}-wal").exists() and not Path(f"{live}-shm").exists()
        (line,) = caplog.messages
        assert "was replaced" in line and "removed its stale live.db-wal and live.db-shm" in line
        assert domains(live) == ["new.example.com"]
        # the feed follows the new file from here on
        assert watch.wait() is Wake.CHANGED
        with contextlib.closing(sqlite3.connect(live)) as writer:
            writer.execute("DELETE FROM domains")
            writer.commit()
        assert watch.wait() is Wake.CHANGED
    finally:
        watch.close()
    assert domains(live) == []


def test_a_journal_that_is_not_the_old_files_own_is_left_alone(
    live: Path, mode: str, tmp_path: Path
) -> None:
    """A new file that comes with its own write-ahead log keeps it."""
    watch = Watch(live, mode)
    try:
        assert watch.wait() is Wake.CHANGED
        backup = tmp_path / "backup.db"
        make_store(backup, "new.example.com")
        with contextlib.closing(sqlite3.connect(backup)) as held:  # keeps backup.db-wal
            held.execute("PRAGMA journal_mode=WAL")
            held.execute("UPDATE domains SET name = 'wal.example.com'")
            held.commit()
            os.rename(f"{backup}-wal", f"{live}-wal.new")
            os.rename(backup, live)
            os.replace(f"{live}-wal.new", f"{live}-wal")
            os.replace(f"{backup}-shm", f"{live}-shm")
            assert watch.wait() is Wake.REPLACED
            assert Path(f"{live}-wal").exists()
    finally:
        watch.close()


def test_a_deleted_store_is_waited_for_not_created_and_read_whole_when_back(
    live: Path, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    watch = Watch(live, mode)
    try:
        assert watch.wait() is Wake.CHANGED
        live.unlink()
        with caplog.at_level(logging.WARNING, "sipzone.feed"):
            assert watch.wait(timeout=0.5) is None
            # a caller retrying a failed read is not woken to read a missing file either
            assert watch.wait(timeout=0.5) is None
        assert not live.exists()
        assert len(caplog.messages) == 1 and "is gone" in caplog.messages[0]
        make_store(live, "fresh.example.com")
        assert watch.wait() is Wake.REPLACED
        assert domains(live) == ["fresh.example.com"]
    finally:
        watch.close()


def test_a_truncated_store_is_read_whole(live: Path, mode: str) -> None:
    watch = Watch(live, mode)
    try:
        assert watch.wait() is Wake.CHANGED
        with open(live, "r+b") as f:
            f.truncate(0)
        assert watch.wait() is Wake.REPLACED
    finally:
        watch.close()


def test_a_lost_postgresql_is_said_once_and_its_return_once(
    pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    Store(pg_url).init()
    connections = Connections(pg_url)
    allow = connections.allow

    async def run() -> tuple[Wake | None, Wake]:
        feed = ChangeFeed(pg_url, fallback=0.2)
        try:
            assert await feed.wait() is Wake.CHANGED
            allow(False)
            try:
                # while it is away the feed neither returns nor floods the log
                await asyncio.wait_for(feed.wait(timeout=0.1), 3)
                during: Wake | None = Wake.CHANGED
            except TimeoutError:
                during = None
            finally:
                allow(True)
            return during, await asyncio.wait_for(feed.wait(), 15)
        finally:
            await feed.aclose()

    try:
        with caplog.at_level(logging.INFO, "sipzone.feed"):
            during, after = asyncio.run(run())
    finally:
        connections.close()
    assert during is None
    assert after is Wake.RECONNECTED
    lost = [m for m in caplog.messages if "store connection lost" in m]
    back = [m for m in caplog.messages if "is back" in m]
    assert len(lost) == 1 and len(back) == 1, caplog.messages
    assert "\n" not in lost[0] and not any(r.exc_info for r in caplog.records)
