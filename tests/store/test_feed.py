"""The change feed wakes on another connection's commit, on SQLite and on PostgreSQL."""

import asyncio

from sipzone.store.feed import ChangeFeed
from sipzone.store.repository import Store


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
        return woke_while_idle, quiet.done()
    finally:
        await feed.aclose()


def test_feed_is_quiet_until_a_commit_then_wakes(store: Store) -> None:
    woke_while_idle, woke_after_write = asyncio.run(wakes_after_write(store))
    assert not woke_while_idle
    assert woke_after_write
