"""The DNS authority's sockets: UDP and TCP listeners, zone transfers, NOTIFY on change.

Everything that decides an answer lives in :mod:`sipzone.dns.answers`; this module only moves
bytes.  Sockets are bound with SO_REUSEPORT so ``--workers N`` processes can share the port, the
kernel spreading queries between them.

TCP is where a client can hold what it costs us (a descriptor, a task), so it is bounded: a cap
on connections in all and per source (IPv4 address, IPv6 /64), a connection closed once it has
gone ``tcp_idle_timeout`` without a query we answered (a zero-length frame, a half length
prefix or a byte at a time never resets that clock), a query's bytes due within
``tcp_query_timeout`` of its first, and our answers read by the client within the idle timeout.
Over UDP, ``--dns-rrl`` wraps the responder in :class:`~sipzone.dns.rrl.RateLimiter`; without
it the responder is called directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import cast

import dns.asyncquery
import dns.exception
import dns.message
import dns.opcode
import dns.rcode

from sipzone.dns import DnsConfig
from sipzone.dns import metrics as dns_metrics
from sipzone.dns.answers import (
    Authority,
    Respond,
    Tables,
    error,
    follows,
    log_bug,
    question,
)
from sipzone.dns.ixfr import Journal
from sipzone.dns.protocol import FORMERR, OPCODE, QR, QTYPE_AXFR, QTYPE_IXFR
from sipzone.dns.rrl import RateLimiter, client_block
from sipzone.dns.xfr import notify_message, transfer, udp_ixfr
from sipzone.eventlog import EventLog
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.net import batched_udp, split_hostport
from sipzone.net.limits import connection_cap
from sipzone.net.sockets import bound_socket

ANY_PORT_TRIES = 20  # listening on port 0: UDP's pick tried for TCP this many times
log = logging.getLogger("sipzone.dns")
events = EventLog(log)

# Above this many rules a full rebuild (about a second per million) runs on a thread.
REBUILD_ON_THREAD = 50_000
NOTIFY_TRIES = 5
NOTIFY_TIMEOUT = 2.0


@dataclass(slots=True)
class DnsStats:
    """What the server refused or cut short since it started (plain counters)."""

    tcp_over_cap: int = 0  # connections closed at once: the total cap was reached
    tcp_over_source_cap: int = 0  # ... their source already held its share
    tcp_timed_out: int = 0  # connections closed by the idle, query or write deadline
    rrl_dropped: int = 0  # UDP responses not sent (--dns-rrl)
    rrl_slipped: int = 0  # UDP responses sent truncated instead (--dns-rrl-slip)


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, respond: Respond) -> None:
        self._respond = respond
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport; it quacks alike.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            out = self._respond(data, str(addr[0]))
        except Exception as exc:  # a bug must cost one answer, never the server
            log_bug("answering a UDP query", exc)
            out = None
        if out is not None and self._transport is not None:
            self._transport.sendto(out, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a client that went away: nothing to do.
        log.debug("UDP error: %s", exc)


class DnsService:
    """A running authority; ``await close()`` stops it."""

    def __init__(self, config: DnsConfig, holder: SnapshotHolder) -> None:
        self.config = config
        self.holder = holder
        self.authority = Authority(holder.current, config)
        # What transfers publish (the zones as configured) and their recent changes (IXFR).
        self.journal = Journal(holder.current, config)
        self.authority.udp_ixfr = self._udp_ixfr
        self._udp: asyncio.DatagramTransport | None = None
        self._batched: batched_udp.BatchedUdp | None = None
        self._tcp: asyncio.Server | None = None
        self._notifying: set[asyncio.Task[None]] = set()
        self._pending: list[Snapshot] = []
        self._follower: asyncio.Future[None] | None = None
        self._closed = False
        self.address: tuple[str, int] = ("", 0)
        self.tcp_cap = connection_cap(config.tcp_max_connections)
        self._tcp_clients = 0
        self._tcp_sources: dict[bytes, int] = {}
        # Open TCP sessions, and whether each is answering a query now (a drain waits for
        # those, and closes the others at once).
        self._sessions: dict[asyncio.StreamWriter, bool] = {}
        self._draining = False
        self._stats = DnsStats()
        self.rrl = RateLimiter(config.rrl, config.rrl_slip) if config.rrl > 0 else None
        # Queries by type and rcode (plain ints; the runtime publishes them): with --metrics only.
        self.counts = dns_metrics.QueryCounts() if config.metrics else None

    @property
    def stats(self) -> DnsStats:
        if self.rrl is not None:
            self._stats.rrl_dropped = self.rrl.dropped
            self._stats.rrl_slipped = self.rrl.slipped
        return self._stats

    def _udp_ixfr(self, data: bytes, client: str | bytes) -> bytes | None:
        """IXFR over UDP (see :func:`~sipzone.dns.xfr.udp_ixfr`), for a query the responder
        refused as malformed: only one whose question asks IXFR is parsed again."""
        q = question(data)
        if q is None or q[1] != QTYPE_IXFR:
            return None
        journal = self.journal
        # Batched UDP hands over the packed address (4 or 16 octets).
        client = client if isinstance(client, str) else str(ipaddress.ip_address(client))
        return udp_ixfr(journal.records, data, client, self.config.allow_transfer, journal,
                        self.config.udp_payload)  # fmt: skip

    def _udp_responder(self) -> Respond:
        """The UDP responder: the authority's own (the hot path), or behind the rate limiter."""
        respond: Respond = self.authority.respond
        if self.counts is not None:
            respond = self.counts.wrap(respond)
        if self.rrl is None:
            return respond
        check = self.rrl.check

        def limited(data: bytes, client: str | bytes) -> bytes | None:
            out = respond(data, client)
            return None if out is None else check(data, out, client)

        return limited

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, asked = split_hostport(self.config.listen, allow_zero=True)
        for attempt in range(ANY_PORT_TRIES if asked == 0 else 1):
            udp = bound_socket(host, asked, socket.SOCK_DGRAM, dual_stack=True)
            port = udp.getsockname()[1]  # port 0 picks one; TCP follows it
            try:
                tcp = bound_socket(host, port, socket.SOCK_STREAM, dual_stack=True, backlog=128)
                break
            except OSError:
                udp.close()
                # The port UDP picked may be some TCP connection's own: pick another.
                if asked != 0 or attempt == ANY_PORT_TRIES - 1:
                    raise
        self.address = (host, port)
        respond = self._udp_responder()
        if self.config.batched_udp and batched_udp.available():
            self._batched = batched_udp.BatchedUdp(udp, respond, self.config.udp_payload)
            self._batched.start(loop)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(respond), sock=udp
            )
            self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        self.holder.subscribe(self._on_snapshot)
        if self.holder.current is not self.authority.snapshot:
            self._on_snapshot(self.authority.snapshot, self.holder.current)
        log.info("DNS on %s:%d (UDP, TCP), serials %s", host, port, self.authority.serials())

    def _on_snapshot(self, old: Snapshot, new: Snapshot) -> None:
        """Follow a swap: at once when that is cheap (a delta, or a small store), else on a
        thread while the current tables keep answering; snapshots apply in order either way."""
        if self._closed:
            return
        try:
            self.journal.follow(new)
        except Exception as exc:  # ours; IXFR restarts from here, AXFR still works
            log_bug(f"recording revision {new.revision} for IXFR", exc)
            self.journal = Journal(new, self.config)
        if self._follower is None and (
            follows(self.authority.snapshot, new) or len(new.matcher) < REBUILD_ON_THREAD
        ):
            before = self.authority.serials()
            try:
                self.authority.update(new)
            except Exception as exc:  # ours; a rebuild may still succeed
                log_bug(f"applying revision {new.revision}", exc)
                try:
                    self.authority.rebuild(new)
                except Exception as again:  # keep answering what we have
                    log_bug(f"rebuilding for revision {new.revision}", again)
                    return
            self._changed(before)
            return
        self._pending.append(new)
        if self._follower is None:
            self._follower = asyncio.ensure_future(self._follow())

    async def _follow(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending and not self._closed:
                batch, self._pending = self._pending, []
                before = self.authority.serials()
                # Everything from the last snapshot that does not follow its predecessor on
                # needs full tables; the ones after it apply as deltas.
                cut, prev = -1, self.authority.snapshot
                for i, snapshot in enumerate(batch):
                    if not follows(prev, snapshot):
                        cut = i
                    prev = snapshot
                if cut >= 0:
                    tables = await loop.run_in_executor(None, Tables.build, batch[cut], self.config)
                    if self._closed:
                        return
                    self.authority.install(tables)
                for snapshot in batch[cut + 1 :]:
                    self.authority.update(snapshot)
                self._changed(before)
        except Exception as exc:  # keep answering the revision we have
            log_bug(f"following snapshots (serving revision {self.authority.snapshot.revision})",
                    exc)  # fmt: skip
        finally:
            self._follower = None

    async def settle(self) -> None:
        """Wait until every published snapshot is applied (tests, orderly shutdown)."""
        while self._follower is not None:
            await asyncio.shield(self._follower)

    def _changed(self, serials_before: dict[str, int]) -> None:
        if self.rrl is not None:
            self.rrl.forget_answers()
        serials = self.authority.serials()
        changed = [z for z, serial in serials.items() if serials_before.get(z) != serial]
        if changed:
            self.notify_secondaries(changed)

    def notify_secondaries(self, zones: list[str] | None = None) -> None:
        """NOTIFY ``zones`` (default: every zone) to every secondary, if this process holds
        the NOTIFY role: after a change to those zones, and when the runtime starts a worker
        that takes the role over."""
        if self.config.send_notify:
            for target in self.config.notify:
                for zone in self.authority.snapshot.zones if zones is None else zones:
                    self._spawn(self._notify(target, zone))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._notifying.add(task)
        task.add_done_callback(self._notifying.discard)

    async def _notify(self, target: str, zone: str) -> None:
        """NOTIFY one secondary, retrying until it answers (RFC 1996 §3.6)."""
        host, port = split_hostport(target)
        msg = notify_message(zone, self.authority.records)
        for attempt in range(NOTIFY_TRIES):
            try:
                reply = await dns.asyncquery.udp(msg, host, timeout=NOTIFY_TIMEOUT, port=port)
            except (dns.exception.Timeout, OSError, dns.exception.DNSException) as exc:
                log.debug("NOTIFY %s to %s, try %d: %s", zone, target, attempt + 1, exc)
                continue
            if reply.opcode() == dns.opcode.NOTIFY:
                log.info(
                    "NOTIFY %s serial %s acknowledged by %s (%s)",
                    zone,
                    msg.answer[0][0].serial,
                    target,
                    dns.rcode.to_text(reply.rcode()),
                )
                dns_metrics.NOTIFIES.labels("acknowledged").inc()
                return
        log.warning("NOTIFY %s to %s: no answer after %d tries", zone, target, NOTIFY_TRIES)
        dns_metrics.NOTIFIES.labels("unanswered").inc()

    def _admit_tcp(self, client: str, source: bytes) -> bool:
        """Count a new connection in, or say no when a cap is reached."""
        held = self._tcp_sources.get(source, 0)
        if self._tcp_clients >= self.tcp_cap:
            self._stats.tcp_over_cap += 1
            events.warning("tcp cap", "DNS over TCP: %d connections (the cap); closing new ones",
                           self.tcp_cap)  # fmt: skip
            return False
        if held >= self.config.tcp_max_per_source:
            self._stats.tcp_over_source_cap += 1
            events.warning("tcp source cap",
                           "DNS over TCP: %s holds %d connections (the cap per source); "
                           "closing its new ones", client, held)  # fmt: skip
            return False
        self._tcp_clients += 1
        self._tcp_sources[source] = held + 1
        return True

    def _release_tcp(self, source: bytes) -> None:
        self._tcp_clients -= 1
        held = self._tcp_sources.pop(source, 1) - 1
        if held > 0:
            self._tcp_sources[source] = held

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        source = client_block(client, 32, 64)
        if self._draining or not self._admit_tcp(client, source):
            writer.transport.abort()
            return
        self._sessions[writer] = False
        try:
            await self._tcp_session(reader, writer, client)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except TimeoutError:
            self._stats.tcp_timed_out += 1
        except Exception as exc:  # a bug costs this connection, not the server
            log_bug("serving a TCP client", exc)
        finally:
            self._sessions.pop(writer, None)
            self._release_tcp(source)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _tcp_session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, client: str
    ) -> None:
        """Answer length-prefixed queries (RFC 1035 §4.2.2) until a deadline passes."""
        loop = asyncio.get_running_loop()
        idle = self.config.tcp_idle_timeout
        per_query = min(self.config.tcp_query_timeout, idle)
        deadline = loop.time() + idle  # moves only when a query was answered
        while True:
            # Checked here as well: a read the buffer can satisfy never waits, so a timeout
            # around it alone would never fire for a client that keeps bytes coming.
            if loop.time() >= deadline:
                raise TimeoutError
            async with asyncio.timeout_at(deadline):
                first = await reader.readexactly(1)
            self._sessions[writer] = True
            async with asyncio.timeout(per_query):
                length = first[0] << 8 | (await reader.readexactly(1))[0]
                data = await reader.readexactly(length)
            answered = False
            for out in self._tcp_answers(data, client):
                writer.write(struct.pack("!H", len(out)) + out)
                # A zone transfer is thousands of messages: a reader that stops reading must
                # not hold it (and its snapshot) forever, and drain() returns without yielding
                # while the socket keeps up, so yield to queries and SIP between messages.
                async with asyncio.timeout(idle):
                    await writer.drain()
                await asyncio.sleep(0)
                answered = True
            if answered:
                deadline = loop.time() + idle
            self._sessions[writer] = False
            if self._draining:
                return  # the answer is out: this session is done

    def _tcp_answers(self, data: bytes, client: str) -> Iterable[bytes]:
        q = question(data)
        if q is not None and q[1] in (QTYPE_AXFR, QTYPE_IXFR) and not data[2] & (QR | OPCODE):
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                return [error(data, FORMERR)]
            journal = self.journal
            # A generator: each message is rendered just before it is written, so a big zone
            # streams with the writer's flow control instead of piling up in memory.
            return dns_metrics.counted_transfer(
                transfer(journal.records, query, client, self.config.allow_transfer, journal)
            )
        out = self.authority.respond(data, client, tcp=True)
        if out is None:
            return []
        if self.counts is not None:
            self.counts.count(out)
        return [out]

    async def drain(self, timeout: float) -> tuple[int, int]:
        """Stop accepting TCP connections; close the idle sessions at once and let those
        answering (a zone transfer, say) finish, for up to ``timeout`` seconds.  Returns
        (sessions that ended cleanly, sessions still open at the deadline, closed by
        :meth:`close`).  UDP keeps answering meanwhile."""
        self._draining = True
        if self._tcp is not None:
            self._tcp.close()
        start = len(self._sessions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._sessions and loop.time() < deadline:
            for writer, busy in list(self._sessions.items()):
                if not busy:
                    writer.close()
            await asyncio.sleep(0.02)
        return start - len(self._sessions), len(self._sessions)

    async def close(self) -> None:
        self._closed = True
        if self._udp is not None:
            self._udp.close()
        if self._batched is not None:
            self._batched.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await self._tcp.wait_closed()
        for task in [*self._notifying, *([self._follower] if self._follower else [])]:
            task.cancel()
        if self._notifying or self._follower:
            await asyncio.gather(
                *self._notifying,
                *([self._follower] if self._follower else []),
                return_exceptions=True,
            )


async def start_dns(config: DnsConfig, holder: SnapshotHolder) -> DnsService:
    """Start answering on ``config.listen`` from ``holder.current``, following every swap."""
    service = DnsService(config, holder)
    await service.start()
    return service
