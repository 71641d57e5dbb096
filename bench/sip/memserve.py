"""Serve the SIP edge from an in-memory snapshot (no store): for quick hot-path measurements.

usage: memserve.py PORT [N_DOMAINS]  — customer1..N.example.com and voip.example.com, UDP.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import uvloop

from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.model.tenancy import TenancyTree
from sipzone.sip import SipConfig
from sipzone.sip.transport import start_sip


async def main(port: int, n: int) -> None:
    rules = [(f"customer{i}.example.com", "provider") for i in range(1, n + 1)]
    rules.append(("voip.example.com", "provider"))
    holder = SnapshotHolder(Snapshot.build(1, TenancyTree([]), rules))
    service = await start_sip(SipConfig(listen=(f"udp:127.0.0.1:{port}",)), holder)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await service.close()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 10000))
