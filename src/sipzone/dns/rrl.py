"""Response rate limiting for DNS over UDP (``serve --dns-rrl N``), in the manner of BIND's RRL.

Why: a UDP query's source address can be forged, so an authority open to the internet can be
made to send its (larger) answers to a victim.  Each response is charged to an *account*: the
client's network (IPv4 /24, IPv6 /56, so one forger cannot spread over its neighbours' addresses)
and what the response says: the question for an answer or NODATA, the zone for NXDOMAIN (a
random-name flood is one account), the rcode for errors.  An account earns ``rate`` responses a
second, up to a burst of ``rate``; a response beyond that is dropped, except that every
``slip``-th dropped one goes out truncated (TC=1, no records) so a real resolver behind the
network retries over TCP, which cannot be forged.  TCP is never limited.

Sans-IO: :meth:`RateLimiter.check` takes the query, the response and the client and says what to
send; the server calls it for UDP only, and only when ``--dns-rrl`` is set, so the default path
costs nothing.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable

from sipzone.dns.protocol import (
    COMPRESSED,
    HEADER,
    NOERROR,
    NXDOMAIN,
    ONE_QUESTION,
    RCODE,
    TC,
    question_end,
)

MAX_ACCOUNTS = 100_000  # accounts remembered; idle ones are forgotten first when it fills
_MAPPED = b"\x00" * 10 + b"\xff\xff"  # ::ffff:a.b.c.d, an IPv4 client on a dual-stack socket


def client_block(client: str | bytes, v4_bits: int = 24, v6_bits: int = 56) -> bytes:
    """The network a client address belongs to, as packed bytes (``v4_bits`` / ``v6_bits``
    long, whole octets); ``client`` is text or packed (4 or 16 bytes)."""
    if isinstance(client, str):
        try:
            client = ipaddress.ip_address(client.split("%", 1)[0]).packed
        except ValueError:
            return b""
    if len(client) == 16 and client[:12] == _MAPPED:
        client = client[12:]
    return client[: (v4_bits if len(client) == 4 else v6_bits) // 8]


class RateLimiter:
    """Token buckets per (client network, answer); see the module text."""

    def __init__(
        self,
        rate: int,
        slip: int = 2,
        clock: Callable[[], float] = time.monotonic,
        max_accounts: int = MAX_ACCOUNTS,
    ) -> None:
        if rate < 1:
            raise ValueError("rate must be at least 1 response a second")
        self.rate = float(rate)
        self.slip = slip
        self._clock = clock
        self._max = max_accounts
        # account -> [tokens, time of last charge, responses dropped since the last slip]
        self._accounts: dict[tuple[bytes, object], list[float]] = {}
        self._blocks: dict[str | bytes, bytes] = {}  # client address -> its network
        self._answers: dict[bytes, object] = {}  # query bytes after the ID -> answer key
        self.dropped = 0  # responses not sent at all
        self.slipped = 0  # responses sent truncated instead

    def check(self, query: bytes, response: bytes, client: str | bytes) -> bytes | None:
        """What to send for ``response`` (to ``query`` from ``client``): the response itself,
        a truncated form of it, or None."""
        # Per query: two dictionary hits (the client's network, the answer key of these query
        # bytes), one for the account and a little arithmetic; the rest runs on first sight.
        block = self._blocks.get(client)
        if block is None:
            block = self._block(client)
        tail = query[2:]
        answer = self._answers.get(tail)
        if answer is None:
            answer = self._answer_of(tail, query, response)
        key = (block, answer)
        now = self._clock()
        account = self._accounts.get(key)
        if account is None:
            self._open(key, now)
            return response
        rate = self.rate
        tokens = account[0] + (now - account[1]) * rate
        if tokens > rate:
            tokens = rate
        account[1] = now
        if tokens >= 1.0:
            account[0] = tokens - 1.0
            return response
        account[0] = tokens
        if self.slip:
            account[2] += 1
            if account[2] >= self.slip:
                account[2] = 0
                self.slipped += 1
                return truncated(query, response)
        self.dropped += 1
        return None

    def forget_answers(self) -> None:
        """The zone data changed: the answer a query gets (and so its account) may differ."""
        self._answers.clear()

    def _block(self, client: str | bytes) -> bytes:
        if len(self._blocks) >= self._max:
            self._blocks.clear()
        block = self._blocks[client] = client_block(client)
        return block

    def _answer_of(self, tail: bytes, query: bytes, response: bytes) -> object:
        if len(self._answers) >= self._max:
            self._answers.clear()
        answer = self._answers[tail] = self._answer(query, response)
        return answer

    def _open(self, key: tuple[bytes, object], now: float) -> None:
        if len(self._accounts) >= self._max:
            self._forget_idle(now)
        self._accounts[key] = [self.rate - 1.0, now, 0.0]

    @staticmethod
    def _answer(query: bytes, response: bytes) -> object:
        """What the response says, as an account key (see the module text)."""
        rcode = response[3] & RCODE
        if rcode not in (NOERROR, NXDOMAIN) or response[5] != 1:
            return rcode
        end = question_end(query)
        if end < 0:
            return rcode
        if rcode == NOERROR:
            return query[HEADER:end].lower()  # name (any case), type and class
        # NXDOMAIN: our authority section starts with the zone's SOA, its owner compressed to
        # a pointer at the zone's labels in the question (answers.render).
        if not response[9] or response[end] < COMPRESSED >> 8:
            return rcode
        zone_at = (response[end] << 8 | response[end + 1]) & ~COMPRESSED
        return rcode, response[zone_at : end - 4].lower()

    def _forget_idle(self, now: float) -> None:
        """Make room: forget accounts whose bucket has refilled (they owe nothing); if most
        are still limited, forget them all rather than grow."""
        rate = self.rate
        self._accounts = {
            k: a for k, a in self._accounts.items() if a[0] + (now - a[1]) * rate < rate
        }
        if len(self._accounts) >= self._max // 2:
            self._accounts.clear()


def truncated(query: bytes, response: bytes) -> bytes:
    """``response`` cut to its header and question with TC set: "ask again over TCP"."""
    end = question_end(query) if response[5] == 1 else -1
    head = response[:2] + bytes((response[2] | TC, response[3]))
    if end < 0:
        return head + b"\x00" * 8
    return head + ONE_QUESTION + query[HEADER:end]
