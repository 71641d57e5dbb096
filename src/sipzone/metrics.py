"""Process-wide Prometheus metrics that belong to no single protocol."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

REVISION = Gauge(
    "sipzone_revision",
    "Store revision of the snapshot this process serves.",
    # live: a dead worker's last value must not outlast it (a replaced store may start lower)
    multiprocess_mode="livemax",
)
WORKER_RESTARTS = Counter(
    "sipzone_worker_restarts",
    "Workers the supervisor started to replace one that died.",
)
