"""Wires the store's change feed to snapshots and the snapshots to the SIP edge and DNS.

One process runs everything by default; ``--workers N`` forks N identical workers that share
their listening ports with SO_REUSEPORT, each following the store on its own.  The parent only
supervises and, with several workers, serves their combined Prometheus metrics.

Theory of operation:

- Before anything binds, every listening address is probed without SO_REUSEPORT: a port held
  by another process (a second ``serve`` would silently take half of its traffic) refuses the
  start with exit 2, unless ``--share-ports`` asks for exactly that.
- The supervisor replaces a worker that dies, after a back-off that doubles from
  ``RESTART_FIRST`` to ``RESTART_MAX`` while the worker keeps dying and starts again once one
  has stayed up ``STABLE_AFTER`` seconds.  Every death is one log line until it has happened
  ``KEEPS_DYING`` times in a row; then one line says the worker keeps dying, and one a minute
  after that, with the count (``sipzone_worker_restarts_total`` counts them all).
- Secondaries need one NOTIFY per change, not one per worker: worker 0 holds the role, and its
  replacement takes it over.  A worker holding it announces every zone when it starts, since
  changes may have landed while no process held the role.
- Each worker follows the store: along the change log after each wake of the feed, whole when
  the feed says the file was replaced or the change log no longer holds the revision served
  (a restored backup).  A failed read is one log line (then one a minute), retried with
  back-off while the last snapshot keeps answering; its end is one line too.
- Each worker probes the sites (sipzone.health) before it binds anything, and answers from the
  store's snapshot with the sites' health applied; the probes and their verdicts go on while
  the store is away.
- Worker 0 keeps a copy of every snapshot it applies on local disk (sipzone.store.diskcopy).
  A worker that starts while the store is out of reach serves that copy, marked stale (the
  ``sipzone_snapshot_stale`` gauge, one log line) until the store answers and it has caught up
  along the change log; with no copy either, it binds nothing and waits for the store, saying
  why in one log line (then one a minute) and in /readyz.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import select
import shutil
import signal
import socket
import sqlite3
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import sqlalchemy as sa

from sipzone import sdnotify
from sipzone.api import ApiConfig
from sipzone.dns import DnsConfig
from sipzone.eventlog import EventLog
from sipzone.httpstatus import Readiness, serve_status, workers_not_ready
from sipzone.model.errors import SipzoneError
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.net import split_hostport
from sipzone.net.limits import raise_open_files
from sipzone.net.sockets import held_elsewhere
from sipzone.sip import SipConfig
from sipzone.store.diskcopy import BadCopy, CopyWriter, Mark, read_copy
from sipzone.store.feed import ChangeFeed, Wake, first_line
from sipzone.store.repository import Store

if TYPE_CHECKING:
    from sipzone.health.monitor import HealthMonitor

log = logging.getLogger("sipzone")

RETRY_FIRST = 0.5  # seconds before reading a store again after a failed read; doubles ...
RETRY_MAX = 10.0  # ... up to this
RESTART_FIRST = 0.1  # seconds before a dead worker is replaced; doubles while it keeps dying ...
RESTART_MAX = 10.0  # ... up to this
STABLE_AFTER = 30.0  # a worker up this long starts the back-off afresh when it dies
KEEPS_DYING = 3  # deaths in a row that make "keeps dying" the news instead of each death
STOP_GRACE = 10.0  # seconds workers get after their drain (SIGTERM) before SIGKILL
PARENT_CHECK = 1.0  # seconds between a worker's checks that its supervisor still runs

# What a store that is away or not (yet) a store raises: news for the log, not a bug.
STORE_TROUBLE = (sa.exc.SQLAlchemyError, sqlite3.Error, SipzoneError, OSError)


class Service(Protocol):
    async def close(self) -> None: ...


class CannotListen(SipzoneError):
    """A listening address is held by another process, or cannot be bound at all."""


@dataclass(frozen=True)
class ServeConfig:
    db: str
    sip: SipConfig | None = None
    dns: DnsConfig | None = None
    metrics: str | None = None  # "HOST:PORT"
    workers: int = 1
    poll_interval: float = 0.05  # seconds between change-feed checks (SQLite)
    share_ports: bool = False  # True: join ports another process holds (SO_REUSEPORT)
    api: ApiConfig | None = None  # the REST API and web console (sipzone.api)
    log_level: str = "info"
    log_format: str = "text"  # or "json"
    log_file: str | None = None  # None: stderr
    # The --config file, its values when the server started, the options the command line
    # or the environment set (above the file), and serve's options (name, takes several):
    # what SIGHUP needs to re-read the file (sipzone.config.reload).
    config_file: str | None = None
    config_values: Mapping[str, Any] = field(default_factory=dict)
    config_fixed: frozenset[str] = frozenset()
    config_known: tuple[tuple[str, bool], ...] = ()
    drain_timeout: float = 5.0  # seconds SIGTERM waits for in-flight TCP before closing it
    user: str | None = None  # started as root: the user each worker runs as once it listens
    worker: int = 0  # this worker's position (0 .. workers-1), its label in the metrics
    ready_stale_after: float = 30.0  # /readyz fails after the store is away this long
    node_name: str | None = None  # this node in the store's heartbeat and views (default: host)
    health_checks: bool = True  # probe every site (sipzone.health); False: others' views only
    health_voice: bool = True  # False: this worker neither logs nor counts health transitions
    acme_check: float = 60.0  # seconds between checks for ACME certificates due (with DNS)
    acme_retry: float = 300.0  # seconds before the first retry of a failed renewal (doubling)
    # The disk copy of the last snapshot (sipzone.store.diskcopy); None: no copy kept or read.
    copy_path: str | None = None
    acme_wait: float = 60.0  # seconds a renewal waits for the DNS servers to answer the challenge


# ------------------------------------------------------------------------ ports


def _listeners(config: ServeConfig) -> Iterator[tuple[str, str, int, socket.SocketKind, bool]]:
    """(what, host, port, kind, dual_stack) of every socket the services will bind."""
    if config.sip is not None:
        from sipzone.sip import parse_listen

        for spec in config.sip.listen:
            transport, host, port = parse_listen(spec)
            kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
            yield f"SIP {transport}", host, port, kind, False
    if config.dns is not None:
        host, port = split_hostport(config.dns.listen, allow_zero=True)
        yield "DNS udp", host, port, socket.SOCK_DGRAM, True
        yield "DNS tcp", host, port, socket.SOCK_STREAM, True
    if config.api is not None:
        host, port = split_hostport(config.api.listen, allow_zero=True)
        yield "API", host, port, socket.SOCK_STREAM, False


def check_ports(config: ServeConfig) -> None:
    """Raise :class:`CannotListen` naming the first address another process holds.

    The metrics port is checked even with ``share_ports``: its HTTP server never shares.
    """
    wanted = [] if config.share_ports else list(_listeners(config))
    if config.metrics:
        host, port = split_hostport(config.metrics)
        wanted.append(("metrics", host, port, socket.SOCK_STREAM, False))
    for what, host, port, kind, dual_stack in wanted:
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if port == 0:
            continue  # any free port: nobody can hold it
        try:
            held = held_elsewhere(host, port, kind, dual_stack=dual_stack)
        except OSError as exc:
            raise CannotListen(f"cannot listen on {what} {where}: {exc.strerror}") from None
        if held:
            hint = "" if what == "metrics" else ", or give --share-ports to share it on purpose"
            raise CannotListen(
                f"{what} {where} is held by another process (another sipzone serve?); stop it{hint}"
            )


# ------------------------------------------------------------------------ following the store


def history_mark(store: Store, revision: int) -> Mark:
    """What the change log says about ``revision``: its row's revision and time (None for an
    empty store).  Another value for the same revision later means another history: the store
    was restored from a backup or replaced, and a snapshot must not be advanced across that."""
    if revision <= 0:
        return None
    rows = store.changes_since(revision - 1, limit=1)
    return (rows[0].revision, rows[0].at) if rows else None


class StoreFollower:
    """Keeps a SnapshotHolder at the store's revision, reading after each wake of the feed."""

    def __init__(
        self, store: Store, interval: float, readiness: Readiness | None = None, worker: int = 0
    ) -> None:
        self.store = store
        self.interval = interval
        self.events = EventLog(log)
        self.mark: Mark = None
        self._failing = False
        self.readiness = readiness or Readiness()
        self.worker = str(worker)  # the label of this worker's metrics
        self.feed: ChangeFeed | None = None
        self.stale = False  # serving the disk copy; the store has not answered since the start
        self.copy: CopyWriter | None = None  # keeps the disk copy (one worker per node)

    @property
    def reaching_store(self) -> bool:
        """False while the last read failed or the feed has lost its connection."""
        return not self._failing and not (self.feed is not None and self.feed.down)

    def feed_lag(self) -> float | None:
        """Seconds since the newest change served was committed (None: no change yet)."""
        if self.mark is None:
            return None
        at = self.mark[1]
        at = at.replace(tzinfo=UTC) if at.tzinfo is None else at
        return max(0.0, (datetime.now(UTC) - at).total_seconds())

    def nudge(self) -> None:
        """Read the store now rather than at the next poll (this process wrote to it)."""
        if self.feed is not None:
            self.feed.nudge()

    def load(self) -> Snapshot:
        """The whole store, and the mark of its history (runs in a thread)."""
        snapshot = self.store.load_snapshot()
        self.mark = history_mark(self.store, snapshot.revision)
        return snapshot

    def _load_first(self) -> Snapshot:
        """:meth:`load`, after making the SIP branch key when `serve` could not (it started
        without the store; runs in a thread)."""
        from sipzone.sip import BRANCH_SECRET

        snapshot = self.load()
        if BRANCH_SECRET in snapshot.settings:
            return snapshot
        with contextlib.suppress(sa.exc.IntegrityError):  # another worker or node made it
            self.store.ensure_secret(BRANCH_SECRET)
        return self.load()

    async def start(self, copy_path: str | None) -> Snapshot:
        """The snapshot to start on: the store's; while the store is out of reach, the disk
        copy at ``copy_path``, stale until the store answers; with neither, wait for the
        store, retrying with back-off, and say why (log, /readyz)."""
        from sipzone import metrics

        loop = asyncio.get_running_loop()
        retry = RETRY_FIRST
        where: str | None = None  # why the disk copy cannot serve, once it has been read
        while True:
            try:
                snapshot = await loop.run_in_executor(None, self._load_first)
            except STORE_TROUBLE as exc:
                trouble = first_line(exc)
                await loop.run_in_executor(None, self.store.close)
            else:
                if self.readiness.waiting is not None:
                    self.readiness.waiting = None
                    log.info("store reached at revision %d; starting", snapshot.revision)
                if self.copy is not None:
                    self.copy.offer(snapshot, self.mark)
                return snapshot
            if where is None:
                stale, where = await loop.run_in_executor(None, self._read_copy, copy_path, trouble)
                if stale is not None:
                    self.stale = self._failing = True
                    self.readiness.store_reached(False)
                    metrics.SNAPSHOT_STALE.labels(self.worker).set(1)
                    return stale
            self.readiness.waiting = f"waiting for the store ({trouble}); {where}"
            self.events.warning(
                "start", "%s; nothing to serve yet, retrying with back-off",
                self.readiness.waiting,
            )  # fmt: skip
            await asyncio.sleep(retry)
            retry = min(retry * 2, RETRY_MAX)

    def _read_copy(self, path: str | None, trouble: str) -> tuple[Snapshot | None, str]:
        """The disk copy at ``path`` for a start without the store, or why there is none
        (runs in a thread)."""
        if path is None:
            return None, "no disk copy kept"
        try:
            copy = read_copy(path)
        except (BadCopy, OSError) as exc:
            log.warning("disk copy %s ignored: %s", path, exc)
            return None, f"the disk copy at {path} is unusable"
        if copy is None:
            return None, f"no disk copy at {path}"
        self.mark = copy.mark
        log.warning(
            "store out of reach at start (%s); serving the disk copy of revision %d written "
            "%s (%s), stale until the store answers",
            trouble, copy.snapshot.revision, copy.written_at.isoformat(timespec="seconds"), path,
        )  # fmt: skip
        return copy.snapshot, ""

    def next_snapshot(self, current: Snapshot, whole: bool) -> Snapshot:
        """``current`` advanced along the change log, or the store read whole (in a thread)."""
        if not whole and history_mark(self.store, current.revision) != self.mark:
            log.warning(
                "the store's change log no longer holds revision %d as served (restored from "
                "a backup?); reading it whole",
                current.revision,
            )
            whole = True
        if whole:
            return self.load()
        snapshot = self.store.advance(current)
        if snapshot is not current:
            self.mark = history_mark(self.store, snapshot.revision)
        return snapshot

    async def follow(self, holder: SnapshotHolder) -> None:
        """Publish every new snapshot into ``holder`` until cancelled."""
        from sipzone import metrics

        loop = asyncio.get_running_loop()
        feed = self.feed = ChangeFeed(self.store.url, interval=self.interval)
        # Seconds until a failed read is tried again (a stale start: soon).
        retry: float | None = RETRY_FIRST if self._failing else None
        whole = False
        try:
            while True:
                wake = await feed.wait(timeout=retry)
                if wake is not Wake.CHANGED:
                    # Pooled connections hold the old file, or a server that went away.
                    await loop.run_in_executor(None, self.store.close)
                whole = whole or wake is Wake.REPLACED
                current = holder.current
                try:
                    snapshot = await loop.run_in_executor(None, self.next_snapshot, current, whole)
                except Exception as exc:
                    self._failed(exc, current.revision)
                    await loop.run_in_executor(None, self.store.close)
                    retry = RETRY_FIRST if retry is None else min(retry * 2, RETRY_MAX)
                    continue
                retry, whole = None, False
                if self.stale:
                    self.stale = False
                    metrics.SNAPSHOT_STALE.labels(self.worker).set(0)
                    log.info(
                        "store reached: caught up from the disk copy's revision %d to %d",
                        current.revision, snapshot.revision,
                    )  # fmt: skip
                elif self._failing:
                    log.info("store readable again at revision %d", snapshot.revision)
                if self._failing:
                    self._failing = False
                    self.events.forget("read")
                self.readiness.store_reached(True)
                if snapshot is not current:
                    holder.publish(snapshot)
                    if self.copy is not None:
                        self.copy.offer(snapshot, self.mark)
                    metrics.REVISION.labels(self.worker).set(snapshot.revision)
                    lag = self.feed_lag()
                    if lag is not None:
                        metrics.FEED_LAG.labels(self.worker).set(lag)
                    log.info("revision %d published", snapshot.revision)
        finally:
            await feed.aclose()

    def _failed(self, exc: Exception, revision: int) -> None:
        self._failing = True
        self.readiness.store_reached(False)
        if isinstance(exc, STORE_TROUBLE):
            self.events.warning(
                "read", "store read failed (%s); still serving revision %d", first_line(exc),
                revision,
            )  # fmt: skip
        else:  # ours: worth a traceback, and the back-off keeps it rare
            log.exception("reading the store failed; still serving revision %d", revision)


