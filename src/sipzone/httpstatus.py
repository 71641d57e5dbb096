"""The metrics port (``--metrics HOST:PORT``): ``/metrics`` for Prometheus, ``/healthz`` and
``/readyz`` for load balancers and orchestrators, 404 for any other path.

- ``/healthz`` answers 200 while the process runs (it is alive; nothing else is checked).
- ``/readyz`` answers 200 when the server should get traffic, else 503 with the reasons, one
  per line: every worker has loaded its first snapshot and bound its listeners, and none has
  been unable to reach the store for ``--ready-stale-after`` seconds (a short outage is
  ridden out on the last snapshot; a long one means this node's answers may be stale).  A
  snapshot read from the node's disk copy at a start without the store counts as loaded: the
  node answers from it, and the outage is counted from that start.

One process serves the port: the only one, or the supervisor of ``--workers N``, which asks
its workers through the ``sipzone_ready`` gauge they each keep (sipzone.metrics).  It runs on
a thread of its own, so a busy event loop never makes a probe time out.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEFAULT_STALE_AFTER = 30.0  # seconds without the store before a worker is no longer ready


@dataclass
class Readiness:
    """What one worker knows about its own readiness (set by the runtime as it starts)."""

    stale_after: float = DEFAULT_STALE_AFTER
    loaded: bool = False  # the first snapshot is in
    listening: bool = False  # every listener is bound
    store_down_since: float | None = None  # time.monotonic() of the first failure in a row
    waiting: str | None = None  # why the first snapshot is not loaded (no store, no disk copy)

    def reasons(self) -> list[str]:
        """Why this worker is not ready; empty when it is."""
        out = []
        if not self.loaded:
            out.append(self.waiting or "the first snapshot is not loaded yet")
        elif not self.listening:
            out.append("the listeners are not bound yet")
        since = self.store_down_since
        if since is not None and time.monotonic() - since >= self.stale_after:
            out.append(f"the store has been out of reach for {time.monotonic() - since:.0f} s")
        return out

    def store_reached(self, ok: bool) -> None:
        if ok:
            self.store_down_since = None
        elif self.store_down_since is None:
            self.store_down_since = time.monotonic()


class _Server(ThreadingHTTPServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def serve_status(
    host: str, port: int, registry: Any, not_ready: Callable[[], list[str]]
) -> ThreadingHTTPServer:
    """Serve the three paths on ``host:port`` from a daemon thread; returns the server."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                self._send(200, b"alive\n")
            elif path == "/readyz":
                reasons = not_ready()
                body = "\n".join(reasons) + "\n" if reasons else "ready\n"
                self._send(503 if reasons else 200, body.encode())
            else:
                self._send(404, b"not found: /metrics, /healthz or /readyz\n")

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # a scrape a second is no news for the log

    server = (_Server6 if ":" in host else _Server)((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="sipzone-status", daemon=True).start()
    return server


def workers_not_ready(registry: Any) -> list[str]:
    """The reasons the workers' ``sipzone_ready`` gauges give (a worker at 0)."""
    out = []
    for family in registry.collect():
        if family.name != "sipzone_ready":
            continue
        for sample in family.samples:
            if sample.value < 1:
                worker = sample.labels.get("worker", "?")
                out.append(f"worker {worker} (pid {sample.labels.get('pid', '?')}) is not ready")
    return out
