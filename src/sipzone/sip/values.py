"""The plain values the edge policy and the transport hand each other: our listeners, where a
message arrived, what to send, and the counters.

One output convention: the policy answers every message with :data:`Sends`, a tuple of
:class:`Send` (:data:`NOTHING` when nothing goes out).  Values are tuples where they are built
per message, because a tuple is the cheapest object Python builds.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple


@dataclass(frozen=True, slots=True)
class Listener:
    """One socket of ours: the transport and the host:port written in our Via and Contact."""

    transport: str  # "udp" or "tcp"
    host: str  # advertised host (an address; IPv6 without brackets)
    port: int

    @property
    def sent_by(self) -> bytes:
        """host:port as a Via's sent-by or a URI's hostport writes it (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}".encode()


class Arrival(NamedTuple):
    """Where a message reached us: our listener, the peer's address and, on a stream, the id of
    the connection (the transport's, unique per worker)."""

    listener: Listener
    addr: tuple[str, int]
    conn: int | None = None


class Target(NamedTuple):
    """Where a message goes: a transport, an address (never a name by the time it is sent), a
    port and, on a stream, the connection to prefer (a phone's own, RFC 5626 §5.3)."""

    transport: str
    host: str
    port: int
    conn: int | None = None


class Send(NamedTuple):
    """Send ``data`` over ``transport`` to host:port; for streams prefer connection ``conn``."""

    data: bytes
    transport: str
    host: str  # always an address: the edge never asks the transport to look a name up
    port: int
    conn: int | None = None


Sends = tuple[Send, ...]
NOTHING: Sends = ()

# ``new_tuple(Send, (data, transport, host, port, conn))`` builds a Send (or an Arrival) in C,
# without the Python-level __new__ of a NamedTuple: a third of the cost, which the keep-alive
# path and the UDP endpoint pay per datagram.  Every field must be given, in order.
new_tuple = tuple.__new__


@dataclass(slots=True)
class Stats:
    """Counts kept as plain integers on the hot path; ``metrics.py`` publishes them."""

    requests: Counter[tuple[str, str]]  # (method label, verdict)
    keepalives: int = 0  # OPTIONS answered 200 on the hot path
    forwarded: int = 0
    relayed: int = 0
    malformed: int = 0

    @classmethod
    def new(cls) -> Stats:
        return cls(Counter())
