"""The SIP edge's sockets: UDP, TCP and TLS listeners on asyncio (uvloop), IPv4 and IPv6.

Every listening socket is bound with SO_REUSEPORT, so ``--workers N`` processes each open the
same ports and the kernel spreads datagrams and connections between them.  Each worker runs its
own :class:`~sipzone.sip.edge.Edge`; since the edge is stateless, which worker sees a message
does not matter, except that a response relayed over TCP must leave by the connection its
request came in on, which only the receiving worker holds (its id travels in our Via).

On Linux a UDP socket is served by :class:`sipzone.net.batched_udp.BatchedUdp` (datagrams in
by recvmmsg, the answers back to their sources by one sendmmsg per batch); elsewhere, or with
``SipConfig.batched_udp`` off, by the event loop's datagram transport.  Either way
:meth:`UdpEndpoint.respond` hands each datagram to :meth:`Edge.receive` (which answers
keep-alives on its fast path) and sends the answer back to the source without a dispatch.

Stream connections are kept in one table per worker whether a peer opened them or we did (to
a TCP upstream, or back to a client): responses and in-dialog requests reuse them.  A
connection is closed when idle for ``tcp_idle_timeout``, and also when a message takes longer
than ``tcp_header_timeout`` from its first byte to the end of its headers or
``tcp_message_timeout`` to its end (a peer dribbling bytes resets only the idle timer); at
most ``tcp_max_connections`` (below the open-file limit) are kept, ``tcp_max_per_source`` from
one peer address.

TLS connections are TCP connections with TLS done here on memory buffers (``ssl.MemoryBIO``),
so they share everything above (the table, framing, deadlines, caps) and the transport sees
each handshake's outcome and the peer's certificate.  The handshake runs on the header deadline.
The contexts and the choice of certificate by server name are ``tls.py``'s, rebuilt when a
snapshot brings other certificates; a connection keeps the context it started with.

Names are looked up in the background only, by the upstream watch this module runs
(``health/upstreams.py``): the configured upstreams and trunk targets (see
:meth:`Edge.upstream_uris`) located by RFC 3263 when the snapshot brings new ones and again
when their TTL runs out, and their targets probed.  The edge hands this module addresses
only; nothing a peer sends triggers a lookup.  Whatever
traffic can make this module log goes through :class:`~sipzone.eventlog.EventLog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import secrets
import socket
import ssl
import traceback
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from sipzone.eventlog import EventLog
from sipzone.health.upstreams import Report as UpstreamReport
from sipzone.health.upstreams import UpstreamWatch
from sipzone.model.health import DEFAULT_CHECK
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.net import batched_udp
from sipzone.net.limits import connection_cap
from sipzone.net.sockets import bound_socket
from sipzone.sip import SipConfig, metrics, parse_listen
from sipzone.sip.edge import Edge
from sipzone.sip.keepalive import DECLINED
from sipzone.sip.locate import Locator
from sipzone.sip.message import (
    MAX_MESSAGE,
    MalformedMessage,
    Request,
    Response,
    StreamReader,
    is_ip_literal,
    parse_message,
)
from sipzone.sip.tls import PeerCertificate, TlsContexts, TlsPolicy
from sipzone.sip.trunkprobe import Report, Seen, TrunkProber, follow_trunk_states
from sipzone.sip.trunks import TargetHealth
from sipzone.sip.values import Arrival, Listener, Send, Sends

log = logging.getLogger("sipzone.sip")

RECV_SIZE = MAX_MESSAGE + 1  # no UDP payload is larger: a datagram is never read in part
ARRIVALS_KEPT = 4096  # peer addresses a UDP endpoint keeps an Arrival for

METRICS_INTERVAL = 1.0
DRAIN_QUIET = 0.25  # seconds without a byte before a draining connection counts as settled
DRAIN_FLUSH = 1.0  # seconds a draining connection gets to take what was written to it


class _Traceback:
    """A traceback formatted only if the line that carries it is written."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    def __str__(self) -> str:
        return "".join(traceback.format_exception(self.exc)).rstrip()


