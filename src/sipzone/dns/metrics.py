"""The DNS authority's Prometheus metrics, counted cheaply where queries are answered.

A query costs a few microseconds, so it is counted in plain integers (:class:`QueryCounts`:
one dict increment keyed by type and rcode, and one query in :data:`LATENCY_SAMPLE` timed),
and only with ``--metrics`` (without it the answering path is not wrapped at all).
:func:`publish` moves the counts into the Prometheus metrics about once a second (the runtime
calls it, as the SIP edge does with its own); transfers and NOTIFY are rare and go to their
counters at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram

QUERIES = Counter(
    "sipzone_dns_queries",
    "DNS queries answered, by query type and response code (over UDP and TCP)",
    ["qtype", "rcode"],
)
LATENCY = Histogram(
    "sipzone_dns_response_seconds",
    "Time to build a DNS response, one query in 64 sampled (the socket's time not included)",
    buckets=(2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1),
)
TRANSFERS = Counter(
    "sipzone_dns_transfers",
    "Zone transfers (AXFR, IXFR) by outcome: complete, refused, aborted (the peer went away "
    "or stalled), failed (our error)",
    ["outcome"],
)
NOTIFIES = Counter(
    "sipzone_dns_notifies",
    "NOTIFY messages to secondaries by outcome: acknowledged, unanswered (after every retry)",
    ["outcome"],
)

LATENCY_SAMPLE = 64  # one query in this many is timed
_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    251: "IXFR", 252: "AXFR", 255: "ANY",
}  # fmt: skip

Respond = Callable[[bytes, "str | bytes"], "bytes | None"]


class QueryCounts:
    """Responses counted by (qtype, rcode) in one dict, and sampled response times."""

    __slots__ = ("_countdown", "by_key", "samples")

    def __init__(self) -> None:
        self.by_key: dict[int, int] = {}  # qtype << 4 | rcode -> responses
        self.samples: list[float] = []
        self._countdown = LATENCY_SAMPLE

    def count(self, out: bytes) -> None:
        """Count one response (the question it carries names the type)."""
        try:
            end = out.index(0, 12)  # the root label that ends the question's name
            key = (out[end + 1] << 8 | out[end + 2]) << 4 | out[3] & 15
        except (ValueError, IndexError):  # no question: a FORMERR for a header alone
            key = out[3] & 15 if len(out) > 3 else 1
        by_key = self.by_key
        by_key[key] = by_key.get(key, 0) + 1

    def wrap(self, respond: Respond) -> Respond:
        """``respond`` with every response counted and one in LATENCY_SAMPLE timed."""
        clock = time.perf_counter
        count = self.count

        def counted(data: bytes, client: str | bytes) -> bytes | None:
            self._countdown -= 1
            if self._countdown:
                out = respond(data, client)
            else:
                self._countdown = LATENCY_SAMPLE
                started = clock()
                out = respond(data, client)
                self.samples.append(clock() - started)
            if out is not None:
                count(out)
            return out

        return counted


def qtype_name(number: int) -> str:
    return _QTYPES.get(number, f"TYPE{number}")


def rcode_name(number: int) -> str:
    return _RCODES[number] if number < len(_RCODES) else f"RCODE{number}"


def publish(counts: QueryCounts) -> None:
    """Add what ``counts`` holds to the Prometheus metrics and empty it."""
    by_key, counts.by_key = counts.by_key, {}
    samples, counts.samples = counts.samples, []
    for key, n in by_key.items():
        QUERIES.labels(qtype_name(key >> 4), rcode_name(key & 15)).inc(n)
    for seconds in samples:
        LATENCY.observe(seconds)


def counted_transfer(messages: Iterator[bytes]) -> Iterator[bytes]:
    """``messages`` of one transfer, its outcome counted when it ends."""
    outcome = "failed"
    try:
        for i, message in enumerate(messages):
            if i == 0 and len(message) > 3 and message[3] & 15 == 5:  # REFUSED
                outcome = "refused"
            yield message
        if outcome != "refused":
            outcome = "complete"
    except GeneratorExit:  # the server stopped asking: the peer went away or stalled
        outcome = "aborted"
        raise
    finally:
        TRANSFERS.labels(outcome).inc()
