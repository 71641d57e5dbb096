"""DNS: snapshot to records and precompiled answers, the server, zone transfer and export."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DnsConfig:
    """How `sipzone serve --dns ...` runs the authority; built by the CLI, read by server.py."""

    listen: str = "127.0.0.1:5353"  # "HOST:PORT", IPv6 as "[::1]:PORT"
    allow_transfer: tuple[str, ...] = ()  # CIDRs allowed to AXFR
    notify: tuple[str, ...] = ()  # secondaries to NOTIFY on change, "HOST:PORT"
    naptr: bool = True
    ttl: int = 300
    # Added by the DNS authority (all optional):
    nameservers: tuple[str, ...] = ()  # NS of every zone; default: the sites' SIP hosts
    udp_payload: int = 1232  # EDNS0 payload we offer and honour (DNS flag day 2020 value)
    send_notify: bool = True  # with --workers N, only one worker should send NOTIFY
    cache_size: int = 200_000  # per-question answer cache entries before it is dropped
    batched_udp: bool = True  # recvmmsg/sendmmsg on Linux; False: one asyncio callback each
