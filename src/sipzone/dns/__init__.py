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
    # NS of every zone when the store names none (`sipzone nameserver add` wins; records.py).
    nameservers: tuple[str, ...] = ()
    udp_payload: int = 1232  # EDNS0 payload we offer and honour (DNS flag day 2020 value)
    send_notify: bool = True  # with --workers N, only one worker should send NOTIFY
    cache_size: int = 200_000  # per-question answer cache entries before it is dropped
    batched_udp: bool = True  # recvmmsg/sendmmsg on Linux; False: one asyncio callback each
    # Negative answers (NXDOMAIN, NODATA) are cached this long: the SOA MINIMUM, and the TTL of
    # the SOA they carry is min(ttl, negative_ttl) (RFC 2308 §3, §5).  Short, so a name asked
    # for just before it was added comes alive soon.
    negative_ttl: int = 60
    # DNS over TCP (RFC 7766): a connection must send a complete query every tcp_idle_timeout
    # seconds (frames we cannot answer do not count), and once a query's first byte is in, the
    # rest within tcp_query_timeout.  Caps: tcp_max_connections in all (None: this service's
    # share of the open-file limit, sipzone.net.limits) and tcp_max_per_source per IPv4
    # address or IPv6 /64; a connection beyond a cap is closed at once.
    tcp_idle_timeout: float = 10.0
    tcp_query_timeout: float = 2.0
    tcp_max_connections: int | None = None
    tcp_max_per_source: int = 32
    # Response rate limiting over UDP (like BIND's RRL): at most rrl responses/s per client
    # /24 (IPv4) or /56 (IPv6) and answer; of the responses dropped beyond it, every
    # rrl_slip-th goes out truncated (TC=1) so a real client retries over TCP.  0: off.
    rrl: int = 0
    rrl_slip: int = 2
    # Count queries by type and rcode and sample response times (sipzone.dns.metrics): set
    # with --metrics; off, the answering path is not wrapped at all.
    metrics: bool = False
    # While any site is down or drained, the answers health changes (SIP domains' A/AAAA, SRV
    # and NAPTR, the email domain's addresses) carry min(ttl, health_ttl): resolvers come back
    # soon for the site's return.
    health_ttl: int = 30
    # IXFR (sipzone.dns.ixfr): per zone, the records (deleted and added) of recent changes kept
    # in memory to send a secondary what changed since its serial; one older than that, or a
    # change bigger, gets the whole zone.  0: IXFR is always answered with the whole zone.
    ixfr_history: int = 100_000
