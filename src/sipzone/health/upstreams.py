"""The upstreams, followed in the background: every configured upstream URI located by RFC
3263 (``sip/locate.py``) and located again when its TTL runs out, every target it locates to
probed like a site (``probe.py``, the thresholds of the edge's site), and the edge handed
where each upstream sends now (``sip/choice.py``) whenever either changes.

Theory of operation.  :meth:`UpstreamWatch.follow` runs when the snapshot changes: a locate
task per URI that is new, none for one that is gone; the first location of a new URI is
awaited, so that an edge starting up knows its upstreams before its first request.  A task
sleeps for the TTL of what it found (held between ``locate.MIN_TTL`` and ``MAX_TTL``); a
lookup that gets no answer, or an answer with no target, keeps the last good location and
is tried again after :data:`RETRY`.  A probe task per located target of an upstream (trunk
targets are located here but probed by the trunk prober) sends an OPTIONS each interval and
moves a :class:`~sipzone.model.health.Tracker` through the thresholds; a target no longer
located loses its task.  A change of location or of a target's up/down works out every
choice again and hands them to ``publish``: the request path only reads the result.

The voice worker (worker 0) also writes every located target's state to the store through
``report`` (:meth:`UpstreamWatch.states`, the table ``upstream_states``) whenever it changes,
for `sipzone status`; the store away costs only that write, retried every
:data:`REPORT_RETRY` seconds.

Nothing here is started by traffic: the URIs come from the snapshot, the times from TTLs and
the probe interval.  With ``probing`` off (``serve --no-health-checks``) targets are located
but not probed, and every one counts as usable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from sipzone.eventlog import EventLog
from sipzone.health.probe import Target as ProbeTarget
from sipzone.health.probe import probe, tls_context
from sipzone.model.health import DEFAULT_CHECK, HealthCheck, Tracker, UpstreamTargetState
from sipzone.sip.choice import Choice, Hop, choose, ordered
from sipzone.sip.locate import MAX_TTL, MIN_TTL, LocateFailed, Locator
from sipzone.sip.values import Target

log = logging.getLogger("sipzone.health")

RETRY = 10.0  # seconds before a lookup that got no answer is tried again

TARGET_UP = Gauge(
    "sipzone_upstream_target_up",
    "This worker's view of an upstream's located target from its probes: 1 up, 0 down",
    ["upstream", "target"],
    multiprocess_mode="livemax",
)
TARGETS = Gauge(
    "sipzone_upstream_targets",
    "Targets an upstream URI located to (RFC 3263), as last located",
    ["upstream"],
    multiprocess_mode="livemax",
)
FAIL_OPEN = Gauge(
    "sipzone_upstream_fail_open",
    "1 while every target of the upstream is down, so requests go to the first anyway",
    ["upstream"],
    multiprocess_mode="livemax",
)
LOCATE_FAILURES = Counter(
    "sipzone_upstream_locate_failures",
    "Lookups of an upstream that got no answer or no target (the last location is kept)",
    ["upstream"],
)

Publish = Callable[[Mapping[str, Choice]], None]
Report = Callable[[list[UpstreamTargetState]], None]  # to the store: blocking, in a thread
REPORT_RETRY = 5.0  # seconds before a report the store did not take is tried again


class UpstreamWatch:
    """Locations, probes and choices of one worker's upstreams (see the module docstring)."""

    def __init__(
        self,
        locator: Locator,
        publish: Publish,
        probing: bool = True,
        voice: bool = True,
        report: Report | None = None,
    ) -> None:
        self.locator = locator
        self.publish = publish
        self.probing = probing
        self.voice = voice  # with --workers N all probe; one logs and reports
        self.report = report if voice else None
        self.check = DEFAULT_CHECK
        self.located: dict[str, tuple[Hop, ...]] = {}  # by URI: its last good location
        self._located_at: dict[str, datetime] = {}  # by URI: when that location came
        self.trackers: dict[Target, Tracker] = {}
        self.choices: dict[str, Choice] = {}
        self._probed: frozenset[str] = frozenset()  # URIs whose targets are probed
        self._locating: dict[str, asyncio.Task[None]] = {}
        self._probes: dict[tuple[Target, str], asyncio.Task[None]] = {}  # (target, its name)
        self._context = tls_context()
        self.events = EventLog(log)
        self._reported: list[UpstreamTargetState] | None = None
        self._report_now = asyncio.Event()
        self._reporting: asyncio.Task[None] | None = None
        self._first_rounds: list[asyncio.Future[None]] = []  # of probe tasks started since

    async def follow(self, probed: set[str], located: set[str], check: HealthCheck) -> None:
        """Locate ``probed`` (the upstreams) and ``located`` (trunk targets), probe the first
        one's targets with ``check``; returns once every new URI was located once and every
        new target probed once (a round ends within ``check.timeout``), so that the first
        request after start already avoids a target that is dead at start."""
        wanted = probed | located
        if self.report is not None and self._reporting is None:
            self._reporting = asyncio.create_task(self._report_loop())
        for uri in set(self._locating) - wanted:
            self._locating.pop(uri).cancel()
            self.located.pop(uri, None)
            self._located_at.pop(uri, None)
            for metric in (TARGETS, FAIL_OPEN):
                with contextlib.suppress(KeyError):
                    metric.remove(uri)
        new = sorted(wanted - set(self._locating))
        self._probed = frozenset(probed)
        if check != self.check:
            self.check = check
            for tracker in self.trackers.values():
                tracker.check = check
            for task in self._probes.values():
                task.cancel()  # restarted below at the new interval
            self._probes.clear()
        delays = await asyncio.gather(*(self._locate(uri) for uri in new))
        for uri, delay in zip(new, delays, strict=True):
            self._locating[uri] = asyncio.create_task(self._locate_loop(uri, delay))
        self._changed()
        first_rounds, self._first_rounds = self._first_rounds, []
        if first_rounds:
            await asyncio.wait(first_rounds)

    async def close(self) -> None:
        tasks = [*self._locating.values(), *self._probes.values()]
        if self._reporting is not None:
            tasks.append(self._reporting)
        self._locating.clear()
        self._probes.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- locating --------------------------------------------------------------------------

    async def _locate_loop(self, uri: str, delay: float) -> None:
        while True:
            await asyncio.sleep(delay)
            delay = await self._locate(uri)
            self._changed()

    async def _locate(self, uri: str) -> float:
        """Locate ``uri`` once, keeping the last good location when this one fails; the
        seconds until the next time."""
        try:
            location = await self.locator.locate(uri)
            if not location.hops:
                raise LocateFailed("no target (no SRV target, no address)")
        except ValueError as exc:  # a URI the store accepted and RFC 3263 cannot use
            self.events.warning(f"locate:{uri}", "upstream %s cannot be located: %s", uri, exc)
            return MAX_TTL
        except LocateFailed as exc:
            LOCATE_FAILURES.labels(uri).inc()
            kept = "keeping the last answer" if uri in self.located else "none yet"
            self.events.warning(f"locate:{uri}", "upstream %s not located (%s): %s", uri, exc, kept)
            return RETRY
        except Exception as exc:  # a bug here must not end the locating for good
            self.events.error(f"locate-bug:{uri}", "locating upstream %s failed: %r", uri, exc)
            return RETRY
        self.events.forget(f"locate:{uri}")
        if self.located.get(uri) != location.hops:
            if self.voice:
                log.info(
                    "upstream %s %slocates to %s",
                    uri, "now " if uri in self.located else "",
                    ", ".join(_describe(hop) for hop in location.hops),
                )  # fmt: skip
            self.located[uri] = location.hops
            self._located_at[uri] = datetime.now(UTC)
        TARGETS.labels(uri).set(len(location.hops))
        return min(max(location.ttl, MIN_TTL), MAX_TTL)

    # -- probing ---------------------------------------------------------------------------

    def _follow_probes(self) -> None:
        """A probe task for every target of the probed upstreams; none for any other."""
        wanted = {
            (hop.target, hop.name)
            for uri in self._probed
            for hop in self.located.get(uri, ())
        } if self.probing else set()  # fmt: skip
        for key in set(self._probes) - wanted:
            self._probes.pop(key).cancel()
        targets = {target for target, _ in wanted}
        for target in set(self.trackers) - targets:
            del self.trackers[target]
            for uri in self._probed | set(self.located):
                with contextlib.suppress(KeyError):
                    TARGET_UP.remove(uri, _where(target))
        loop = asyncio.get_running_loop()
        self._first_rounds = [f for f in self._first_rounds if not f.done()]
        for key in wanted - set(self._probes):
            tracker = self.trackers.setdefault(key[0], Tracker(self.check))
            first: asyncio.Future[None] = loop.create_future()
            self._first_rounds.append(first)
            self._probes[key] = loop.create_task(self._probe_loop(*key, tracker, first))

    async def _probe_loop(
        self, target: Target, name: str, tracker: Tracker, first: asyncio.Future[None]
    ) -> None:
        """Probe ``target`` every interval; ``first`` is done after the first round (or when
        the task ends without one)."""
        check = self.check
        where = ProbeTarget(target.transport, target.host, target.port, name or None)
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        try:
            while True:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += check.interval
                error = await probe(where, check.timeout, self._context)
                if tracker.observe(error):
                    self._transition(target, where, tracker)
                    self._changed()
                if not first.done():
                    first.set_result(None)
        finally:
            if not first.done():
                first.set_result(None)

    def _transition(self, target: Target, where: ProbeTarget, tracker: Tracker) -> None:
        state = "up" if tracker.up else "down"
        for uri in self._probed:
            if any(hop.target == target for hop in self.located.get(uri, ())):
                TARGET_UP.labels(uri, _where(target)).set(1 if tracker.up else 0)
        if not self.voice:
            return
        if tracker.up:
            log.info("health: upstream target %s is %s", where, state)
        else:
            log.warning("health: upstream target %s is %s (%s)", where, state, tracker.detail)

    # -- choosing --------------------------------------------------------------------------

    def _changed(self) -> None:
        """Locations or health changed: the probes to run, every choice, and ``publish``."""
        self._follow_probes()
        trackers = self.trackers

        def usable(target: Target) -> bool:
            tracker = trackers.get(target)
            return tracker is None or tracker.up is not False

        choices = {}
        for uri, hops in self.located.items():
            choice = choose(hops, usable)
            if choice is None:
                continue
            choices[uri] = choice
            was = self.choices.get(uri)
            if uri in self._probed and (was is None or was.fail_open != choice.fail_open):
                FAIL_OPEN.labels(uri).set(1 if choice.fail_open else 0)
                if self.voice and choice.fail_open:
                    log.error(
                        "health: every target of upstream %s is down; sending to %s anyway "
                        "(fail open)", uri, _where(choice.first),
                    )  # fmt: skip
                elif self.voice and was is not None:
                    log.info("health: upstream %s has a target up again", uri)
            if self.voice and was is not None and was.targets != choice.targets:
                log.warning(
                    "health: upstream %s now sends to %s",
                    uri, ", ".join(_where(t) for t in choice.targets),
                )  # fmt: skip
        self.choices = choices
        self.publish(choices)
        self._report_now.set()

    # -- reporting -------------------------------------------------------------------------

    def states(self) -> list[UpstreamTargetState]:
        """What `sipzone status` shows of the probed upstreams: every located target."""
        states = []
        for uri in sorted(self._probed & set(self.located)):
            choice = self.choices.get(uri)
            for hop in ordered(self.located[uri]):
                tracker = self.trackers.get(hop.target)
                states.append(
                    UpstreamTargetState(
                        uri,
                        _where(hop.target),
                        hop.priority,
                        hop.weight,
                        tracker.up if tracker is not None else None,
                        choice is not None and hop.target in choice.targets,
                        tracker.changed_at if tracker is not None else self._located_at[uri],
                        tracker.detail if tracker is not None else None,
                    )
                )
        return states

    async def _report_loop(self) -> None:
        """Write :meth:`states` to the store whenever they change (one write at a time)."""
        assert self.report is not None
        loop = asyncio.get_running_loop()
        while True:
            await self._report_now.wait()
            self._report_now.clear()
            states = self.states()
            if states == self._reported:
                continue
            try:
                await loop.run_in_executor(None, self.report, states)
            except Exception as exc:  # the store away: metrics and logs still say it
                self.events.warning("upstream-report", "upstream states not stored: %s", exc)
                await asyncio.sleep(REPORT_RETRY)
                self._report_now.set()
                continue
            self._reported = states


def _where(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    return f"{target.transport} {host}:{target.port}"


def _describe(hop: Hop) -> str:
    return f"{_where(hop.target)} (priority {hop.priority}, weight {hop.weight})"
