"""Batched UDP on Linux: up to BATCH datagrams per recvmmsg(2) and their answers per sendmmsg(2).

Why: at full speed a Python server spends more time getting datagrams in and out than
answering them (a DNS answer or a SIP keep-alive reply is a dictionary hit and some slicing).
One system call per batch instead of two per datagram, and no per-datagram event-loop callback,
is the difference between trailing PowerDNS or Kamailio and passing them; they batch the same
way.

Theory of operation: fixed ctypes arrays describe BATCH receive slots (buffer, iovec, source
address) and BATCH send slots whose address pointers name either the receive slot a datagram
came from (an answer to its source) or a destination slot of their own.  The callback returns
the answer to the source (or None); a datagram for somewhere else (a proxy's forwarded
request) goes by :meth:`BatchedUdp.sendto`, which during a batch takes the next send slot too
(its address packed once per destination and remembered), so a batch's answers and forwards
leave in one sendmmsg, in the order they were made.
The event loop calls :meth:`BatchedUdp.ready` when the socket is readable; it drains a bounded
number of batches so a flood cannot starve TCP clients or the store feed.  Elsewhere than Linux
(or without recvmmsg in libc) :func:`available` is False and callers use the plain asyncio
transport.

The callback sees the source as the packed address (4 or 16 bytes: cheapest, enough for DNS,
whose answer always goes back where the query came from), or with ``ports=True`` as the
``(host, port)`` pair asyncio would give, remembered per source so a busy peer costs one
dictionary hit (SIP, which answers to the Via's port or to the source port by rport).
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from sipzone import libc

log = logging.getLogger("sipzone.net")

BATCH = 64
RECV_SIZE = 65536 // 8  # 8 KiB: larger datagrams are neither DNS queries nor SIP we accept
MAX_BATCHES = 16  # per readiness callback, then let the loop run other work
NAME_SIZE = 28  # sizeof(struct sockaddr_in6), enough for either family
MSG_DONTWAIT = 0x40
SOURCES_CACHE = 65536  # (host, port) pairs remembered before the memo is reset
IDLE = -1  # BatchedUdp._queued outside a batch: sendto sends at once

Respond = Callable[[bytes, Any], bytes | None]


class _IoVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


# The arrays are read and written as flat word arrays: indexing a memoryview is far cheaper
# than a ctypes field access, and the hot loop touches three words per datagram.
WORD = ctypes.sizeof(ctypes.c_size_t)  # pointers and size_t alike on Linux
MSG_WORDS = ctypes.sizeof(_MMsgHdr) // WORD
IOV_WORDS = ctypes.sizeof(_IoVec) // WORD
LEN_INDEX = _MMsgHdr.msg_len.offset // 4  # msg_len is an unsigned int
NAME_INDEX = _MsgHdr.msg_name.offset // WORD
IOV_LEN_INDEX = _IoVec.iov_len.offset // WORD
U32_PER_MSG = ctypes.sizeof(_MMsgHdr) // 4


def _load() -> tuple[Any, Any] | None:
    """recvmmsg and sendmmsg, or None where the C library has not got them."""
    recv = libc.function(
        "recvmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_void_p]
    )
    send = libc.function("sendmmsg", [ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int])
    return None if recv is None or send is None else (recv, send)


def available() -> bool:
    return _load() is not None


class BatchedUdp:
    """Answers one bound, non-blocking UDP socket with ``respond(datagram, source)``.

    ``source`` is the packed source address (4 bytes, or 16 for an IPv6 socket), or with
    ``ports`` the ``(host, port)`` pair.  What ``respond`` returns goes back to the source in
    the batch's sendmmsg; None sends nothing.  ``recv_size`` bounds a datagram (a larger one
    is dropped, never read in part); ``max_answer`` bounds an answer (a larger one is dropped).
    """

    def __init__(
        self,
        sock: socket.socket,
        respond: Respond,
        max_answer: int,
        *,
        ports: bool = False,
        recv_size: int = RECV_SIZE,
    ) -> None:
        calls = _load()
        if calls is None:
            raise OSError("recvmmsg/sendmmsg are not available here")
        self._recvmmsg, self._sendmmsg = calls
        self._sock = sock
        self._fd = sock.fileno()
        self._respond = respond
        self._send_size = max(512, max_answer)
        self._recv_size = recv_size
        self._family = sock.family
        # The part of a sockaddr_in / sockaddr_in6 the callback's source is made from: the
        # packed address alone, or (for ``ports``) the port, the address and for IPv6 the flow
        # label and scope as well, so two peers never share a cache entry.
        if ports:
            self._addr = (2, 8) if sock.family == socket.AF_INET else (2, 28)
            self._sources: dict[bytes, tuple[str, int]] | None = {}
        else:
            self._addr = (4, 8) if sock.family == socket.AF_INET else (8, 24)
            self._sources = None
        self._dests = ctypes.create_string_buffer(BATCH * NAME_SIZE)  # forwards' addresses
        self._dests_at = ctypes.addressof(self._dests)
        self._dmv = memoryview(self._dests).cast("B")
        self._addresses: dict[tuple[str, int], bytes] = {}  # destination -> sockaddr
        self._queued = IDLE  # during a batch: the send slots taken so far
        self._rbuf = ctypes.create_string_buffer(BATCH * recv_size)
        self._sbuf = ctypes.create_string_buffer(BATCH * self._send_size)
        self._names = ctypes.create_string_buffer(BATCH * NAME_SIZE)
        self._riov = (_IoVec * BATCH)()
        self._siov = (_IoVec * BATCH)()
        self._rmsg = (_MMsgHdr * BATCH)()
        self._smsg = (_MMsgHdr * BATCH)()
        self._names_at = ctypes.addressof(self._names)
        for i in range(BATCH):
            self._riov[i].iov_base = ctypes.addressof(self._rbuf) + i * recv_size
            self._riov[i].iov_len = recv_size
            self._siov[i].iov_base = ctypes.addressof(self._sbuf) + i * self._send_size
            for msgs, iovs in ((self._rmsg, self._riov), (self._smsg, self._siov)):
                hdr = msgs[i].msg_hdr
                # The kernel writes the source's length back; it is the same for every
                # datagram of one socket's family, so it never needs resetting.
                hdr.msg_name = self._names_at + i * NAME_SIZE
                hdr.msg_namelen = NAME_SIZE
                hdr.msg_iov = ctypes.addressof(iovs) + i * ctypes.sizeof(_IoVec)
                hdr.msg_iovlen = 1
        self._rmv = memoryview(self._rbuf).cast("B")
        self._smv = memoryview(self._sbuf).cast("B")
        self._nmv = memoryview(self._names).cast("B")
        self._rlens = memoryview(self._rmsg).cast("B").cast("I")
        self._snames = memoryview(self._smsg).cast("B").cast("P")
        self._slens = memoryview(self._siov).cast("B").cast("P")
        # Per slot, every offset the hot loop needs, computed once: arithmetic on ints this
        # large allocates in CPython, and the loop would do it several times per datagram.
        a0, a1 = self._addr
        self._slots = tuple(
            (
                i * recv_size,  # the datagram in the receive buffer
                i * U32_PER_MSG + LEN_INDEX,  # its length in the receive headers
                slice(i * NAME_SIZE + a0, i * NAME_SIZE + a1),  # its source, as passed on
                self._names_at + i * NAME_SIZE,  # its sockaddr, for a send slot
                i * self._send_size,  # an answer in the send buffer
                i * IOV_WORDS + IOV_LEN_INDEX,  # its length in the send iovecs
                i * MSG_WORDS + NAME_INDEX,  # its address pointer in the send headers
            )
            for i in range(BATCH)
        )
        self._rmsg_at = ctypes.addressof(self._rmsg)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def socket(self) -> socket.socket:
        return self._sock

    def sendto(self, data: bytes, address: tuple[str, int]) -> None:
        """Send one datagram elsewhere than to a source being answered: with the batch being
        answered (the next send slot), or at once outside a batch."""
        j = self._queued
        size = len(data)
        name = self._addresses.get(address) if j >= 0 and size <= self._send_size else None
        if name is None:
            name = self._sockaddr(address) if j >= 0 and size <= self._send_size else None
            if name is None:
                try:
                    self._sock.sendto(data, address)
                except OSError as exc:  # a full buffer or an unreachable peer: UDP may drop
                    log.debug("sendto %s: %s", address, exc)
                return
        if j >= BATCH:
            self._send(j)  # the batch's slots are full: send what it holds, start again
            j = 0
        _, _, _, _, at, length_at, pointer_at = self._slots[j]
        self._smv[at : at + size] = data
        self._slens[length_at] = size
        self._dmv[j * NAME_SIZE : j * NAME_SIZE + len(name)] = name
        self._snames[pointer_at] = self._dests_at + j * NAME_SIZE
        self._queued = j + 1

    def _sockaddr(self, address: tuple[str, int]) -> bytes | None:
        """The sockaddr for ``address`` on this socket's family (remembered); None for what
        only the socket module can say is wrong (a name, a scope, a port out of range)."""
        host, port = address[0], address[1]
        try:
            packed = socket.inet_pton(self._family, host)
            head = self._family.to_bytes(2, sys.byteorder) + port.to_bytes(2, "big")
        except (OSError, OverflowError, ValueError, TypeError, AttributeError):
            return None
        if self._family == socket.AF_INET:
            name = head + packed + bytes(8)
        else:
            name = head + bytes(4) + packed + bytes(4)  # flow info, address, scope 0
        if len(self._addresses) >= SOURCES_CACHE:
            self._addresses.clear()
        self._addresses[address] = name
        return name

    def _source(self, key: bytes) -> tuple[str, int]:
        """``(host, port)`` for the sockaddr part ``key`` (see ``_addr``), remembered."""
        sources = self._sources
        assert sources is not None
        if len(sources) >= SOURCES_CACHE:
            sources.clear()
        port = int.from_bytes(key[:2], "big")
        if self._family == socket.AF_INET:
            source = (socket.inet_ntop(socket.AF_INET, key[2:6]), port)
        else:
            source = (socket.inet_ntop(socket.AF_INET6, key[6:22]), port)
        sources[key] = source
        return source

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        loop.add_reader(self._fd, self.ready)

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        self._sock.close()

    def ready(self) -> None:
        """Drain the socket: receive a batch, answer it, send the answers in one call."""
        respond = self._respond
        rmv, smv, nmv = self._rmv, self._smv, self._nmv
        rlens, snames, slens = self._rlens, self._snames, self._slens
        slots = self._slots
        sources = self._sources
        size_max = self._send_size
        recv_size = self._recv_size
        for _ in range(MAX_BATCHES):
            n = self._recvmmsg(self._fd, self._rmsg_at, BATCH, MSG_DONTWAIT, None)
            if n <= 0:
                if n < 0 and ctypes.get_errno() not in (errno.EAGAIN, errno.EINTR):
                    log.debug("recvmmsg: %s", errno.errorcode.get(ctypes.get_errno()))
                return
            self._queued = 0
            try:
                for i in range(n):
                    at, length_at, source_at, name_at, _, _, _ = slots[i]
                    length = rlens[length_at]
                    if length >= recv_size:
                        continue  # perhaps cut short by the kernel: never answer a part
                    data = rmv[at : at + length].tobytes()
                    key = nmv[source_at].tobytes()
                    try:
                        if sources is None:
                            out = respond(data, key)
                        else:
                            out = respond(data, sources.get(key) or self._source(key))
                    except Exception:
                        # A bug must cost one answer, never the server.
                        log.exception("answering %r failed", data[:64])
                        continue
                    if out is None:
                        continue
                    size = len(out)
                    if size > size_max:
                        continue
                    j = self._queued
                    if j >= BATCH:  # forwards took the slots: send those, start again
                        self._send(j)
                        j = 0
                    _, _, _, _, at, length_at, pointer_at = slots[j]
                    smv[at : at + size] = out
                    slens[length_at] = size
                    snames[pointer_at] = name_at
                    self._queued = j + 1
            finally:
                j, self._queued = self._queued, IDLE
            self._send(j)
            if n < BATCH:
                return

    def _send(self, count: int) -> None:
        sent = 0
        while sent < count:
            done = self._sendmmsg(
                self._fd, ctypes.byref(self._smsg, sent * ctypes.sizeof(_MMsgHdr)), count - sent, 0
            )
            if done > 0:
                sent += done
                continue
            err = ctypes.get_errno()
            if err in (errno.EAGAIN, errno.ENOBUFS):
                return  # the send buffer is full: UDP may drop, and so do we
            if err != errno.EINTR:
                sent += 1  # skip the one message the kernel refused (bad address, ...)
