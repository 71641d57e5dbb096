"""The SIP edge's Prometheus counters, in the default registry the runtime serves.

The edge counts in plain integers (a label lookup per request would cost more than the rest
of an OPTIONS answer); :func:`publish` moves what was counted since the last call into these
counters, and the transport calls it about once a second and on close.
"""

from __future__ import annotations

from prometheus_client import Counter

from sipzone.sip.values import Stats

REQUESTS = Counter(
    "sipzone_sip_requests",
    "SIP messages by method and verdict (answered, forwarded, rejected, dropped, malformed, "
    "dropped_malformed, too_many_hops, no_upstream, unsupported, loop, unresolvable, "
    "route_refused, bad_flow_token); "
    "responses not relayed as method 'response' (stray, forged, unroutable, loop)",
    ["method", "verdict"],
)
FORWARDED = Counter(
    "sipzone_sip_forwarded", "SIP requests forwarded (to the core or, in-dialog, to a client)"
)
RELAYED = Counter("sipzone_sip_relayed_responses", "SIP responses relayed towards the client")
MALFORMED = Counter("sipzone_sip_malformed", "SIP messages that failed to parse or check")


def publish(stats: Stats) -> None:
    """Add the counts in ``stats`` to the Prometheus counters and zero them."""
    for (method, verdict), n in stats.requests.items():
        REQUESTS.labels(method, verdict).inc(n)
    stats.requests.clear()
    if stats.keepalives:
        REQUESTS.labels("OPTIONS", "answered").inc(stats.keepalives)
        stats.keepalives = 0
    if stats.forwarded:
        FORWARDED.inc(stats.forwarded)
        stats.forwarded = 0
    if stats.relayed:
        RELAYED.inc(stats.relayed)
        stats.relayed = 0
    if stats.malformed:
        MALFORMED.inc(stats.malformed)
        stats.malformed = 0