# ------------------------------------------------------------------------ privileges


class CannotDropPrivileges(SipzoneError):
    """--user names no user, or serve was not started as root to become another one."""


def check_user(name: str) -> tuple[int, int]:
    """(uid, gid) of ``name`` if this process can become it, else :class:`CannotDropPrivileges`."""
    import pwd

    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise CannotDropPrivileges(f"--user {name!r}: no such user") from None
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise CannotDropPrivileges(
            f"--user {name!r}: serve runs as uid {os.geteuid()}, and only root can become "
            "another user (under systemd, use User= and AmbientCapabilities= instead)"
        )
    return entry.pw_uid, entry.pw_gid


def drop_privileges(name: str) -> None:
    """Become user ``name`` (its groups too) once the listeners are bound: the ports below
    1024 stay ours, nothing else of root's does."""
    uid, gid = check_user(name)
    if os.geteuid() == uid:
        return
    os.setgroups(os.getgrouplist(name, gid))
    os.setgid(gid)
    os.setuid(uid)
    log.info("running as %s (uid %d, gid %d) now that the listeners are bound", name, uid, gid)


# ------------------------------------------------------------------------ SIGHUP


class Hangup:
    """What SIGHUP does in every process of a server: reopen the log file, re-read the
    ``--config`` file and apply what can change while running (sipzone.config.reload).  The
    process that ``announces`` (the only one, or the supervisor) logs what changed and what
    only a restart applies; workers apply the same quietly."""

    def __init__(self, config: ServeConfig, announce: bool) -> None:
        self.config = config
        self.announce = announce
        self.values = dict(config.config_values)

    def __call__(self) -> None:
        from sipzone import logs
        from sipzone.config import BadConfig, reload

        try:
            logs.reopen()
        except OSError as exc:  # e.g. no longer allowed to open it after --user
            self._say(logging.ERROR, "SIGHUP: cannot reopen the log file: %s", exc)
        path = self.config.config_file
        if path is None:
            self._say(logging.INFO, "SIGHUP: log reopened; no --config file to re-read")
            return
        try:
            result = reload(
                path, dict(self.config.config_known), self.values, self.config.config_fixed
            )
        except BadConfig as exc:
            self._say(logging.ERROR, "SIGHUP: %s; the running configuration stays", exc)
            return
        self.values = result.values
        for name, value in result.apply.items():
            apply = logs.set_level if name == "log_level" else logs.set_format
            try:
                (logs.level_of if name == "log_level" else logs.check_format)(str(value))
            except ValueError as exc:
                self._say(logging.ERROR, "SIGHUP: %s in %s; it stays as it was", exc, path)
                continue
            # Said before the change and as a warning, so that the old and the new level show it.
            self._say(logging.WARNING, "SIGHUP: %s is now %s", name.replace("_", "-"), value)
            apply(str(value))
        if result.need_restart:
            self._say(
                logging.WARNING,
                "SIGHUP: %s changed in %s; only a restart applies that (still running with the "
                "values it started with)",
                ", ".join(result.need_restart), path,
            )  # fmt: skip
        if not result.apply and not result.need_restart:
            self._say(logging.INFO, "SIGHUP: log reopened; %s re-read, nothing to change", path)

    def _say(self, level: int, msg: str, *args: object) -> None:
        if self.announce:
            log.log(level, msg, *args)


