"""SIP: sans-IO messages (message.py), the edge policy (edge.py) and sockets (transport.py)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SipConfig:
    """How `sipzone serve --sip ...` runs the edge; built by the CLI, read by transport.py."""

    listen: tuple[str, ...] = ("udp:127.0.0.1:5070",)  # "udp:HOST:PORT", "tcp:[::1]:PORT"
    site: str | None = None  # the site this process runs at: its default upstream applies
    drop_unknown: bool = False  # True: silently drop requests for domains not served
    tenant_header: str = "X-Sipzone-Tenant"
    # Host written in our Via when listening on a wildcard address (0.0.0.0, ::).
    advertise: str | None = None
    # Option tags in the Supported header of our OPTIONS answer (empty: we claim none).
    supported: tuple[str, ...] = ()
    allow: tuple[str, ...] = (
        "INVITE", "ACK", "CANCEL", "BYE", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO",
        "REFER", "NOTIFY", "SUBSCRIBE", "MESSAGE",
    )  # fmt: skip
    tcp_idle_timeout: float = 300.0  # seconds without a byte before a TCP connection is closed
    tcp_max_connections: int = 4096  # per worker; connections beyond it are closed at once
    batched_udp: bool = True  # recvmmsg/sendmmsg on Linux; False: one asyncio callback each
