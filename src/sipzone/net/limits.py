"""How many stream connections a service may hold, given the process's open-file limit.

A connection is a file descriptor; a cap above the open-file limit lets a flood of idle
connections starve the store, the logs and the listeners of descriptors (``EMFILE``).  The
process raises its soft limit to the hard one at start, and every stream service takes at most
its share of what remains after a reserve.
"""

from __future__ import annotations

import resource

FD_RESERVE = 128  # descriptors kept for the store, logs, listeners and upstream connections
STREAM_SERVICES = 2  # SIP (TCP, later TLS) and DNS (TCP) share what is left
MIN_CAP = 16


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as far as allowed); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass  # a container may forbid it: the caps below follow the limit we have
    return soft


def connection_cap(requested: int | None = None) -> int:
    """The most stream connections one service may hold: ``requested`` (None: as many as its
    share allows), but never more than its share of the open-file limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        share = 1 << 20
    else:
        share = max(MIN_CAP, (soft - FD_RESERVE) // STREAM_SERVICES)
    return share if requested is None else max(1, min(requested, share))
