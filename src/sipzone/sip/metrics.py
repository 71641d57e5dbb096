"""The SIP edge's Prometheus counters, in the default registry the runtime serves.

The edge counts in plain integers (a label lookup per request would cost more than the rest
of an OPTIONS answer); :func:`publish` moves what was counted since the last call into these
counters, and the transport calls it about once a second and on close.
"""

from __future__ import annotations

import contextlib
from collections import Counter as CounterType
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

from prometheus_client import Counter, Gauge

from sipzone.model.certificates import Certificate
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


TLS_HANDSHAKES = Counter(
    "sipzone_sip_tls_handshakes",
    "TLS handshakes by direction (in: clients, out: connections we open) and outcome (ok, "
    "no_client_certificate, certificate_refused, not_tls, no_common_protocol, timeout, closed, "
    "failed)",
    ["direction", "outcome"],
)
CONNECTIONS = Gauge(
    "sipzone_sip_connections",
    "Open SIP stream connections by transport (tcp, tls)",
    ["transport"],
    multiprocess_mode="livesum",
)
CERTIFICATE_DAYS_LEFT = Gauge(
    "sipzone_tls_certificate_days_left",
    "Days until a stored TLS certificate expires (negative: expired), by certificate name",
    ["name"],
    multiprocess_mode="livemin",
)
_certificate_names: set[str] = set()


def publish_tls(
    handshakes: CounterType[tuple[str, str]],
    connections: Mapping[str, int],
    certificates: Sequence[Certificate],
) -> None:
    """Move the handshake counts into their counter (and zero them), set the connection and
    certificate gauges."""
    for (direction, outcome), n in handshakes.items():
        TLS_HANDSHAKES.labels(direction, outcome).inc(n)
    handshakes.clear()
    for transport in ("tcp", "tls"):
        CONNECTIONS.labels(transport).set(connections.get(transport, 0))
    now = datetime.now(UTC)
    names = {c.name for c in certificates}
    for gone in _certificate_names - names:
        CERTIFICATE_DAYS_LEFT.remove(gone)
    _certificate_names.clear()
    _certificate_names.update(names)
    for cert in certificates:
        CERTIFICATE_DAYS_LEFT.labels(cert.name).set(round(cert.days_left(now), 2))


TRUNK_UP = Gauge(
    "sipzone_trunk_target_up",
    "Whether a trunk target answered its last OPTIONS 2xx (1), or is down (0)",
    ["trunk", "target"],
    multiprocess_mode="livemax",
)
TRUNK_RTT = Gauge(
    "sipzone_trunk_target_rtt_seconds",
    "Round-trip time of a trunk target's last answer to OPTIONS",
    ["trunk", "target"],
    multiprocess_mode="livemax",
)


def publish_trunk_target(trunk: str, target: str, up: bool | None, rtt_ms: float | None) -> None:
    """The state of one trunk target after a probe (one worker probes: see trunkprobe.py)."""
    TRUNK_UP.labels(trunk, target).set(1 if up else 0)
    if rtt_ms is not None:
        TRUNK_RTT.labels(trunk, target).set(rtt_ms / 1000)


def forget_trunk_target(trunk: str, target: str) -> None:
    """A trunk target removed from the store: its series go too."""
    for gauge in (TRUNK_UP, TRUNK_RTT):
        with contextlib.suppress(KeyError):
            gauge.remove(trunk, target)
