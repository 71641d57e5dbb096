"""A protocol service (`start_sip`, `start_dns`) on its own uvloop thread, fed from a
SnapshotHolder the test controls: what the runtime does, minus the store."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

import uvloop

from sipzone.model.snapshot import Snapshot, SnapshotHolder

T = TypeVar("T")


class Closable(Protocol):
    async def close(self) -> None: ...


class ServiceThread:
    def __init__(self, holder: SnapshotHolder) -> None:
        self.holder = holder
        self.service: Closable | None = None
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10) -> T:
        """Run ``coro`` on the service's loop and wait for its result (or its exception)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def settle(self) -> None:
        """Wait until the service has applied what was published; nothing by default."""

    def publish(self, *snapshots: Snapshot) -> None:
        """Swap snapshots on the service's loop back to back, as the runtime does."""

        async def swap() -> None:
            for snapshot in snapshots:
                self.holder.publish(snapshot)
            await self.settle()

        self.call(swap())

    def close(self) -> None:
        if self.service is not None:
            self.call(self.service.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
