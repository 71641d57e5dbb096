"""Serve the SIP edge from an in-memory snapshot (no store): for quick hot-path measurements.

usage: memserve.py PORT [N_DOMAINS] [--plain-udp]  — customer1..N.example.com and
voip.example.com, UDP; ``--plain-udp``: uvloop's datagram transport instead of recvmmsg/sendmmsg.
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


async def main(port: int, n: int, batched: bool) -> None:
    rules = [(f"customer{i}.example.com", "provider") for i in range(1, n + 1)]
    rules.append(("voip.example.com", "provider"))
    holder = SnapshotHolder(Snapshot.build(1, TenancyTree([]), rules))
    service = await start_sip(
        SipConfig(listen=(f"udp:127.0.0.1:{port}",), batched_udp=batched), holder
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await service.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--plain-udp"]
    uvloop.run(
        main(int(args[0]), int(args[1]) if len(args) > 1 else 10000, len(args) == len(sys.argv) - 1)
    )
