"""Wires the store's change feed to snapshots and the snapshots to the SIP edge and DNS.

One process runs everything by default; ``--workers N`` forks N identical workers that share
their listening ports with SO_REUSEPORT, each following the store on its own.  The parent only
supervises (restarts a worker that dies) and, with several workers, serves their combined
Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

from sipzone.dns import DnsConfig
from sipzone.model.snapshot import SnapshotHolder
from sipzone.net import split_hostport
from sipzone.sip import SipConfig
from sipzone.store.feed import ChangeFeed
from sipzone.store.repository import Store

log = logging.getLogger("sipzone")


class Service(Protocol):
    async def close(self) -> None: ...


@dataclass(frozen=True)
class ServeConfig:
    db: str
    sip: SipConfig | None = None
    dns: DnsConfig | None = None
    metrics: str | None = None  # "HOST:PORT"
    workers: int = 1
    poll_interval: float = 0.05  # seconds between change-feed checks (SQLite)


async def follow_store(store: Store, holder: SnapshotHolder, interval: float) -> None:
    """Wait for the change feed; when it fires, advance the snapshot and publish it.

    The feed's check is cheap and runs on the loop; reading the change log and building the
    snapshot run in a thread, so the loop keeps answering meanwhile.
    """
    from sipzone import metrics

    loop = asyncio.get_running_loop()
    feed = ChangeFeed(store.url, interval=interval)
    try:
        while True:
            await feed.wait()
            try:
                snapshot = await loop.run_in_executor(None, store.advance, holder.current)
            except Exception:  # the store may be unreachable for a while: keep serving
                log.exception(
                    "store read failed; still serving revision %d", holder.current.revision
                )
                await asyncio.sleep(1.0)
                continue
            if snapshot is not holder.current:
                holder.publish(snapshot)
                metrics.REVISION.set(snapshot.revision)
                log.info("revision %d published", snapshot.revision)
    finally:
        await feed.aclose()


async def run_worker(config: ServeConfig, ready: Any = None) -> None:
    """Start the configured services in this process and run until SIGTERM/SIGINT."""
    from sipzone import metrics

    store = Store(config.db, via="serve")
    loop = asyncio.get_running_loop()
    holder = SnapshotHolder(await loop.run_in_executor(None, store.load_snapshot))
    metrics.REVISION.set(holder.current.revision)
    services: list[Service] = []
    if config.sip is not None:
        from sipzone.sip.transport import start_sip

        services.append(await start_sip(config.sip, holder))
    if config.dns is not None:
        from sipzone.dns.server import start_dns

        services.append(await start_dns(config.dns, holder))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    feed = asyncio.create_task(follow_store(store, holder, config.poll_interval))
    log.info("serving revision %d (pid %d)", holder.current.revision, os.getpid())
    if ready is not None:
        ready()
    await stop.wait()
    feed.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await feed
    for service in services:
        await service.close()
    store.close()


def _event_loop_run(config: ServeConfig, ready: Any = None) -> None:
    import uvloop

    uvloop.run(run_worker(config, ready))


def serve(config: ServeConfig) -> None:
    """Run until stopped: in this process, or as a supervisor of ``config.workers`` workers."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s[%(process)d] %(message)s")
    if config.workers <= 1:
        if config.metrics:
            from prometheus_client import start_http_server

            host, port = split_hostport(config.metrics)
            start_http_server(port, host)
        _event_loop_run(config, lambda: print("sipzone: ready", flush=True))
        return
    _supervise(config)


def _for_worker(config: ServeConfig, index: int) -> ServeConfig:
    """What worker ``index`` runs: all alike, except that only the first sends DNS NOTIFY
    (secondaries need one per change, not one per worker)."""
    if config.dns is None or index == 0:
        return config
    return replace(config, dns=replace(config.dns, send_notify=False))


def _supervise(config: ServeConfig) -> None:
    # Workers write their metrics to files the parent aggregates; the variable must be set
    # before prometheus_client is imported anywhere.
    metrics_dir = tempfile.mkdtemp(prefix="sipzone-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    if config.metrics:
        from prometheus_client import CollectorRegistry, multiprocess, start_http_server

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        host, port = split_hostport(config.metrics)
        start_http_server(port, host, registry=registry)
    children: dict[int, int] = {}
    stopping = False
    # Each worker writes one byte here once its sockets listen: "ready" means all of them do.
    ready_r, ready_w = os.pipe()

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.close(ready_r)
            code = 0
            try:
                _event_loop_run(_for_worker(config, index), lambda: os.write(ready_w, b"r"))
            except BaseException:
                log.exception("worker %d failed", index)
                code = 1
            finally:
                os._exit(code)
        children[pid] = index

    def stop(_sig: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(config.workers):
        spawn(index)
    os.close(ready_w)
    started = 0
    while started < config.workers and not stopping:
        try:
            got = os.read(ready_r, config.workers)
        except InterruptedError:
            continue
        if not got:  # every worker died before it was ready
            break
        started += len(got)
    os.close(ready_r)
    if started == config.workers:
        print("sipzone: ready", flush=True)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        if pid not in children:
            continue
        index = children.pop(pid)
        if stopping:
            continue
        log.error("worker %d (pid %d) ended with status %d; restarting", index, pid, status)
        time.sleep(0.5)
        spawn(index)
