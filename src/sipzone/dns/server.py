"""The DNS authority's sockets: UDP and TCP listeners, zone transfers, NOTIFY on change.

Everything that decides an answer lives in :mod:`sipzone.dns.answers`; this module only moves
bytes.  Sockets are bound with SO_REUSEPORT so ``--workers N`` processes can share the port, the
kernel spreading queries between them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Coroutine, Iterable
from typing import cast

import dns.asyncquery
import dns.exception
import dns.message
import dns.opcode
import dns.rcode

from sipzone.dns import DnsConfig
from sipzone.dns.answers import (
    QTYPE_AXFR,
    QTYPE_IXFR,
    SERVFAIL,
    Authority,
    Tables,
    error,
    follows,
    question,
)
from sipzone.dns.xfr import notify_message, transfer
from sipzone.model.snapshot import Snapshot, SnapshotHolder
from sipzone.net import batched_udp, split_hostport
from sipzone.net.sockets import bound_socket

log = logging.getLogger("sipzone.dns")

TCP_IDLE = 10.0  # seconds a TCP client may stay silent before we close (RFC 7766 §6.2.3)
# Above this many rules a full rebuild (about a second per million) runs on a thread.
REBUILD_ON_THREAD = 50_000
NOTIFY_TRIES = 5
NOTIFY_TIMEOUT = 2.0


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, authority: Authority) -> None:
        self._respond = authority.respond
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport does not subclass asyncio.DatagramTransport; it quacks alike.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        try:
            out = self._respond(data, str(addr[0]))
        except Exception:
            # A bug must cost one answer, never the server.
            log.exception("answering %r from %s failed", data[:64], addr[0])
            out = error(data, SERVFAIL) if len(data) >= 12 and not data[2] & 0x80 else None
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
        self._udp: asyncio.DatagramTransport | None = None
        self._batched: batched_udp.BatchedUdp | None = None
        self._tcp: asyncio.Server | None = None
        self._notifying: set[asyncio.Task[None]] = set()
        self._pending: list[Snapshot] = []
        self._follower: asyncio.Future[None] | None = None
        self._closed = False
        self.address: tuple[str, int] = ("", 0)

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = split_hostport(self.config.listen, allow_zero=True)
        udp = bound_socket(host, port, socket.SOCK_DGRAM, dual_stack=True)
        port = udp.getsockname()[1]  # port 0 picks one; TCP follows it
        tcp = bound_socket(host, port, socket.SOCK_STREAM, dual_stack=True, backlog=128)
        self.address = (host, port)
        if self.config.batched_udp and batched_udp.available():
            self._batched = batched_udp.BatchedUdp(
                udp, self.authority.respond, self.config.udp_payload
            )
            self._batched.start(loop)
        else:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self.authority), sock=udp
            )
            self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)
        self.holder.subscribe(self._on_snapshot)
        if self.holder.current is not self.authority.snapshot:
            self._on_snapshot(self.authority.snapshot, self.holder.current)
        log.info("DNS on %s:%d (UDP, TCP), serial %d", host, port, self.authority.serial())

    def _on_snapshot(self, old: Snapshot, new: Snapshot) -> None:
        """Follow a swap: at once when that is cheap (a delta, or a small store), else on a
        thread while the current tables keep answering; snapshots apply in order either way."""
        if self._closed:
            return
        if self._follower is None and (
            follows(self.authority.snapshot, new) or len(new.matcher) < REBUILD_ON_THREAD
        ):
            before = self.authority.serial()
            try:
                self.authority.update(new)
            except Exception:
                log.exception("applying revision %d failed; rebuilding", new.revision)
                self.authority.rebuild(new)
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
                before = self.authority.serial()
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
        except Exception:
            log.exception("following snapshots failed; still serving revision %d",
                          self.authority.snapshot.revision)  # fmt: skip
        finally:
            self._follower = None

    async def settle(self) -> None:
        """Wait until every published snapshot is applied (tests, orderly shutdown)."""
        while self._follower is not None:
            await asyncio.shield(self._follower)

    def _changed(self, serial_before: int) -> None:
        if self.authority.serial() != serial_before and self.config.send_notify:
            for target in self.config.notify:
                for zone in self.authority.snapshot.zones:
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
                    self.authority.serial(),
                    target,
                    dns.rcode.to_text(reply.rcode()),
                )
                return
        log.warning("NOTIFY %s to %s: no answer after %d tries", zone, target, NOTIFY_TRIES)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        client = str(peer[0]) if peer else ""
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
                data = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", head)[0]), TCP_IDLE
                )
                for out in self._tcp_answers(data, client):
                    writer.write(struct.pack("!H", len(out)) + out)
                    # A zone transfer is thousands of messages: a reader that stops reading
                    # must not hold it (and its snapshot) forever, and drain() returns
                    # without yielding while the socket keeps up, so yield to queries and SIP.
                    await asyncio.wait_for(writer.drain(), TCP_IDLE)
                    await asyncio.sleep(0)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except Exception:
            log.exception("TCP client %s failed", client)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _tcp_answers(self, data: bytes, client: str) -> Iterable[bytes]:
        q = question(data)
        if q is not None and q[1] in (QTYPE_AXFR, QTYPE_IXFR) and not data[2] & 0xF8:
            try:
                query = dns.message.from_wire(data)
            except dns.exception.DNSException:
                return [error(data, 1)]
            records = self.authority.records
            # A generator: each message is rendered just before it is written, so a big zone
            # streams with the writer's flow control instead of piling up in memory.
            return transfer(records, query, client, self.config.allow_transfer)
        try:
            out = self.authority.respond(data, client, tcp=True)
        except Exception:
            log.exception("answering %r from %s over TCP failed", data[:64], client)
            out = error(data, SERVFAIL) if len(data) >= 12 else None
        return [out] if out is not None else []

    async def close(self) -> None:
        self._closed = True
        if self._udp is not None:
            self._udp.close()
        if self._batched is not None:
            self._batched.close()
        if self._tcp is not None:
            self._tcp.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._tcp.wait_closed(), 2)
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