# ------------------------------------------------------------------------ one worker


async def run_worker(
    config: ServeConfig,
    ready: Callable[[], None] | None = None,
    parent: int | None = None,
    readiness: Readiness | None = None,
) -> None:
    """Start the configured services in this process and run until SIGTERM/SIGINT (or until
    the supervisor ``parent`` is gone: an orphan must not keep its ports)."""
    from sipzone import metrics

    store = Store(config.db, via="serve")
    loop = asyncio.get_running_loop()
    readiness = readiness or Readiness(config.ready_stale_after)
    worker = str(config.worker)
    metrics.READY.labels(worker).set(0)
    follower = StoreFollower(store, config.poll_interval, readiness, config.worker)
    if config.copy_path is not None and config.worker == 0:
        follower.copy = CopyWriter(config.copy_path, config.db)
    metrics.SNAPSHOT_STALE.labels(worker).set(0)
    # The store's snapshots go to ``raw``; the services answer from ``holder``, the same with
    # every site's health decided by the monitor (sipzone.health).
    raw = SnapshotHolder(await follower.start(config.copy_path))
    holder = SnapshotHolder(raw.current)
    monitor = _health_monitor(config, store, raw, holder)
    await monitor.start()
    readiness.loaded = True
    metrics.REVISION.labels(worker).set(holder.current.revision)
    metrics.STORE_UP.labels(worker).set(0 if follower.stale else 1)
    services: list[Service] = [monitor]
    drains: list[tuple[str, Callable[[float], Awaitable[tuple[int, int]]]]] = []
    dns_service: Any = None
    if config.sip is not None:
        from sipzone.sip.transport import start_sip

        trunk_io = (store.record_trunk_states, store.trunk_states)  # see sip/trunkprobe.py
        node = config.node_name or socket.gethostname()
        report = functools.partial(store.record_upstream_states, node)  # health/upstreams.py
        sip_service = await start_sip(config.sip, holder, *trunk_io, report)
        services.append(sip_service)
        drains.append(("SIP TCP", sip_service.drain))
    if config.dns is not None:
        from sipzone.dns.server import start_dns

        dns_service = await start_dns(config.dns, holder)
        services.append(dns_service)
        drains.append(("DNS TCP", dns_service.drain))
        dns_service.notify_secondaries()  # see the module's docstring: the NOTIFY role
    if config.api is not None:
        from sipzone.api.service import start_api

        services.append(await start_api(config.api, config.db, holder, follower.nudge))
    stop = asyncio.Event()
    stopped_by: list[str] = []

    def stop_on(sig: signal.Signals) -> None:
        stopped_by.append(sig.name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop_on, sig)
    loop.add_signal_handler(signal.SIGHUP, Hangup(config, announce=parent is None))
    if config.user is not None:
        drop_privileges(config.user)
    # Written as the user the worker runs as (offered snapshots wait for it).
    copying = asyncio.create_task(follower.copy.run()) if follower.copy is not None else None
    readiness.listening = True
    main = parent is None  # the only process: it speaks to systemd itself
    tasks = [
        asyncio.create_task(follower.follow(raw)),
        asyncio.create_task(_every_second(follower, dns_service, watchdog=main)),
    ]
    if config.dns is not None:
        tasks.append(asyncio.create_task(_renew_acme(config, dns_service.address)))
    if copying is not None:
        tasks.append(copying)
    if parent is not None:
        tasks.append(asyncio.create_task(_stop_when_orphaned(parent, stop)))
    log.info("serving revision %d (pid %d)", holder.current.revision, os.getpid())
    if ready is not None:
        ready()
    await stop.wait()
    why = stopped_by[0] if stopped_by else "supervisor gone"
    log.info("stopping (%s): no new connections, finishing those in flight", why)
    if main:
        sdnotify.notify("STOPPING=1", "STATUS=draining")
    began = time.monotonic()
    drained = await asyncio.gather(*(drain(config.drain_timeout) for _, drain in drains))
    for (what, _), (clean, cut) in zip(drains, drained, strict=True):
        if clean or cut:
            log.info("%s: %d connection(s) closed when settled, %d cut", what, clean, cut)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for service in services:
        await service.close()
    if dns_service is not None and dns_service.counts is not None:
        from sipzone.dns import metrics as dns_metrics

        dns_metrics.publish(dns_service.counts)
    store.close()
    log.info("stopped after %.1f s (pid %d)", time.monotonic() - began, os.getpid())


