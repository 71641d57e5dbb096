"""The voicemail store's endpoints under the email domain: where mail clients and the voicemail
pages reach IMAP and submission, installation-wide or per site.

An endpoint is written ``[SITE=][HOST:]PORT``: ``imap.example.com:993`` for every site,
``eu=vm-eu.example.com:993`` for site ``eu`` alone (it wins over the installation-wide one), and
a bare ``993`` for each site's own host (its SIP host, on its virtual IPs).  Both services are
implicit TLS, as RFC 8314 asks (``_imaps._tcp``, ``_submissions._tcp``).  The store keeps a
service's endpoints as one setting, the canonical texts separated by spaces, so the CLI, the
API and a read of the store go through :func:`parse_endpoints` alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sipzone.model.errors import BadAddress, Conflict, IPLiteral
from sipzone.model.names import parse_domain
from sipzone.model.snapshot import Site, check_number, parse_site_name

MAIL_SERVICES = ("imap", "submission")  # what ``email-domain set`` takes endpoints for
# The setting that holds each service's endpoints (see the module docstring).
SETTING = {service: f"email_{service}" for service in MAIL_SERVICES}
# RFC 6186 and RFC 8314 service names under the email domain, and the service each one is
# (None: sipzone never offers it, and the DNS says so with the target ".").
SRV_NAMES: tuple[tuple[str, str | None], ...] = (
    ("_imaps", "imap"),
    ("_submissions", "submission"),
    ("_imap", None),
    ("_pop3", None),
    ("_pop3s", None),
    ("_submission", None),
)
DEFAULT_PORT = {"imap": 993, "submission": 465}


@dataclass(frozen=True, slots=True)
class MailEndpoint:
    """One endpoint: ``host`` None means the site's own host; ``site`` None, every site
    without one of its own."""

    port: int
    host: str | None = None
    site: str | None = None

    @property
    def text(self) -> str:
        where = f"{self.host}:{self.port}" if self.host else str(self.port)
        return f"{self.site}={where}" if self.site else where


def parse_endpoint(service: str, text: str) -> MailEndpoint:
    """``[SITE=][HOST:]PORT`` (see the module docstring); HOST must be a DNS name, as an SRV
    target cannot be an address."""
    site, sep, rest = text.strip().rpartition("=")
    host, colon, port = rest.rpartition(":")
    if not port.isdigit() or (colon and not host):
        raise BadAddress(
            f"--{service} {text!r} is not [SITE=][HOST:]PORT (such as mail.example.com:"
            f"{DEFAULT_PORT[service]}, or {DEFAULT_PORT[service]} for each site's own host)"
        )
    try:
        name = parse_domain(host).text if host else None
    except IPLiteral:
        raise BadAddress(
            f"--{service} {text!r}: give a host name, not an address (SRV records name hosts)"
        ) from None
    return MailEndpoint(
        check_number(f"--{service} port", int(port), 1, 65535),
        name,
        parse_site_name(site) if sep else None,
    )


def parse_endpoints(service: str, texts: Iterable[str]) -> tuple[MailEndpoint, ...]:
    """Endpoints of ``service``, the installation-wide one first, then by site; at most one
    of each (:class:`Conflict` otherwise)."""
    found: dict[str | None, MailEndpoint] = {}
    for text in texts:
        endpoint = parse_endpoint(service, text)
        if endpoint.site in found:
            where = f"site {endpoint.site!r}" if endpoint.site else "every site"
            raise Conflict(f"--{service} is given twice for {where}")
        found[endpoint.site] = endpoint
    return tuple(sorted(found.values(), key=lambda e: (e.site is not None, e.site or "")))


def stored_endpoints(service: str, value: str | None) -> tuple[MailEndpoint, ...]:
    """The endpoints of ``service`` as the setting ``value`` holds them."""
    return parse_endpoints(service, (value or "").split())


def endpoint_for(endpoints: Iterable[MailEndpoint], site: str) -> MailEndpoint | None:
    """The endpoint ``site`` uses: its own, else the installation-wide one, else None."""
    default = None
    for endpoint in endpoints:
        if endpoint.site == site:
            return endpoint
        if endpoint.site is None:
            default = endpoint
    return default


def mail_targets(
    endpoints: Sequence[MailEndpoint], ordered: Iterable[tuple[int, Site]], zone: str
) -> list[tuple[int, Site, str, int]]:
    """(priority, site, host, port) of each site's endpoint in the order of ``ordered``
    (priority, site) pairs, the host seen from ``zone``; sites sharing one endpoint give it
    once, at the first one's priority."""
    out: dict[tuple[str, int], tuple[int, Site, str, int]] = {}
    for priority, site in ordered if endpoints else ():
        endpoint = endpoint_for(endpoints, site.name)
        if endpoint is not None:
            host = endpoint.host or site.host_in(zone)
            out.setdefault((host, endpoint.port), (priority, site, host, endpoint.port))
    return list(out.values())
