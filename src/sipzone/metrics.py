"""Process-wide Prometheus metrics that belong to no single protocol."""

from __future__ import annotations

from prometheus_client import Gauge

REVISION = Gauge(
    "sipzone_revision",
    "Store revision of the snapshot this process serves.",
    multiprocess_mode="max",
)