async def _every_second(follower: StoreFollower, dns_service: Any, watchdog: bool) -> None:
    """A worker's housekeeping: publish the DNS counts, say whether it reaches the store and
    is ready (the gauges the supervisor's /readyz reads), and tell systemd's watchdog that the
    loop turns (from the loop itself: a hung loop stops the pings)."""
    from sipzone import metrics

    worker = follower.worker
    ping = sdnotify.watchdog_interval() if watchdog else None
    while True:
        await asyncio.sleep(min(1.0, ping or 1.0))
        if ping is not None:
            sdnotify.notify("WATCHDOG=1")
        if dns_service is not None and dns_service.counts is not None:
            from sipzone.dns import metrics as dns_metrics

            dns_metrics.publish(dns_service.counts)
        up = follower.reaching_store
        follower.readiness.store_reached(up)
        metrics.STORE_UP.labels(worker).set(1 if up else 0)
        metrics.READY.labels(worker).set(0 if follower.readiness.reasons() else 1)


def _health_monitor(
    config: ServeConfig, store: Store, raw: SnapshotHolder, holder: SnapshotHolder
) -> HealthMonitor:
    """The node's health monitor; its heartbeat names what this node serves."""
    from sipzone.health.monitor import HealthMonitor
    from sipzone.store.repository import NodeBeat

    started = datetime.now(UTC)
    addresses = (
        *(config.sip.listen if config.sip else ()),
        *((f"dns:{config.dns.listen}",) if config.dns else ()),
        *((f"api:{config.api.listen}",) if config.api else ()),
    )
    site = config.sip.site if config.sip else None

    def beat() -> NodeBeat:
        return NodeBeat(site, addresses, holder.current.revision, started)

    name = config.node_name or socket.gethostname()
    return HealthMonitor(
        name, store, raw, holder, beat, probing=config.health_checks, voice=config.health_voice
    )


