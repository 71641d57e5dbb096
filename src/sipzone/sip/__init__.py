"""SIP: sans-IO messages (message.py), the edge policy (edge.py) and sockets (transport.py)."""

from __future__ import annotations

from dataclasses import dataclass

# Settings (store table ``settings``) holding the key our Via branches are signed with, and
# the one before the last rotation, still accepted for responses to what it signed.
BRANCH_SECRET = "sip_branch_secret"
BRANCH_SECRET_PREVIOUS = "sip_branch_secret_previous"


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
    # Seconds from a message's first byte to the end of its headers, and to the end of its body:
    # a peer that dribbles bytes keeps the idle timer young, not these.
    tcp_header_timeout: float = 5.0
    tcp_message_timeout: float = 30.0
    # Per worker; connections beyond it are closed at once.  None: as many as the open-file
    # limit leaves (sipzone.net.limits.connection_cap), which also caps any number given.
    tcp_max_connections: int | None = None
    tcp_max_per_source: int = 256  # connections a peer address may open (phones behind a NAT)
    batched_udp: bool = True  # recvmmsg/sendmmsg on Linux; False: one asyncio callback each