def _bind(transport: str, host: str, port: int) -> socket.socket:
    kind = socket.SOCK_DGRAM if transport == "udp" else socket.SOCK_STREAM
    return bound_socket(host, port, kind)


class UdpSender(Protocol):
    """What sends a datagram: uvloop's transport, or the batched socket."""

    def sendto(self, data: bytes, address: tuple[str, int]) -> None: ...


class SipService:
    """The running edge of one worker: its sockets, its connections, its edge policy."""

    def __init__(
        self,
        config: SipConfig,
        holder: SnapshotHolder,
        trunk_report: Report | None = None,
        trunk_seen: Seen | None = None,
        upstream_report: UpstreamReport | None = None,
    ) -> None:
        self.config = config
        self._upstream_report = upstream_report
        self.holder = holder
        self.trunks: TrunkProber | None = None
        self._trunk_report = trunk_report
        self._trunk_seen = trunk_seen
        self.edge: Edge | None = None
        self.listeners: list[Listener] = []
        self._udp: dict[int, UdpSender] = {}  # by address family
        # Their sendto, by "is IPv6", where batched: a forwarded datagram goes straight from
        # the endpoint into the batch being answered, without dispatch (a call's hot path).
        self.udp_senders: dict[bool, Callable[[bytes, tuple[str, int]], None]] = {}
        self._datagram: list[asyncio.BaseTransport | batched_udp.BatchedUdp] = []
        self._servers: list[asyncio.AbstractServer] = []
        self.connections: dict[int, StreamConnection] = {}
        self._by_peer: dict[tuple[str, str, int], StreamConnection] = {}  # (transport, host, port)
        self._per_source: Counter[str] = Counter()  # connections peers opened, by address
        self._connecting: dict[tuple[str, str, int], asyncio.Future[StreamConnection | None]] = {}
        self.tls = TlsContexts(config.tls or TlsPolicy())
        self.handshakes: Counter[tuple[str, str]] = Counter()  # (direction, outcome)
        self.open_streams: Counter[str] = Counter()  # connections in the table, by transport
        self.max_connections = connection_cap(config.tcp_max_connections)
        self.upstreams: UpstreamWatch | None = None
        # Connection ids travel in our Via and in flow tokens, and a request for one may reach
        # another worker (SO_REUSEPORT): each worker counts from a random point, so that an id
        # of another worker's is almost never one of its own (which would be another peer's).
        self._ids = itertools.count(secrets.randbelow(2**31) + 1)
        self._tasks: list[asyncio.Task[Any]] = []
        self.events = EventLog(log)
        self.loop = asyncio.get_running_loop()

    # -- setup and teardown -------------------------------------------------------------------

    async def start(self) -> None:
        loop = self.loop
        pending: list[tuple[str, socket.socket, str]] = []
        try:
            for spec in self.config.listen:
                transport, host, port = parse_listen(spec)
                pending.append((transport, _bind(transport, host, port), host))
        except BaseException:
            for _, sock, _ in pending:
                sock.close()
            raise
        for transport, sock, host in pending:
            port = sock.getsockname()[1]
            advertise = self.config.advertise or host
            if advertise in ("0.0.0.0", "::"):
                advertise = "::1" if ":" in advertise else "127.0.0.1"
                log.warning(
                    "listening on %s without an advertised address; Via says %s", host, advertise
                )
            self.listeners.append(Listener(transport, advertise, port))
        self.edge = Edge(self.config, self.listeners)
        families = {":" in lst.host for lst in self.listeners}
        locator = Locator(
            self.config.upstream_dns,
            self.config.hosts,
            tuple(rdtype for rdtype, v6 in (("A", False), ("AAAA", True)) if v6 in families),
        )
        self.upstreams = UpstreamWatch(
            locator,
            self.edge.set_upstreams,
            self.config.probe_upstreams,
            self.config.voice,
            self._upstream_report,
        )
        await self._watch_upstreams()  # located before the first request needs them
        self._certificates_changed(self.holder.current, self.holder.current)
        self.holder.subscribe(self._certificates_changed)
        for (transport, sock, _), listener in zip(pending, self.listeners, strict=True):
            if transport == "udp":
                endpoint = UdpEndpoint(self, listener)
                udp: UdpSender
                plain_udp: UdpSender | None = None
                if self.config.batched_udp and batched_udp.available():
                    batched = batched_udp.BatchedUdp(
                        sock, endpoint.respond, MAX_MESSAGE, ports=True, recv_size=RECV_SIZE
                    )
                    batched.start(loop)
                    self._datagram.append(batched)
                    udp = batched
                else:
                    plain, _ = await loop.create_datagram_endpoint(
                        functools.partial(DatagramHandler, endpoint), sock=sock
                    )
                    self._datagram.append(plain)
                    udp = plain_udp = plain
                if self._udp.setdefault(sock.family, udp) is udp and udp is not plain_udp:
                    self.udp_senders[sock.family == socket.AF_INET6] = udp.sendto
            else:
                kind = TlsConnection if transport == "tls" else StreamConnection
                server = await loop.create_server(
                    functools.partial(kind, self, listener), sock=sock
                )
                self._servers.append(server)
        self._tasks.append(asyncio.ensure_future(self._housekeeping()))
        self._tasks.append(asyncio.ensure_future(self._follow_upstreams()))
        if self.config.probe_trunks:
            self.trunks = TrunkProber(self, self._trunk_report)
            self.trunks.follow(self.holder.current, self.holder.current)
            self.holder.subscribe(self.trunks.follow)
            self.edge.teams.health = self.trunks.health
        elif self._trunk_seen is not None:
            teams = self.edge.teams

            def publish(health: dict[tuple[str, str], TargetHealth]) -> None:
                teams.health = health

            node = socket.gethostname()
            follow = follow_trunk_states(self._trunk_seen, node, publish)
            self._tasks.append(asyncio.ensure_future(follow))
        log.info(
            "SIP edge listening on %s",
            ", ".join(f"{lst.transport}:{lst.host}:{lst.port}" for lst in self.listeners),
        )

    async def drain(self, timeout: float) -> tuple[int, int]:
        """Stop accepting TCP connections and close each open one once nothing is in flight
        on it: no message half read, nothing left to write, quiet for DRAIN_QUIET seconds.
        Those still busy at ``timeout`` stop being read and are closed after what was
        written to them has gone (whole messages only: a peer never gets half of one);
        those whose peer does not read even then are cut DRAIN_FLUSH seconds later.
        Returns (connections closed cleanly, cut).  UDP keeps answering meanwhile."""
        for server in self._servers:
            server.close()
        start = len(self.connections)
        loop = self.loop
        deadline = loop.time() + timeout
        while self.connections and loop.time() < deadline:
            now = loop.time()
            for conn in list(self.connections.values()):
                if conn.settled(now):
                    conn.close()
            await asyncio.sleep(0.02)
        for conn in list(self.connections.values()):
            conn.stop_reading()
            conn.close()  # flushes what is written first
        deadline = loop.time() + DRAIN_FLUSH
        while self.connections and loop.time() < deadline:
            await asyncio.sleep(0.02)
        cut = len(self.connections)
        for conn in list(self.connections.values()):
            conn.abort()
        return start - cut, cut

    async def close(self) -> None:
        if self.trunks is not None:
            await self.trunks.close()
        if self.upstreams is not None:
            await self.upstreams.close()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for server in self._servers:
            server.close()
        for conn in list(self.connections.values()):
            conn.abort()
        for endpoint in self._datagram:
            endpoint.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await server.wait_closed()
        if self.edge is not None:
            metrics.publish(self.edge.stats)
        self._publish_tls()

    def _certificates_changed(self, _old: Snapshot, new: Snapshot) -> None:
        """New handshakes use the certificates of ``new`` (open connections keep theirs)."""
        try:
            changed = self.tls.update(new.certificates)
        except (ssl.SSLError, OSError) as exc:  # OpenSSL refused what the store accepted
            self.events.error("tls-contexts", "TLS certificates not applied: %s", exc)
            return
        if changed:
            log.info("TLS certificates: %s", ", ".join(c.name for c in new.certificates) or "none")
        if not self.tls.has_certificate and any(lst.transport == "tls" for lst in self.listeners):
            self.events.warning(
                "tls-no-certificate",
                "no TLS certificate in the store (sipzone cert add): TLS handshakes fail",
            )

    def _publish_tls(self) -> None:
        metrics.publish_tls(self.handshakes, self.open_streams, self.tls.certificates)

    async def _housekeeping(self) -> None:
        """Publish counters and close connections past a deadline, on one timer."""
        cfg = self.config
        shortest = min(cfg.tcp_idle_timeout, cfg.tcp_header_timeout, cfg.tcp_message_timeout)
        interval = min(METRICS_INTERVAL, max(shortest / 4, 0.02))
        while True:
            await asyncio.sleep(interval)
            if self.edge is not None:
                metrics.publish(self.edge.stats)
            self._publish_tls()
            now = self.loop.time()
            for conn in list(self.connections.values()):
                late = conn.overdue(now)
                if late:
                    log.debug("closing connection %d to %s: %s", conn.id, conn.peer, late)
                    conn.abort()

    # -- the configured upstreams ------------------------------------------------------------

    @property
    def resolved(self) -> Mapping[str, str]:
        """A configured URI's host name -> its address now (the trunk prober connects there)."""
        return self.edge.upstreams.resolved if self.edge is not None else {}

    async def _follow_upstreams(self) -> None:
        """Hand the upstream watch the configured URIs whenever the snapshot changes."""
        changed = asyncio.Event()

        def on_publish(_old: Snapshot, _new: Snapshot) -> None:
            changed.set()

        self.holder.subscribe(on_publish)
        while True:
            await changed.wait()
            changed.clear()
            try:
                await self._watch_upstreams()
            except Exception as exc:  # a bug here must not end the following for good
                self.events.error(
                    "upstreams-bug", "following upstreams failed: %s", _Traceback(exc)
                )

    async def _watch_upstreams(self) -> None:
        """The URIs of the current snapshot to the watch, probed by this site's thresholds."""
        assert self.edge is not None and self.upstreams is not None
        snapshot = self.holder.current
        site = self.edge.memo_for(snapshot).site
        await self.upstreams.follow(
            *self.edge.upstream_uris(snapshot), site.check if site is not None else DEFAULT_CHECK
        )

    # -- receiving ----------------------------------------------------------------------------

    def dispatch(self, sends: Sends) -> None:
        for send in sends:
            if send.transport == "udp":
                self._send_udp(send)
            elif send.transport in ("tcp", "tls"):
                self._send_stream(send)
            else:
                self.events.warning(
                    f"no-transport:{send.transport[:20]}",
                    "no %s transport for a message to %s:%d; dropped",
                    send.transport[:20], send.host, send.port,
                )  # fmt: skip

    # -- sending ------------------------------------------------------------------------------

    def _is_address(self, send: Send) -> bool:
        """The edge hands over addresses only; a name here is our bug, and is not looked up."""
        if is_ip_literal(send.host):
            return True
        self.events.error(
            "send-to-name", "a message for %r (a name, not an address) dropped", send.host[:100]
        )
        return False

    def _send_udp(self, send: Send) -> None:
        host = send.host
        if not self._is_address(send):
            return
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        udp = self._udp.get(family)
        if udp is None:
            self.events.warning(
                f"no-udp-family:{family}", "no UDP socket of the family of %s; dropped", host
            )
            return
        try:
            udp.sendto(send.data, (host, send.port))
        except (OSError, OverflowError) as exc:
            self.send_failed(host, send.port, exc)

    def send_failed(self, host: str, port: int, exc: Exception) -> None:
        """A datagram could not leave: an unreachable or impossible destination, a full buffer."""
        self.events.warning("udp-send", "UDP to %s:%d failed: %s", host, port, exc)

    def _send_stream(self, send: Send) -> None:
        conn = self.connections.get(send.conn) if send.conn is not None else None
        if conn is not None and conn.peer[0] != send.host:
            conn = None  # a connection id of another worker's: not this peer's connection
        # A connection named by id is used whatever transport the Via said (a request came in
        # on it); without one, a connection of the transport asked for, or a new one.
        if conn is None:
            conn = self._by_peer.get((send.transport, send.host, send.port))
        if conn is not None:
            conn.write(send.data)
            return
        if self._is_address(send):
            self._later(self._connect_and_send(send))

    def _later(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.append(task)
        task.add_done_callback(self._tasks.remove)

    async def _connect_and_send(self, send: Send) -> None:
        key = (send.transport, send.host, send.port)
        future = self._connecting.get(key)
        if future is None:
            future = self.loop.create_future()
            self._connecting[key] = future
            try:
                future.set_result(await self._connect(*key))
            finally:
                del self._connecting[key]
        conn = await future
        if conn is not None:
            conn.write(send.data)

    async def _connect(self, transport: str, host: str, port: int) -> StreamConnection | None:
        listener = next((lst for lst in self.listeners if lst.transport == transport), None)
        listener = listener or self.listeners[0]

        def connection() -> StreamConnection:
            if transport == "tls":
                return TlsConnection(self, listener, server_name=self._name_of(host))
            return StreamConnection(self, listener, outbound=True)

        try:
            async with asyncio.timeout(5.0):
                _, conn = await self.loop.create_connection(connection, host, port)
        except (OSError, OverflowError, TimeoutError) as exc:
            self.events.warning(
                f"{transport}-connect",
                "cannot connect to %s:%d over %s: %s", host, port, transport.upper(), exc,
            )  # fmt: skip
            return None
        self._by_peer.setdefault((transport, host, port), conn)
        return conn

    def client_context(self, server_name: str | None) -> ssl.SSLContext:
        """The context for a TLS connection we open to ``server_name``: to a trunk target, it
        presents the certificate of the trunk's base FQDN; else the default one."""
        if server_name and self.edge is not None:
            targets = self.edge.upstreams
            for trunk in self.holder.current.trunks:
                for uri in trunk.targets:
                    target = targets.target(uri)
                    if target is not None and target.host.lower() == server_name.lower():
                        return self.tls.client_for(trunk.base)
        return self.tls.client()

    def _name_of(self, address: str) -> str:
        """The configured upstream name ``address`` was located for (what its certificate
        must name), else the address itself."""
        names = self.edge.upstreams.names if self.edge is not None else {}
        return names.get(address, address)

    # -- connection table ---------------------------------------------------------------------

    def register(self, conn: StreamConnection) -> bool:
        """Admit a new connection into the table, or refuse it (the caller closes it)."""
        if len(self.connections) >= self.max_connections:
            self.events.warning(
                "tcp-cap",
                "SIP TCP connection cap %d reached; refusing %s",
                self.max_connections,
                conn.peer[0],
            )
            return False
        if not conn.outbound:
            source = conn.peer[0]
            if self._per_source[source] >= self.config.tcp_max_per_source:
                self.events.warning(
                    "tcp-cap-source",
                    "%s holds %d SIP TCP connections, the most one address may; refusing more",
                    source,
                    self.config.tcp_max_per_source,
                )
                return False
            self._per_source[source] += 1
        conn.id = next(self._ids)
        self.connections[conn.id] = conn
        self.open_streams[conn.transport_name] += 1
        self._by_peer[(conn.transport_name, *conn.peer)] = conn
        return True

    def unregister(self, conn: StreamConnection) -> None:
        if self.connections.pop(conn.id, None) is None:
            return  # never admitted
        self.open_streams[conn.transport_name] -= 1
        if not conn.outbound:
            source = conn.peer[0]
            self._per_source[source] -= 1
            if self._per_source[source] <= 0:
                del self._per_source[source]
        for key in [k for k, v in self._by_peer.items() if v is conn]:
            del self._by_peer[key]


class UdpEndpoint:
    """One UDP socket of the edge, where each datagram is a whole message: its answer to the
    source is returned (the batched socket or the protocol below sends it), anything else goes
    out through the service."""

    def __init__(self, service: SipService, listener: Listener) -> None:
        self.service = service
        self.listener = listener
        assert service.edge is not None
        self.receive = service.edge.receive
        self.edge = service.edge
        self.holder = service.holder
        self._arrivals: dict[tuple[str, int], Arrival] = {}
        self._senders = service.udp_senders  # filled as the service binds (shared, not copied)

    def respond(self, data: bytes, addr: tuple[str, int]) -> bytes | None:
        try:
            # A peer sends from one address again and again (keep-alives every few seconds):
            # its Arrival is kept rather than built per datagram.
            arrival = self._arrivals.get(addr)
            if arrival is None:
                arrival = self._arrival(addr)
            sends = self.receive(data, arrival, self.holder.current)
            if self.edge.trace is not None:
                self.edge.traced(data, arrival, sends)
        except Exception as exc:  # a bug must cost one message, never the socket
            self.service.events.error(
                f"edge-bug:{type(exc).__name__}",
                "edge failed on a datagram from %s: %s",
                addr,
                _Traceback(exc),
            )
            return None
        if len(sends) == 1:
            answer, transport, host, port, _ = sends[0]
            if transport == "udp":
                # An answer back where the request came from: no dispatch.
                if port == addr[1] and host == addr[0]:
                    return answer
                # A request on to the core, a response on to a phone: with the batch.
                sendto = self._senders.get(":" in host)
                if sendto is not None and is_ip_literal(host):
                    try:
                        sendto(answer, (host, port))
                    except (OSError, OverflowError) as exc:
                        self.service.send_failed(host, port, exc)
                    return None
        if sends:
            self.service.dispatch(sends)
        return None

    def _arrival(self, addr: tuple[str, int]) -> Arrival:
        if len(self._arrivals) >= ARRIVALS_KEPT:
            self._arrivals.clear()
        arrival = self._arrivals[addr] = Arrival(self.listener, addr)
        return arrival


class DatagramHandler(asyncio.DatagramProtocol):
    """A UDP socket on the event loop's own transport (where batching is not available)."""

    def __init__(self, endpoint: UdpEndpoint) -> None:
        self.respond = endpoint.respond
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport; it quacks like one.
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        answer = self.respond(data, addr)
        if answer is not None and self.transport is not None:
            self.transport.sendto(answer, addr)

    def error_received(self, exc: Exception) -> None:
        log.debug("UDP error: %s", exc)  # ICMP unreachable for a past send; nothing to do


class StreamConnection(asyncio.Protocol):
    """One TCP connection, accepted or opened by us: frames messages by Content-Length."""

    transport_name = "tcp"

    def __init__(self, service: SipService, listener: Listener, outbound: bool = False) -> None:
        self.service = service
        self.listener = listener
        self.outbound = outbound  # we opened it (to an upstream, or back to a client)
        self.reader = StreamReader()
        self.transport: asyncio.Transport | None = None
        self.id = 0
        self.peer: tuple[str, int] = ("", 0)
        self.arrival = Arrival(listener, self.peer)  # what the edge is told of each message
        self.last_active = 0.0
        self.message_started: float | None = None  # first byte of the message being read

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = (str(peer[0]), int(peer[1]))
        self.last_active = self.service.loop.time()
        if not self.service.register(self):
            self.abort()
            return
        self.arrival = Arrival(self.listener, self.peer, self.id)

    def connection_lost(self, exc: Exception | None) -> None:
        self.service.unregister(self)

    def overdue(self, now: float) -> str | None:
        """Which deadline this connection has passed at ``now``, if any."""
        cfg = self.service.config
        if now - self.last_active > cfg.tcp_idle_timeout:
            return "idle"
        started = self.message_started
        if started is not None:
            if now - started > cfg.tcp_message_timeout:
                return "message deadline"
            if not self.reader.head_complete and now - started > cfg.tcp_header_timeout:
                return "header deadline"
        return None

    def data_received(self, data: bytes) -> None:
        now = self.last_active = self.service.loop.time()
        edge = self.service.edge
        assert edge is not None
        self.reader.receive_data(data)
        try:
            self._read(edge)
        finally:
            # Whatever is left is the start of the next message: its clock starts now.
            if not self.reader.in_message:
                self.message_started = None
            elif self.message_started is None:
                self.message_started = now

    def _read(self, edge: Edge) -> None:
        reader = self.reader
        while True:
            # A message whose Content-Length is plain comes whole as bytes, for the fast
            # paths; anything else is framed and parsed by the reader.
            message: Request | Response | bytes | None = reader.next_frame()
            if message is None:
                try:
                    message = reader.next_message()
                except MalformedMessage as exc:
                    # The framing is lost: answer if we can, then close (RFC 3261 §18.3).
                    self._lost(edge, exc)
                    return
                if reader.keepalives:
                    reader.keepalives = 0
                    self.write(b"\r\n")  # RFC 5626 §4.4.1 pong
                if message is None:
                    return
            self.message_started = None  # the next message's clock starts with its first byte
            snapshot = self.service.holder.current
            try:
                if isinstance(message, bytes):
                    sends = edge.spliced(message, self.arrival, snapshot)
                    if sends is DECLINED:
                        try:
                            message = parse_message(message)
                        except MalformedMessage as exc:  # what next_message would have raised
                            self._lost(edge, exc)
                            return
                        sends = edge.handle(message, self.arrival, snapshot)
                else:
                    sends = edge.handle(message, self.arrival, snapshot)
                if edge.trace is not None:
                    edge.traced(message, self.arrival, sends)
            except Exception as exc:
                self.service.events.error(
                    f"edge-bug:{type(exc).__name__}",
                    "edge failed on a message from %s: %s",
                    self.peer,
                    _Traceback(exc),
                )
                continue
            self.service.dispatch(sends)

    def _lost(self, edge: Edge, exc: MalformedMessage) -> None:
        self.service.dispatch(edge.malformed(exc, self.arrival))
        self.close()

    def settled(self, now: float) -> bool:
        """Nothing in flight: no message half read, nothing waiting to be written, and no
        byte either way for DRAIN_QUIET seconds (a response from the core may be due)."""
        transport = self.transport
        return (
            not self.reader.in_message
            and (transport is None or transport.get_write_buffer_size() == 0)
            and now - self.last_active >= DRAIN_QUIET
        )

    def stop_reading(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.last_active = self.service.loop.time()
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()


# What a failed handshake counts as (sipzone_sip_tls_handshakes_total{outcome}), by OpenSSL's
# reason; any other reason is "failed".  A small fixed set: a label per reason would let
# scanners grow the metric.
_HANDSHAKE_OUTCOMES = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "no_client_certificate",
    "CERTIFICATE_VERIFY_FAILED": "certificate_refused",
    "TLSV1_ALERT_UNKNOWN_CA": "certificate_refused",
    "SSLV3_ALERT_BAD_CERTIFICATE": "certificate_refused",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "certificate_refused",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "no_client_certificate",
    "WRONG_VERSION_NUMBER": "not_tls",
    "HTTP_REQUEST": "not_tls",
    "HTTPS_PROXY_REQUEST": "not_tls",
    "PACKET_LENGTH_TOO_LONG": "not_tls",
    "RECORD_LAYER_FAILURE": "not_tls",
    "UNSUPPORTED_PROTOCOL": "no_common_protocol",
    "NO_SHARED_CIPHER": "no_common_protocol",
    "VERSION_TOO_LOW": "no_common_protocol",
    "NO_PROTOCOLS_AVAILABLE": "no_common_protocol",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no_common_protocol",
}
TLS_READ = 65536  # bytes of plaintext taken from the TLS object per read


class TlsConnection(StreamConnection):
    """One TLS connection, accepted or opened by us (``server_name`` given: the name the
    server's certificate must carry): TLS on memory buffers, then the framing of TCP."""

    transport_name = "tls"

    def __init__(
        self, service: SipService, listener: Listener, server_name: str | None = None
    ) -> None:
        super().__init__(service, listener, outbound=server_name is not None)
        self.server_name = server_name
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.tls: ssl.SSLObject | None = None
        self.established = False
        self.outcome: str | None = None  # the handshake's, once known
        self._pending: list[bytes] = []  # written before the handshake ended
        self.peer_certificate: PeerCertificate | None = None  # verified, when one was sent

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        if self.transport is None or self.transport.is_closing():
            return  # refused by a cap
        contexts = self.service.tls
        if self.outbound:
            self.tls = self.service.client_context(self.server_name).wrap_bio(
                self._in, self._out, server_side=False, server_hostname=self.server_name
            )
        else:
            self.tls = contexts.dispatcher.wrap_bio(self._in, self._out, server_side=True)
        self.message_started = self.last_active  # the handshake runs on the header deadline
        if self.outbound:
            self._handshake()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.tls is not None and self.outcome is None:
            self._count("closed")  # the peer gave up (or never spoke TLS) mid-handshake
        super().connection_lost(exc)

    def overdue(self, now: float) -> str | None:
        late = super().overdue(now)
        if late and self.outcome is None and self.tls is not None:
            self._count("timeout")
            return "handshake deadline"
        return late

    def data_received(self, data: bytes) -> None:
        if self.tls is None or (self.outcome is not None and not self.established):
            return  # refused by a cap, or the handshake failed: closing
        self._in.write(data)
        if not self.established:
            self.last_active = self.service.loop.time()
            if not self._handshake():
                return
        plain = self._decrypt()
        if plain:
            super().data_received(plain)

    def _handshake(self) -> bool:
        """Go on with the handshake; True once it has ended well."""
        assert self.tls is not None
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return False
        except ssl.SSLError as exc:
            self._flush()  # our alert, if OpenSSL wrote one
            outcome = _HANDSHAKE_OUTCOMES.get(exc.reason or "", "failed")
            self._count(outcome)
            self.service.events.warning(
                f"tls-handshake:{outcome}",
                "TLS handshake %s %s:%d failed (%s): %s",
                "to" if self.outbound else "from", *self.peer, outcome, exc.reason or exc,
            )  # fmt: skip
            self.close()
            return False
        self.established = True
        self.message_started = None
        self._count("ok")
        self.peer_certificate = PeerCertificate.of(self.tls)
        if self.peer_certificate is not None:
            log.debug(
                "TLS %s %s:%d: peer certificate %s (%s)",
                "to" if self.outbound else "from", *self.peer,
                self.peer_certificate.subject, ", ".join(self.peer_certificate.names),
            )  # fmt: skip
        pending, self._pending = self._pending, []
        for data in pending:
            self.write(data)
        self._flush()
        return True

    def _count(self, outcome: str) -> None:
        self.outcome = outcome
        self.service.handshakes[("out" if self.outbound else "in", outcome)] += 1

    def _decrypt(self) -> bytes:
        assert self.tls is not None
        chunks = []
        while True:
            try:
                chunk = self.tls.read(TLS_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # the peer's close_notify
                self.close()
                break
            except ssl.SSLError as exc:
                log.debug("TLS from %s:%d broken: %s", *self.peer, exc)
                self.abort()
                break
            if not chunk:
                break
            chunks.append(chunk)
        self._flush()  # a TLS 1.3 key update may want an answer
        return b"".join(chunks)

    def _flush(self) -> None:
        data = self._out.read()
        if data and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def write(self, data: bytes) -> None:
        if not self.established:
            self._pending.append(data)
            return
        if self.tls is None or self.transport is None or self.transport.is_closing():
            return
        self.last_active = self.service.loop.time()
        try:
            self.tls.write(data)
        except ssl.SSLError:
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        if self.established and self.tls is not None:
            with contextlib.suppress(ssl.SSLError):
                self.tls.unwrap()  # our close_notify
            self._flush()
        super().close()


async def start_sip(
    config: SipConfig,
    holder: SnapshotHolder,
    trunk_report: Report | None = None,
    trunk_seen: Seen | None = None,
    upstream_report: UpstreamReport | None = None,
) -> SipService:
    """Open the listeners in ``config.listen`` and serve the edge until ``close()``;
    ``trunk_report`` stores what the trunk prober sees, ``trunk_seen`` reads it back in the
    workers that do not probe (see trunkprobe.py); ``upstream_report`` stores what the
    upstream watch located and probed (health/upstreams.py)."""
    service = SipService(config, holder, trunk_report, trunk_seen, upstream_report)
    await service.start()
    return service
