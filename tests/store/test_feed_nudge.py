"""A nudge makes the SQLite feed look at once: the API's writes reach its worker's snapshot
without waiting for the next poll (where no file watch tells it sooner)."""

from __future__ import annotations

import asyncio

from sipzone.store.feed import ChangeFeed, Wake
from sipzone.store.repository import Store


def test_nudge_wakes_a_slow_poll(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    store.init()

    async def run() -> None:
        # a poll that would take half a minute, and no inotify to wake it earlier
        feed = ChangeFeed(sqlite_url, interval=30.0, watch=False)
        try:
            first = asyncio.create_task(feed.wait())
            feed.nudge()
            await asyncio.wait_for(first, 5)  # the feed has its connection now
            waiter = asyncio.create_task(feed.wait())
            store.add_tenant("resa")
            await asyncio.sleep(0.3)
            assert not waiter.done()  # changed, but the next poll is half a minute away
            feed.nudge()
            assert await asyncio.wait_for(waiter, 5) is Wake.CHANGED  # a stall bound
        finally:
            await feed.aclose()

    asyncio.run(run())
    store.close()
