"""Process-wide Prometheus metrics that belong to no single protocol.

With ``--workers N`` each worker writes its own values; the per-worker gauges are labelled
with the worker's position and (by prometheus_client) its pid, and count only while that
worker lives: a stale worker shows as itself, never hidden in a maximum, and a dead one's
values go with it.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REVISION = Gauge(
    "sipzone_revision",
    "Store revision of the snapshot this worker serves.",
    ["worker"],
    # live: a dead worker's last value must not outlast it (a replaced store may start lower)
    multiprocess_mode="liveall",
)
FEED_LAG = Gauge(
    "sipzone_feed_lag_seconds",
    "Seconds from the commit of the newest change this worker applied to its publication here.",
    ["worker"],
    multiprocess_mode="liveall",
)
STORE_UP = Gauge(
    "sipzone_store_up",
    "1 while this worker reaches the store, 0 while it cannot (it serves its last snapshot).",
    ["worker"],
    multiprocess_mode="liveall",
)
SNAPSHOT_STALE = Gauge(
    "sipzone_snapshot_stale",
    "1 while this worker serves the disk copy it started on, not yet confirmed by the store.",
    ["worker"],
    multiprocess_mode="liveall",
)
READY = Gauge(
    "sipzone_ready",
    "1 when this worker is ready: snapshot loaded, listeners bound, store fresh enough.",
    ["worker"],
    multiprocess_mode="liveall",
)
WORKER_RESTARTS = Counter(
    "sipzone_worker_restarts",
    "Workers the supervisor started to replace one that died.",
)
