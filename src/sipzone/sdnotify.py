"""systemd's readiness protocol (sd_notify) over a plain unix datagram socket, no library.

Under ``Type=notify`` systemd passes ``NOTIFY_SOCKET`` (a path, or ``@name`` in the abstract
namespace) and, with ``WatchdogSec=``, ``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process it
is meant for).  `serve` sends ``READY=1`` once every worker listens, ``WATCHDOG=1`` at half
the watchdog interval from the loop that would stop if the process hung, and ``STOPPING=1``
when it starts to drain.  Outside systemd every call does nothing.  Only the main process
speaks (``NotifyAccess=main``): workers of ``--workers N`` drop the variable.
"""

from __future__ import annotations

import os
import socket

ENV_SOCKET = "NOTIFY_SOCKET"


def notify(*lines: str) -> bool:
    """Send ``lines`` (``READY=1``, ``STATUS=...``) as one datagram; False outside systemd or
    when the socket is gone (never raises: a lost supervisor must not stop a server)."""
    path = os.environ.get(ENV_SOCKET)
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between two ``WATCHDOG=1`` (half what systemd allows), or None when no
    watchdog is asked of this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec) / 2e6, 0.01)
    except ValueError:
        return None


def leave_to_parent() -> None:
    """In a worker: the main process alone speaks to systemd."""
    for name in (ENV_SOCKET, "WATCHDOG_USEC", "WATCHDOG_PID"):
        os.environ.pop(name, None)