async def _renew_acme(config: ServeConfig, address: tuple[Any, ...]) -> None:
    """Renew ACME certificates from this worker (the store's lease lets one node at a time),
    checking the challenges against this worker's own DNS listener at ``address`` and every
    secondary it sends NOTIFY to (:func:`sipzone.acme.challenge_servers`)."""
    from datetime import timedelta

    from sipzone.acme import Issuer, challenge_servers, renew_forever

    assert config.dns is not None
    servers = challenge_servers((str(address[0]), int(address[1])), config.dns.notify)
    store = Store(config.db, via="serve:acme")
    holder = f"{socket.gethostname()}:{os.getpid()}"
    try:
        await renew_forever(
            store,
            Issuer(store, servers, config.acme_wait),
            holder,
            config.acme_check,
            timedelta(seconds=config.acme_retry),
        )
    finally:
        store.close()


async def _stop_when_orphaned(parent: int, stop: asyncio.Event) -> None:
    while os.getppid() == parent:
        await asyncio.sleep(PARENT_CHECK)
    log.warning("supervisor (pid %d) is gone; stopping", parent)
    stop.set()


def _event_loop_run(
    config: ServeConfig,
    ready: Callable[[], None] | None = None,
    parent: int | None = None,
    readiness: Readiness | None = None,
) -> None:
    import uvloop

    uvloop.run(run_worker(config, ready, parent, readiness))


