"""SIP: the edge's configuration, listen specs and store settings; the modules below hold the
sans-IO messages (message.py), the edge policy (edge.py with keepalive.py, memo.py,
signing.py, values.py) and the sockets (transport.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

from sipzone.net import split_hostport

if TYPE_CHECKING:
    from sipzone.sip.tls import TlsPolicy

# Settings (store table ``settings``) holding the key our Via branches are signed with, and
# the one before the last rotation, still accepted for responses to what it signed.
BRANCH_SECRET = "sip_branch_secret"
BRANCH_SECRET_PREVIOUS = "sip_branch_secret_previous"

LISTEN_TRANSPORTS = ("udp", "tcp", "tls")


class ListenSpec(NamedTuple):
    """One ``--sip`` listener: ``udp:HOST:PORT``, ``tcp:[V6]:PORT`` or ``tls:HOST:PORT`` (port
    0: any free)."""

    transport: str
    host: str  # IPv6 without brackets
    port: int


def check_tenant_headers(*names: str) -> None:
    """ValueError unless each of ``names`` can name a header of its own for the tenants: a
    token (RFC 3261 §25.1), none a header SIP gives a meaning to, no two alike."""
    from sipzone.sip.message import COMPACT, KNOWN, is_token

    seen: set[str] = set()
    for name in names:
        if not name.isascii() or not is_token(name.encode()):
            raise ValueError(f"header name {name!r} is not a token (letters, digits, -.!%*_+`'~)")
        lower = name.lower().encode()
        if lower in {k.lower() for k in KNOWN} or lower in COMPACT:
            raise ValueError(f"header name {name!r} is a SIP header of its own")
        if name.lower() in seen:
            raise ValueError(f"header name {name!r} is given twice")
        seen.add(name.lower())


def parse_listen(spec: str) -> ListenSpec:
    """``udp:127.0.0.1:5070`` / ``tcp:[::1]:5070`` / ``tls:...`` -> ListenSpec; ValueError
    naming the problem otherwise.  The CLI checks ``--sip`` with it and the transport binds
    what it returns."""
    transport, _, hostport = spec.partition(":")
    transport = transport.lower()
    if transport not in LISTEN_TRANSPORTS:
        raise ValueError(f"listen spec {spec!r}: transport must be {', '.join(LISTEN_TRANSPORTS)}")
    try:
        host, port = split_hostport(hostport, allow_zero=True)
    except ValueError as exc:
        raise ValueError(f"listen spec {spec!r}: {exc}") from None
    return ListenSpec(transport, host, port)


def parse_host_pin(text: str) -> tuple[str, str]:
    """``sip.pstnhub.microsoft.com=192.0.2.10`` (``serve --sip-host``) -> (name, address);
    ValueError naming the problem otherwise."""
    import ipaddress

    from sipzone.model.errors import InvalidName
    from sipzone.model.names import parse_domain

    name, sep, address = text.partition("=")
    try:
        if not sep:
            raise ValueError("give NAME=ADDRESS")
        host = parse_domain(name).text
        return host, str(ipaddress.ip_address(address.strip().strip("[]")))
    except (ValueError, InvalidName) as exc:
        raise ValueError(f"--sip-host {text!r}: {exc}") from None


@dataclass(frozen=True)
class SipConfig:
    """How `sipzone serve --sip ...` runs the edge; built by the CLI, read by transport.py."""

    listen: tuple[str, ...] = ("udp:127.0.0.1:5070",)  # "udp:HOST:PORT", "tcp:[::1]:PORT"
    site: str | None = None  # the site this process runs at: its default upstream applies
    drop_unknown: bool = False  # True: silently drop requests for domains not served
    tenant_header: str = "X-Sipzone-Tenant"  # on requests to the core: the dialled name's owner
    # On requests to the core: the owner of the From name, when we serve it (the caller's).
    caller_tenant_header: str = "X-Sipzone-Caller-Tenant"
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
    # TLS listeners and the connections we open over TLS (None: the defaults of TlsPolicy).
    # The stream settings above (tcp_*) apply to TLS connections too; a handshake must end
    # within tcp_header_timeout.
    tls: TlsPolicy | None = None
    # Whether this worker sends the trunks' OPTIONS (only one worker of a node does).
    probe_trunks: bool = True
    # Configured names (upstreams, trunk targets) pinned to an address ahead of the resolver,
    # as an /etc/hosts line would: ``serve --sip-host NAME=ADDRESS``.
    hosts: tuple[tuple[str, str], ...] = ()
    # Name servers (address, port) the upstreams are located with (RFC 3263: NAPTR, SRV,
    # A/AAAA): ``serve --upstream-dns``; none: the system's (/etc/resolv.conf, /etc/hosts).
    upstream_dns: tuple[tuple[str, int], ...] = ()
    # Whether the upstreams' located targets are probed (``serve --health-checks``); off: all
    # count as usable and the first by priority and weight takes the requests.
    probe_upstreams: bool = False
    # Whether this worker logs what every worker sees alike (upstream health; worker 0 only).
    voice: bool = True
