"""Serve the SIP edge from an in-memory snapshot (no store): for quick hot-path measurements.

usage: memserve.py PORT [N_DOMAINS] [--plain-udp] [--upstream=PORT] [--profile=FILE]
— customer1..N.example.com and voip.example.com, UDP; ``--plain-udp``: uvloop's datagram
transport instead of recvmmsg/sendmmsg; ``--upstream=PORT``: the domains belong to a tenant
whose core is 127.0.0.1:PORT (for calls, e.g. ../shared/bench/call-cpu.sh); ``--profile=FILE``:
run under cProfile and write its stats to FILE on SIGTERM.
"""

from __future__ import annotations

import asyncio
import cProfile
import signal
import sys
import time

import uvloop

from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.model.tenancy import TenancyTree, Tenant
from sipzone.sip import BRANCH_SECRET, SipConfig
from sipzone.sip.transport import start_sip


async def main(port: int, n: int, batched: bool, upstream: int | None) -> None:
    owner = "provider" if upstream is None else "acme"
    tenants = (
        []
        if upstream is None
        else [Tenant(owner, "provider", upstream=f"sip:127.0.0.1:{upstream}")]
    )
    rules = [(f"customer{i}.example.com", owner) for i in range(1, n + 1)]
    rules.append(("voip.example.com", owner))
    snapshot = Snapshot.build(1, TenancyTree(tenants), rules, settings={BRANCH_SECRET: "bench"})
    holder = SnapshotHolder(snapshot)
    service = await start_sip(
        SipConfig(listen=(f"udp:127.0.0.1:{port}",), batched_udp=batched), holder
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()
    await service.close()


if __name__ == "__main__":
    options = {a.split("=", 1)[0]: a.partition("=")[2] for a in sys.argv[1:] if a.startswith("--")}
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    up = int(options["--upstream"]) if options.get("--upstream") else None
    run = main(
        int(args[0]), int(args[1]) if len(args) > 1 else 10000, "--plain-udp" not in options, up
    )
    if options.get("--profile"):
        profiler = cProfile.Profile(time.process_time)  # CPU, not wall time (the loop waits)
        profiler.enable()
        uvloop.run(run)
        profiler.disable()
        profiler.dump_stats(options["--profile"])
    else:
        uvloop.run(run)