# ------------------------------------------------------------------------ serve


def serve(config: ServeConfig) -> None:
    """Run until stopped: in this process, or as a supervisor of ``config.workers`` workers.

    Raises :class:`CannotListen` (exit 2 in the CLI) before starting anything when a port is
    held elsewhere; exits with status 1 when a worker cannot start.
    """
    from sipzone import logs

    logs.setup(config.log_level, config.log_format, config.log_file)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # not fatal while starting (handled once up)
    with _shared_metrics(config.workers > 1):
        check_ports(config)
        # Every connection is a descriptor: take what the hard limit allows before the
        # services size their connection caps from it.
        log.info("open-file limit %d", raise_open_files())
        if config.workers <= 1:
            readiness = Readiness(config.ready_stale_after)
            if config.metrics:
                from prometheus_client import REGISTRY

                host, port = split_hostport(config.metrics)
                serve_status(host, port, REGISTRY, readiness.reasons)
            _event_loop_run(config, _announce_ready, None, readiness)
            return
        code = _Supervisor(config).run()
    if code:
        raise SystemExit(code)


def _announce_ready() -> None:
    """Every listener is bound: say so to whoever started us (a script, systemd)."""
    print("sipzone: ready", flush=True)
    sdnotify.notify("READY=1", f"STATUS=serving (pid {os.getpid()})", f"MAINPID={os.getpid()}")


