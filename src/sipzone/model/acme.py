"""What an ACME certificate is ordered for, and when it is due again: values, no I/O.

Theory of operation.  ``cert acme`` names the domains to order (exact names and ``*.B``
wildcards, checked as SIP domain rules are) and the key type; each DNS-01 challenge for a
domain ``D`` or ``*.D`` is a TXT value at ``_acme-challenge.D`` (RFC 8555 §8.4), so a base name
and its wildcard in one order share one name and publish two values together.  A certificate
is due at two thirds of its lifetime; a failed attempt waits :func:`backoff` (doubling, capped)
before the next.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlsplit

from sipzone.model.errors import BadChallenge, BadEmail, BadKeyType, BadURL, InvalidValue
from sipzone.model.names import parse_domain, parse_rule
from sipzone.model.tenancy import zone_of

CHALLENGE_LABEL = "_acme-challenge"
KEY_TYPES = ("ec256", "rsa2048")
MAX_DOMAINS = 100  # Let's Encrypt's limit of names per certificate
RENEW_AT = 2 / 3  # of the lifetime
BACKOFF_CAP = timedelta(hours=6)
# A DNS-01 value is the base64url SHA-256 of the key authorisation: 43 characters.
_VALUE = re.compile(r"[A-Za-z0-9_-]{1,255}\Z")


def parse_key_type(text: str) -> str:
    if text not in KEY_TYPES:
        raise BadKeyType(f"key type {text!r} is not one of {', '.join(KEY_TYPES)}")
    return text


def parse_acme_domains(texts: Iterable[str]) -> tuple[str, ...]:
    """The names to order, normalised (A-labels, lower case), in order, without duplicates."""
    out = tuple(dict.fromkeys(parse_rule(text).text for text in texts))
    if not out:
        raise InvalidValue("an ACME certificate needs at least one --domain")
    if len(out) > MAX_DOMAINS:
        raise InvalidValue(f"{len(out)} domains; a certificate covers at most {MAX_DOMAINS}")
    return out


def challenge_name(domain: str) -> str:
    """Where the DNS-01 value for ``domain`` (``D`` or ``*.D``) is published."""
    return f"{CHALLENGE_LABEL}.{domain.removeprefix('*.')}"


def parse_challenge(name: str, value: str) -> tuple[str, str]:
    """A challenge record to publish: ``_acme-challenge.D`` for a valid host name ``D``, and a
    base64url value."""
    label, dot, rest = name.lower().rstrip(".").partition(".")
    if label != CHALLENGE_LABEL or not dot:
        raise BadChallenge(f"challenge name {name!r} does not start with {CHALLENGE_LABEL}.")
    if not _VALUE.match(value):
        raise BadChallenge(f"challenge value {value!r} is not base64url text")
    return f"{CHALLENGE_LABEL}.{parse_domain(rest).text}", value


def check_answerable(name: str, zones: Iterable[str]) -> None:
    """Raise :class:`BadChallenge` unless challenge ``name`` is in one of ``zones`` (sipzone's),
    so its DNS can answer it."""
    if zone_of(name, zones) is None:
        raise BadChallenge(
            f"{name} is in none of sipzone's zones, so its DNS cannot answer the challenge; "
            "add the zone first (`sipzone zone add`)"
        )


def renewal_due(not_before: datetime, not_after: datetime) -> datetime:
    """When a certificate valid from ``not_before`` to ``not_after`` is renewed."""
    return not_before + (not_after - not_before) * RENEW_AT


def backoff(failures: int, base: timedelta) -> timedelta:
    """How long to wait after the ``failures``-th failure in a row: ``base`` doubling, capped."""
    return min(base * (1 << min(max(failures - 1, 0), 30)), max(BACKOFF_CAP, base))


@dataclass(frozen=True, slots=True)
class AcmeAccount:
    """An account at an ACME CA: its key (PEM; never printed) and its URL there."""

    directory: str
    email: str
    key_pem: str = field(repr=False)
    url: str


@dataclass(frozen=True, slots=True)
class AcmePlan:
    """What a certificate is ordered with: the CA (directory URL), the account's email, the
    domains and the key type."""

    directory: str
    email: str
    domains: tuple[str, ...]
    key_type: str


@dataclass(frozen=True, slots=True)
class AcmeState:
    """A certificate that renews itself, and how its renewals went."""

    plan: AcmePlan
    name: str
    last_renewal: datetime | None
    failures: int
    next_attempt: datetime | None  # after a failure: not before then
    last_error: str | None


def parse_directory(text: str) -> str:
    """An ACME directory URL: ``https://`` (``http://`` only for a CA on this machine)."""
    url = urlsplit(text)
    local = url.hostname in ("localhost", "127.0.0.1", "::1")
    if (url.scheme != "https" and not (url.scheme == "http" and local)) or not url.hostname:
        raise BadURL(f"ACME directory {text!r} is not an https URL such as https://ca.example/dir")
    return text


def parse_account_email(text: str) -> str:
    """The contact address of an ACME account."""
    local, at, domain = text.partition("@")
    if not (local and at) or any(c.isspace() or c in "<>,;:" for c in text):
        raise BadEmail(f"ACME account email {text!r} is not an address such as ops@example.com")
    return f"{local}@{parse_domain(domain).text}"
