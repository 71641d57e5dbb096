"""The health monitor of one node: probe loops per site, this node's views, the store
heartbeat, and the snapshot with health applied (see the package docstring).

One asyncio task per site probes its targets (every transport it offers, to every VIP) each
``interval``; a round is good when every target gives a final response.  :class:`SiteTracker`
holds the view and its thresholds.  A heartbeat task writes the views and the node's state to
the store every :data:`BEAT_INTERVAL` seconds, or every probe interval of the most often
probed site if that is shorter (at once after a transition), and reads the other nodes' views
back: another node's news reaches this one's answers within one probe interval.  Every change
of a view, of the others' views or of the raw snapshot recomputes the verdicts; a changed
verdict republishes the snapshot and is one log line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from prometheus_client import Counter, Gauge

from sipzone.eventlog import EventLog
from sipzone.health.probe import Target, probe, tls_context
from sipzone.model.health import VIEW_STALE, Tracker, Verdict, majority
from sipzone.model.snapshot import TRANSPORTS, Site, Snapshot, SnapshotHolder
from sipzone.store.feed import first_line
from sipzone.store.repository import NodeBeat, SiteView, Store

log = logging.getLogger("sipzone.health")

_SILENT = logging.getLogger("sipzone.health.silent")
_SILENT.disabled = True
BEAT_INTERVAL = 5.0  # seconds between two heartbeats (views and node state to the store)

SITE_UP = Gauge(
    "sipzone_site_up",
    "1 when the site is in DNS answers (verdict of every node's probes, drain, operator), else 0",
    ["site"],
    multiprocess_mode="livemax",
)
SITE_SEEN_UP = Gauge(
    "sipzone_site_probe_up",
    "This node's own view of the site from its probes: 1 up, 0 down",
    ["site"],
    multiprocess_mode="livemax",
)
SITE_TRANSITIONS = Counter(
    "sipzone_site_transitions",
    "Changes of a site's state: kind 'view' (this node's probes) or 'verdict' (DNS answers)",
    ["site", "kind", "to"],
)
PROBES = Counter("sipzone_site_probes", "Probe rounds by site and result", ["site", "result"])
FAIL_OPEN = Gauge(
    "sipzone_health_fail_open",
    "1 while every site that is not drained is down, so the DNS serves them all anyway",
    multiprocess_mode="livemax",
)


def targets(site: Site) -> tuple[Target, ...]:
    """Every (transport, VIP, port) the site offers, the DNS publishes and probes go to."""
    return tuple(
        Target(transport, str(vip), site.ports[transport], site.host)
        for transport in TRANSPORTS
        if site.ports.get(transport, 0)
        for vip in site.vips
    )


class SiteTracker(Tracker):
    """This node's view of one site, moved through the site's own thresholds."""

    def __init__(self, site: Site) -> None:
        super().__init__(site.check)
        self._site = site

    @property
    def site(self) -> Site:
        return self._site

    @site.setter
    def site(self, site: Site) -> None:
        self._site = site
        self.check = site.check

    def view(self) -> SiteView | None:
        if self.up is None:
            return None
        return SiteView(self.site.name, self.up, self.changed_at, self.detail)


class HealthMonitor:
    """Probes, heartbeat and verdicts of one node; publishes ``raw`` with health into ``out``."""

    def __init__(
        self,
        node: str,
        store: Store,
        raw: SnapshotHolder,
        out: SnapshotHolder,
        beat: Callable[[], NodeBeat],
        probing: bool = True,
        voice: bool = True,
    ) -> None:
        self.node = node
        self.store = store
        self.raw = raw
        self.out = out
        self.beat = beat
        self.probing = probing
        # With --workers N every worker probes; one logs and counts the transitions.
        self.log = log if voice else _SILENT
        self.voice = voice
        self.trackers: dict[str, SiteTracker] = {}
        self._loops: dict[str, tuple[Site, asyncio.Task[None]]] = {}
        self._others: list[SiteView] = []  # the other nodes' views as last read
        self._verdicts: dict[str, bool] = {}
        self._fail_open = False
        self._store_down_since: datetime | None = None
        self._beat_now = asyncio.Event()
        self._beat_task: asyncio.Task[None] | None = None
        self._context = tls_context()
        self.events = EventLog(log)
        raw.subscribe(lambda _old, _new: self._reconcile())

    # -- start and stop --------------------------------------------------------------------

    async def start(self) -> None:
        """One round for every site and one heartbeat, then publish: the services start on
        a snapshot that already knows which sites answer."""
        sites = self.raw.current.sites if self.probing else ()
        for site in sites:
            self.trackers[site.name] = SiteTracker(site)
        await asyncio.gather(*(self._round(self.trackers[s.name]) for s in sites))
        await self._heartbeat()
        self._reconcile()
        self._beat_task = asyncio.create_task(self._beat_loop())

    async def close(self) -> None:
        tasks = [task for _, task in self._loops.values()]
        if self._beat_task is not None:
            tasks.append(self._beat_task)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()

    # -- probing ---------------------------------------------------------------------------

    def _reconcile(self) -> None:
        """Probe loops for the raw snapshot's sites (a site whose targets or check changed
        gets a new loop and keeps its view), then the verdicts."""
        sites = {s.name: s for s in self.raw.current.sites} if self.probing else {}
        for name in list(self._loops):
            old, task = self._loops[name]
            new = sites.get(name)
            if new is None or targets(new) != targets(old) or new.check != old.check:
                task.cancel()
                del self._loops[name]
        for name in list(self.trackers):
            if name not in sites:
                del self.trackers[name]
                with contextlib.suppress(KeyError):
                    SITE_SEEN_UP.remove(name)
        for name, site in sites.items():
            tracker = self.trackers.setdefault(name, SiteTracker(site))
            tracker.site = site
            if name not in self._loops:
                self._loops[name] = (site, asyncio.create_task(self._probe_loop(tracker)))
        self._decide()

    async def _probe_loop(self, tracker: SiteTracker) -> None:
        interval = tracker.site.check.interval
        next_at = time.monotonic() + (interval if tracker.up is not None else 0.0)
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            next_at += interval
            if await self._round(tracker):
                self._decide()
                self._beat_now.set()

    async def _round(self, tracker: SiteTracker) -> bool:
        """Probe every target of the site once, in parallel; True when the view changed."""
        site = tracker.site
        errors = await asyncio.gather(
            *(probe(t, site.check.timeout, self._context) for t in targets(site))
        )
        error = next((e for e in errors if e is not None), None)
        PROBES.labels(site.name, "ok" if error is None else "failed").inc()
        before = tracker.up
        if not tracker.observe(error):
            return False
        SITE_SEEN_UP.labels(site.name).set(1 if tracker.up else 0)
        state = "up" if tracker.up else "down"
        if self.voice:
            SITE_TRANSITIONS.labels(site.name, "view", state).inc()
        log = self.log
        if before is None:
            log.info("health: site %s is %s at start (%s)", site.name, state, error or "answers")
        elif tracker.up:
            log.info(
                "health: site %s is up (this node: %d good rounds)",
                site.name, site.check.successes,
            )  # fmt: skip
        else:
            log.warning(
                "health: site %s is down (this node: %d failed rounds; %s)",
                site.name, site.check.failures, error,
            )  # fmt: skip
        return True

    # -- verdicts --------------------------------------------------------------------------

    def verdict(self, site: str) -> Verdict:
        """What this node and the others that see ``site`` say of it now."""
        fresh_after = datetime.now(UTC) - timedelta(seconds=VIEW_STALE)
        votes = {
            v.node: v.up
            for v in self._others
            if v.site == site and v.seen_at is not None and v.seen_at >= fresh_after
        }
        tracker = self.trackers.get(site)
        if tracker is not None and tracker.up is not None:
            votes[self.node] = tracker.up
        return majority(votes)

    def _decide(self) -> None:
        """Recompute every site's verdict; publish and log what changed."""
        raw = self.raw.current
        verdicts: dict[str, bool] = {}
        for site in raw.sites:
            verdict = self.verdict(site.name)
            up = site.healthy and not site.drained and verdict.up
            verdicts[site.name] = up
            was = self._verdicts.get(site.name)
            SITE_UP.labels(site.name).set(1 if up else 0)
            if was is not None and was != up and self.voice:
                SITE_TRANSITIONS.labels(site.name, "verdict", "up" if up else "down").inc()
                why = "drained" if site.drained else (
                    "marked down" if not site.healthy else verdict.describe()
                )  # fmt: skip
                self.log.warning(
                    "health: site %s %s DNS answers (%s)",
                    site.name, "back in" if up else "out of", why,
                )  # fmt: skip
        for name in set(self._verdicts) - set(verdicts):
            with contextlib.suppress(KeyError):
                SITE_UP.remove(name)
        self._verdicts = verdicts
        candidates = [s for s in raw.sites if not s.drained]
        fail_open = bool(candidates) and not any(verdicts[s.name] for s in candidates)
        if fail_open != self._fail_open:
            self._fail_open = fail_open
            FAIL_OPEN.set(1 if fail_open else 0)
            if fail_open:
                self.log.error("health: every site is down; the DNS serves them all (fail open)")
            else:
                self.log.info("health: a site is up again; fail open ends")
        self._publish(raw, verdicts)

    def _publish(self, raw: Snapshot, verdicts: dict[str, bool]) -> None:
        sites = tuple(
            s if s.healthy == verdicts[s.name] else replace(s, healthy=verdicts[s.name])
            for s in raw.sites
        )
        current = self.out.current
        if current.revision == raw.revision and current.sites == sites:
            return  # nothing new for the services
        # A rules-only change keeps its delta while the health is as published before; any
        # change of health makes the DNS rebuild (dns/answers.py ``follows``).
        delta = raw.delta if current.sites == sites else None
        self.out.publish(replace(raw, sites=sites, delta=delta))

    # -- heartbeat -------------------------------------------------------------------------

    async def _beat_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.beat_interval()):
                    await self._beat_now.wait()
            self._beat_now.clear()
            await self._heartbeat()
            self._decide()

    def beat_interval(self) -> float:
        """Seconds to the next heartbeat: BEAT_INTERVAL, or the shortest probe interval."""
        return min([BEAT_INTERVAL, *(s.check.interval for s in self.raw.current.sites)])

    async def _heartbeat(self) -> None:
        """Write this node's views and state, read the others' views; a store away is one
        log line (then one a minute) and leaves the cached views to age out."""
        loop = asyncio.get_running_loop()
        views = [v for t in self.trackers.values() if (v := t.view()) is not None]
        beat = replace(self.beat(), store_down_since=self._store_down_since)
        try:
            others = await loop.run_in_executor(None, self._exchange, views, beat)
        except Exception as exc:  # the store's trouble, whatever the driver calls it
            if self._store_down_since is None:
                self._store_down_since = datetime.now(UTC)
            # The feed says the store is away in its own line; this one is for debugging.
            self.events.event(
                logging.DEBUG,
                "store",
                "health: heartbeat not written (%s); probing goes on locally",
                first_line(exc),
            )
            return
        if self._store_down_since is not None:
            self._store_down_since = None
            self.events.forget("store")
            log.debug("health: heartbeat written again")
            self._beat_now.set()  # the next one, at once, clears the outage from the row
        self._others = [v for v in others if v.node != self.node]

    def _exchange(self, views: list[SiteView], beat: NodeBeat) -> list[SiteView]:
        # IntegrityError: another worker of this node wrote the same rows at the same moment.
        with contextlib.suppress(sa.exc.IntegrityError):
            self.store.write_views(self.node, views, beat)
        return self.store.site_views()
