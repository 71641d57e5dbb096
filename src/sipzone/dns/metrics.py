"""The DNS authority's Prometheus metrics, counted cheaply where queries are answered.

A query costs a few microseconds, so it is counted in plain integers (:class:`QueryCounts`:
a list index per response for its rcode; one response in :data:`SAMPLE` also classified by
query type and timed), and only with ``--metrics`` (without it the answering path is not
wrapped at all).  ``bench/dns/metrics-cost.sh`` measures what the counting costs.
:func:`publish` moves the counts into the Prometheus metrics about once a second (the runtime
calls it, as the SIP edge does with its own); transfers and NOTIFY are rare and go to their
counters at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

from prometheus_client import Counter, Histogram

RESPONSES = Counter(
    "sipzone_dns_responses",
    "DNS responses by response code, UDP and TCP (zone transfers are counted apart)",
    ["rcode"],
)
SAMPLED = Counter(
    "sipzone_dns_queries_sampled",
    "One DNS response in 16, by query type and response code: the mix of what is asked "
    "(multiply by 16 for an estimate of the whole)",
    ["qtype", "rcode"],
)
LATENCY = Histogram(
    "sipzone_dns_response_seconds",
    "Time to build a DNS response over UDP, one query in 16 timed (the socket's time not included)",
    buckets=(2e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 0.1),
)
TRANSFERS = Counter(
    "sipzone_dns_transfers",
    "Zone transfers (AXFR, IXFR) by outcome: complete, refused, aborted (the peer went away "
    "or stalled), failed (our error)",
    ["outcome"],
)
IXFRS = Counter(
    "sipzone_dns_ixfr",
    "IXFR queries allowed, by answer: incremental (the changes since the secondary's serial), "
    "zone (the whole zone: no history reaches back that far), current (the SOA alone: up to "
    "date, or over UDP when the changes do not fit)",
    ["answer"],
)
NOTIFIES = Counter(
    "sipzone_dns_notifies",
    "NOTIFY messages to secondaries by outcome: acknowledged, unanswered (after every retry)",
    ["outcome"],
)

SAMPLE = 16  # one response in this many is timed and classified by type
_RCODES = ("NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED")
_QTYPES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 35: "NAPTR", 41: "OPT", 43: "DS", 48: "DNSKEY", 64: "SVCB", 65: "HTTPS",
    251: "IXFR", 252: "AXFR", 255: "ANY",
}  # fmt: skip

Respond = Callable[[bytes, "str | bytes"], "bytes | None"]


class QueryCounts:
    """Responses counted by rcode (each one: a list index), one in SAMPLE also by query
    type, and the time of one in SAMPLE (the rest of a response costs a few microseconds: a
    dict update and a name scan for each would be a fifth of it)."""

    __slots__ = ("_countdown", "by_key", "by_rcode", "samples")

    def __init__(self) -> None:
        self.by_rcode = [0] * 16
        self.by_key: dict[int, int] = {}  # qtype << 4 | rcode -> sampled responses
        self.samples: list[float] = []
        self._countdown = SAMPLE

    def classify(self, out: bytes) -> None:
        """Count one sampled response by the type its question asks for."""
        try:
            end = out.index(0, 12)  # the root label that ends the question's name
            key = (out[end + 1] << 8 | out[end + 2]) << 4 | out[3] & 15
        except (ValueError, IndexError):  # no question: a FORMERR for a header alone
            key = out[3] & 15
        self.by_key[key] = self.by_key.get(key, 0) + 1

    def count(self, out: bytes) -> None:
        """Count one response (the TCP path; UDP's is inlined in :meth:`wrap`)."""
        self.by_rcode[out[3] & 15] += 1
        self._countdown -= 1
        if not self._countdown:
            self._countdown = SAMPLE
            self.classify(out)

    def wrap(self, respond: Respond) -> Respond:
        """``respond`` with every response counted, one in SAMPLE classified and timed."""
        clock = time.perf_counter
        by_rcode, samples, classify = self.by_rcode, self.samples, self.classify
        countdown = SAMPLE

        def counted(data: bytes, client: str | bytes) -> bytes | None:
            nonlocal countdown
            countdown -= 1
            if countdown:
                out = respond(data, client)
                if out is not None:
                    by_rcode[out[3] & 15] += 1
                return out
            countdown = SAMPLE
            started = clock()
            out = respond(data, client)
            if out is not None:
                samples.append(clock() - started)
                by_rcode[out[3] & 15] += 1
                classify(out)
            return out

        return counted


def qtype_name(number: int) -> str:
    return _QTYPES.get(number, f"TYPE{number}")


def rcode_name(number: int) -> str:
    return _RCODES[number] if number < len(_RCODES) else f"RCODE{number}"


def publish(counts: QueryCounts) -> None:
    """Add what ``counts`` holds to the Prometheus metrics and zero it (in place: the
    answering path holds its lists)."""
    for rcode, n in enumerate(counts.by_rcode):
        if n:
            RESPONSES.labels(rcode_name(rcode)).inc(n)
            counts.by_rcode[rcode] = 0
    for key, n in counts.by_key.items():
        SAMPLED.labels(qtype_name(key >> 4), rcode_name(key & 15)).inc(n)
    counts.by_key.clear()
    for seconds in counts.samples:
        LATENCY.observe(seconds)
    counts.samples.clear()


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