@contextlib.contextmanager
def _shared_metrics(enabled: bool) -> Iterator[None]:
    """Workers write their metrics to files in one directory the supervisor aggregates; the
    variable must be set before prometheus_client is imported anywhere."""
    if not enabled:
        yield
        return
    path = tempfile.mkdtemp(prefix="sipzone-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _for_worker(config: ServeConfig, index: int) -> ServeConfig:
    """What worker ``index`` runs: all alike, except that only worker 0 (the first, or the one
    that replaced it) sends DNS NOTIFY and the trunks' OPTIONS, and logs and counts health
    transitions, the sites' and the upstreams' (every worker probes and answers by its own
    view)."""
    if index != 0 and config.sip is not None:
        config = replace(config, sip=replace(config.sip, probe_trunks=False, voice=False))
    if index == 0:
        return replace(config, worker=index)
    config = replace(config, worker=index, health_voice=False)
    if config.dns is None:
        return config
    return replace(config, dns=replace(config.dns, send_notify=False))


def _how(status: int) -> str:
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            return f"was killed by {signal.Signals(number).name}"
        except ValueError:
            return f"was killed by signal {number}"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


@dataclass
class _Slot:
    """One worker position: the process in it now, and how its predecessors fared."""

    index: int
    pid: int = 0  # 0: empty, a replacement is due at restart_at
    started: float = 0.0
    ready_fd: int = -1  # the worker writes one byte here once it listens
    ready: bool = False
    deaths: int = 0  # in a row, none after STABLE_AFTER seconds up
    restart_at: float = 0.0


class _Supervisor:
    def __init__(self, config: ServeConfig) -> None:
        from sipzone import metrics  # after PROMETHEUS_MULTIPROC_DIR is set

        self.config = config
        self.restarts = metrics.WORKER_RESTARTS
        self.slots = [_Slot(i) for i in range(config.workers)]
        self.events = EventLog(log)
        self.pid = os.getpid()
        self.stopping = False
        self.stop_deadline = 0.0
        self.code = 0
        self.announced = False
        self.hangup = Hangup(config, announce=True)
        self.watchdog = sdnotify.watchdog_interval()
        self.watchdog_due = 0.0
        self.hangups = 0  # SIGHUPs not yet handled
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def run(self) -> int:
        if self.config.metrics:
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            host, port = split_hostport(self.config.metrics)
            serve_status(host, port, registry, lambda: self._not_ready(registry))
        # What every worker imports, imported once here: a fork shares it, so a replacement
        # starts serving sooner.
        preload = ("uvloop", "sipzone.dns.server", "sipzone.sip.transport", "sipzone.api.app")
        for module in preload:
            importlib.import_module(module)

        # Signals only wake the loop below (through wake_w); they are handled in it.
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        signal.signal(signal.SIGHUP, self._hangup)
        for slot in self.slots:
            self._spawn(slot)
        while not self.stopping or any(slot.pid for slot in self.slots):
            self._wait_for_news()
            if self.hangups:
                self.hangups = 0
                self.hangup()
                self._signal_all(signal.SIGHUP)  # each worker reopens and re-reads as well
            self._reap()
            now = time.monotonic()
            if self.stopping:
                if now >= self.stop_deadline:
                    self._signal_all(signal.SIGKILL)
                    self.stop_deadline = now + 1.0
                continue
            if not self.announced and all(slot.ready for slot in self.slots):
                self.announced = True
                _announce_ready()
            if self.watchdog is not None and now >= self.watchdog_due:
                sdnotify.notify("WATCHDOG=1")
                self.watchdog_due = now + self.watchdog
            for slot in self.slots:
                if not slot.pid and now >= slot.restart_at:
                    self.restarts.inc()
                    self._spawn(slot)
        signal.set_wakeup_fd(-1)
        return self.code

    def _wait_for_news(self) -> None:
        """Sleep until a signal, a worker's ready byte, or the next due restart."""
        now = time.monotonic()
        due = [slot.restart_at - now for slot in self.slots if not slot.pid]
        if self.stopping:
            due.append(self.stop_deadline - now)
        elif self.watchdog is not None:
            due.append(self.watchdog_due - now)
        timeout = max(0.0, min(due)) if due else None
        watched = [slot.ready_fd for slot in self.slots if slot.ready_fd >= 0]
        readable, _, _ = select.select([self.wake_r, *watched], [], [], timeout)
        if self.wake_r in readable:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 512):
                    pass
        for slot in self.slots:
            if slot.ready_fd in readable:
                slot.ready = bool(os.read(slot.ready_fd, 1))  # b"": it died before ready
                os.close(slot.ready_fd)
                slot.ready_fd = -1

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
            self._died(slot, status)

    def _died(self, slot: _Slot, status: int) -> None:
        now = time.monotonic()
        up = now - slot.started
        pid, slot.pid = slot.pid, 0
        if slot.ready_fd >= 0:
            os.close(slot.ready_fd)
            slot.ready_fd = -1
        slot.ready = False
        if self.stopping:
            return
        how = _how(status)
        if not self.announced:
            # Something in the set-up itself (the store, an address): restarting cannot help.
            log.error("worker %d (pid %d) %s while starting; stopping", slot.index, pid, how)
            self.code = 1
            self._stop(0, None)
            return
        if up >= STABLE_AFTER:
            slot.deaths = 0
            self.events.forget(f"dying-{slot.index}")
        slot.deaths += 1
        delay = min(RESTART_FIRST * 2 ** (slot.deaths - 1), RESTART_MAX)
        slot.restart_at = now + delay
        if slot.deaths < KEEPS_DYING:
            log.error(
                "worker %d (pid %d) %s after %.1f s up; replacing it in %.1f s",
                slot.index, pid, how, up, delay,
            )  # fmt: skip
        else:
            self.events.error(
                f"dying-{slot.index}",
                "worker %d keeps dying: %d times in a row, the last (pid %d) %s after %.1f s up; "
                "replacing it in %.1f s",
                slot.index, slot.deaths, pid, how, up, delay,
            )  # fmt: skip

    def _spawn(self, slot: _Slot) -> None:
        ready_r, ready_w = os.pipe()
        # No signal may reach the child before it has dropped the supervisor's handlers.
        masked = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, masked)
        try:
            pid = os.fork()
            if pid == 0:
                self._become_worker(slot.index, ready_r, ready_w)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, masked)
        os.close(ready_w)
        slot.pid, slot.started, slot.ready_fd, slot.ready = pid, time.monotonic(), ready_r, False

    def _become_worker(self, index: int, ready_r: int, ready_w: int) -> None:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            sdnotify.leave_to_parent()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # until the worker's loop handles it
            signal.pthread_sigmask(
                signal.SIG_UNBLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}
            )
            for fd in (ready_r, self.wake_r, self.wake_w):
                os.close(fd)
            for other in self.slots:
                if other.ready_fd >= 0:
                    os.close(other.ready_fd)

            def ready() -> None:
                os.write(ready_w, b"r")
                os.close(ready_w)

            _event_loop_run(_for_worker(self.config, index), ready, parent=self.pid)
            code = 0
        except STORE_TROUBLE as exc:
            log.error("worker %d cannot run: %s", index, first_line(exc))
        except BaseException:
            log.exception("worker %d failed", index)
        finally:
            os._exit(code)

    def _not_ready(self, registry: Any) -> list[str]:
        """/readyz of the whole server: every worker started and ready by its own gauge."""
        waiting = [
            f"worker {slot.index} is starting"
            for slot in self.slots
            if not (slot.pid and slot.ready)
        ]
        return waiting + workers_not_ready(registry)

    def _hangup(self, _sig: int, _frame: Any) -> None:
        self.hangups += 1

    def _stop(self, sig: int, _frame: Any) -> None:
        if not self.stopping:
            if sig:
                log.info(
                    "stopping (%s): workers finish what is in flight", signal.Signals(sig).name
                )
                sdnotify.notify("STOPPING=1", "STATUS=draining")
            self.stopping = True
            self.stop_deadline = time.monotonic() + self.config.drain_timeout + STOP_GRACE
            self._signal_all(signal.SIGTERM)

    def _signal_all(self, sig: signal.Signals) -> None:
        for slot in self.slots:
            if slot.pid:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, sig)
