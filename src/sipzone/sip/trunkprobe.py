"""The trunk prober: one task per trunk target sending the OPTIONS of ``trunks.py`` over a TLS
(or TCP) connection of its own, and keeping the target's :class:`TargetHealth`.

Theory of operation.  :meth:`TrunkProber.follow` runs on every snapshot: a task starts for
each (trunk, target) that is new or changed and stops for each that is gone, so a trunk
added with ``sipzone trunk add`` is probed as soon as the worker sees it (a target whose name
is not located yet, again within a second) and one removed falls silent.
A task keeps one connection open between probes (opened again after any failure), presents
the certificate that covers the trunk's base FQDN (:meth:`TlsContexts.client_for`) and checks
the target's certificate against the name in its URI and the operator's CAs
(``--tls-upstream-ca``).  Target names are configuration: the upstream watch locates them in
the background with the upstreams (:meth:`Edge.upstream_uris`), and a name it has no address
for yet is a missed probe, never a lookup here.

Each probe's outcome goes to the metrics at once and, through ``report``, to the store (the
``trunk_state`` table `trunk list` reads; observations, outside the revision).  Only one
worker probes (``SipConfig.probe_trunks``): N workers must not multiply the OPTIONS.  The
others read what it stored every :data:`FOLLOW_INTERVAL` (:func:`follow_trunk_states`), so
every worker fails calls over alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import socket
import ssl
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from sipzone.eventlog import EventLog
from sipzone.model.snapshot import Snapshot
from sipzone.model.trunks import Trunk, TrunkState
from sipzone.sip import metrics
from sipzone.sip.memo import Upstreams
from sipzone.sip.message import MalformedMessage, Response, StreamReader, is_ip_literal
from sipzone.sip.trunks import TargetHealth, next_delay, options_request, retry_after
from sipzone.sip.values import Target

if TYPE_CHECKING:
    from sipzone.sip.transport import SipService

log = logging.getLogger("sipzone.sip.trunks")

CONNECT_TIMEOUT = 5.0  # seconds for the TCP connect and the TLS handshake together
ANSWER_TIMEOUT = 5.0  # seconds for the final answer to an OPTIONS
DEFAULT_TLS_PORT = 5061  # in our Contact when we have no TLS listener
UNLOCATED_RETRY = 1.0  # seconds before probing again a target whose name has no address yet

Report = Callable[[str, list[TrunkState]], None]  # (node, states): blocking, run in a thread
Seen = Callable[[], list[tuple[str, TrunkState]]]  # what the store holds: (node, state) rows
FOLLOW_INTERVAL = 2.0  # seconds between reads of the probing worker's view by the others


class _Link:
    """One open connection of a probe task."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.frames = StreamReader()

    async def exchange(self, request: bytes, call_id: bytes) -> Response:
        """Send ``request`` and read until the final response with ``call_id``."""
        self.writer.write(request)
        await self.writer.drain()
        while True:
            message = self.frames.next_message()
            if message is None:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the target")
                self.frames.receive_data(data)
                continue
            if (
                isinstance(message, Response)
                and message.status >= 200
                and message.fields.get(b"Call-ID") == call_id
            ):
                return message
            # A provisional answer, or a request of the target's on our connection: not ours.

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class TrunkProber:
    """The probe tasks of one worker, following the snapshots."""

    def __init__(self, service: SipService, report: Report | None = None) -> None:
        self.service = service
        self.report = report
        self.node = socket.gethostname()
        self.health: dict[tuple[str, str], TargetHealth] = {}  # (trunk, target) -> health
        self._tasks: dict[tuple[str, str], tuple[Trunk, asyncio.Task[None]]] = {}
        self._targets = Upstreams()  # parses target URIs (cached)
        self.events = EventLog(log)
        self._rng = random.Random()  # spreads timers; no secret

    def follow(self, _old: Snapshot, new: Snapshot) -> None:
        """Start, restart and stop probe tasks to match ``new``'s trunks."""
        wanted = {(t.name, target): t for t in new.trunks for target in t.targets}
        for key, (trunk, task) in list(self._tasks.items()):
            if wanted.get(key) != trunk:
                task.cancel()
                del self._tasks[key]
                if key not in wanted:
                    self.health.pop(key, None)
                    metrics.forget_trunk_target(*key)
        for key, trunk in wanted.items():
            if key not in self._tasks:
                self.health.setdefault(key, TargetHealth(*key))
                task = asyncio.ensure_future(self._run(trunk, key[1]))
                self._tasks[key] = (trunk, task)

    async def close(self) -> None:
        tasks = [task for _, task in self._tasks.values()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- one target ---------------------------------------------------------------------------

    async def _run(self, trunk: Trunk, target: str) -> None:
        link: _Link | None = None
        cseq = 0
        interval = float(trunk.options_interval)
        # The first probe soon, but not every target in the same instant.
        await asyncio.sleep(self._rng.uniform(0, min(1.0, interval * 0.1)))
        try:
            while True:
                health = self.health[(trunk.name, target)]
                until = health.unavailable_until
                if until is not None:
                    wait = (until - datetime.now(UTC)).total_seconds()
                    if wait > 0:  # a 503's Retry-After: not even an OPTIONS before then
                        await asyncio.sleep(wait)
                cseq += 1
                link = await self._probe(trunk, target, link, cseq, health)
                delay = next_delay(interval, self._rng)
                if not self._located(target):
                    # A trunk added live is located (RFC 3263) while its probes start: the
                    # first may find no address yet, and must not wait a whole interval more.
                    delay = min(delay, UNLOCATED_RETRY)
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            if link is not None:
                link.close()
            raise
        except Exception as exc:  # a bug must not end the probing silently
            self.events.error(
                f"probe-bug:{trunk.name}",
                "trunk %s: probing %s failed: %r", trunk.name, target, exc,
            )  # fmt: skip

    async def _probe(
        self, trunk: Trunk, target: str, link: _Link | None, cseq: int, health: TargetHealth
    ) -> _Link | None:
        """One OPTIONS; the link to keep for the next one (None: open a new one then)."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome: Response | str
        try:
            if link is None:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    link = await self._connect(trunk, target)
            request = options_request(trunk, target, *self._contact(trunk, target), cseq)
            call_id = request.split(b"\r\nCall-ID: ", 1)[1].split(b"\r\n", 1)[0]
            async with asyncio.timeout(ANSWER_TIMEOUT):
                outcome = await link.exchange(request, call_id)
        except _NoAddress as exc:
            outcome = str(exc)
        except TimeoutError:
            outcome = "timeout"
        except ssl.SSLError as exc:
            outcome = f"TLS failed: {exc.reason or exc}"
        except (OSError, MalformedMessage) as exc:
            outcome = f"connection failed: {exc}"
        if not isinstance(outcome, Response) and link is not None:
            link.close()
            link = None
        now = datetime.now(UTC)
        if isinstance(outcome, Response):
            changed = health.answered(
                outcome.status,
                outcome.reason.decode("ascii", "replace"),
                loop.time() - started,
                float(trunk.options_interval),
                now,
                retry_after(outcome),
            )
        else:
            changed = health.missed(outcome, now)
        self._observed(health, changed)
        if self.report is not None:
            await self._report(health.state())
        return link

    def _contact(self, trunk: Trunk, target: str) -> tuple[str, int]:
        """The target's host (To) and our TLS port (Contact)."""
        parsed = self._targets.target(target)
        host = parsed.host if parsed is not None else target
        port = next(
            (lst.port for lst in self.service.listeners if lst.transport == "tls"),
            DEFAULT_TLS_PORT,
        )
        return host, port

    async def _connect(self, trunk: Trunk, target: str) -> _Link:
        parsed = self._targets.target(target)
        if parsed is None or parsed.transport not in ("tls", "tcp"):
            raise _NoAddress(f"not probed: {target} is no TLS or TCP target")
        address = self._address(parsed)
        if address is None:
            raise _NoAddress(f"{parsed.host} not resolved (yet)")
        context = None
        if parsed.transport == "tls":
            context = self.service.tls.client_for(trunk.base)
        reader, writer = await asyncio.open_connection(
            address,
            parsed.port,
            ssl=context,
            server_hostname=parsed.host if context is not None else None,
        )
        return _Link(reader, writer)

    def _located(self, target: str) -> bool:
        """False while ``target`` names a host the upstream watch has no address for yet."""
        parsed = self._targets.target(target)
        return parsed is None or self._address(parsed) is not None

    def _address(self, target: Target) -> str | None:
        """Where to connect for ``target``: its IP literal, or what its name located to."""
        if is_ip_literal(target.host):
            return target.host
        return self.service.resolved.get(target.host)

    def _observed(self, health: TargetHealth, changed: bool) -> None:
        """Publish one probe's outcome: metrics, and a log line when up/down changed."""
        metrics.publish_trunk_target(health.trunk, health.target, health.up, health.latency_ms)
        if changed:
            until = health.unavailable_until
            log.log(
                logging.INFO if health.up else logging.WARNING,
                "trunk %s: target %s is %s (%s%s)",
                health.trunk,
                health.target,
                "up" if health.up else "down",
                health.last_response,
                f"; unavailable until {until:%H:%M:%S} UTC" if until else "",
            )

    async def _report(self, state: TrunkState) -> None:
        assert self.report is not None
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.report, self.node, [state])
        except Exception as exc:  # the store away: the metrics and logs still say it
            self.events.warning("trunk-report", "trunk state not stored: %s", exc)


class _NoAddress(Exception):
    """A target the prober cannot send to: no address for its name (yet), or no stream."""


async def follow_trunk_states(
    seen: Seen, node: str, publish: Callable[[dict[tuple[str, str], TargetHealth]], None]
) -> None:
    """In a worker that does not probe: hand ``publish`` this node's probing worker's view of
    each target, read from the store every :data:`FOLLOW_INTERVAL`, until cancelled."""
    loop = asyncio.get_running_loop()
    events = EventLog(log)
    while True:
        try:
            rows = await loop.run_in_executor(None, seen)
        except Exception as exc:  # the store away: keep the last view
            events.warning("trunk-follow", "trunk states not read: %s", exc)
        else:
            publish({(s.trunk, s.target): TargetHealth.of(s) for n, s in rows if n == node})
        await asyncio.sleep(FOLLOW_INTERVAL)
