"""TLS certificates as the store keeps them: what a valid one is, and which one a name gets.

Theory of operation.  ``cert add`` hands :func:`parse_certificate` a PEM chain and a PEM key;
it refuses (each failure its own exception class) a file without a certificate, a key that is
encrypted or does not belong to the first certificate, a chain whose certificates are not each
issued by the next (leaf first, as TLS sends them) and a certificate outside its validity.  What
it returns, :class:`Certificate`, is the chain re-written as certificates only (whatever else
the file held is not kept), the key, and what operators and the SNI choice need: the DNS names
covered (subjectAltName; the subject's common name only when there is none), issuer, serial,
validity.  Reads use the same function without the clock: an expired certificate already stored
keeps serving (with a log line and its days left going negative in the metrics) rather than
leaving a listener with none.

Which certificate answers a server name (SNI) is :class:`NameIndex`: an exact name first, then
a wildcard ``*.B`` covering exactly one label more than ``B`` (RFC 6125 §6.4.3: ``*.teams.
example.com`` covers ``cust42.teams.example.com``, not ``a.b.teams.example.com`` nor
``teams.example.com``), case-insensitively; no name, or no match, gets the default.  Among
certificates covering the same name the default wins, then the one added first.

This module uses ``cryptography`` for X.509 (parsing is no I/O); the private key is a field
``repr`` never shows, and no error message quotes it.
"""

from __future__ import annotations

import hashlib
import itertools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Generic, TypeVar

from sipzone.model.errors import (
    BadCertificate,
    BadPrivateKey,
    BadWord,
    CertificateExpired,
    ChainOrder,
    KeyMismatch,
)

if TYPE_CHECKING:
    from cryptography import x509

MAX_CERT_NAME = 100
_CERT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_CERT_NAME - 1}}}\Z")
MAX_PEM = 256 * 1024  # a chain of a dozen certificates is 20 kB; anything far larger is no PEM

T = TypeVar("T")


def parse_cert_name(text: str) -> str:
    """The name a certificate is stored under: a word such as ``teams`` or ``voip-2026``."""
    if not _CERT_NAME.match(text):
        raise BadWord(
            f"certificate name {text!r} must be a word of letters, digits and '_.-' "
            f"(at most {MAX_CERT_NAME})"
        )
    return text


@dataclass(frozen=True, slots=True)
class Certificate:
    """One stored certificate: its chain (PEM, leaf first), its key and what it says."""

    name: str
    chain_pem: str = field(repr=False)
    key_pem: str = field(repr=False)  # never printed, never logged
    names: tuple[str, ...]  # DNS names covered, lower case, as written (``*.b`` included)
    subject: str
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    fingerprint: str  # SHA-256 of the leaf (DER), hex

    def days_left(self, now: datetime | None = None) -> float:
        """Days until not-after (negative once expired)."""
        now = now or datetime.now(UTC)
        return (self.not_after - now).total_seconds() / 86400

    def covers(self, host: str) -> bool:
        """Whether ``host`` (any case, trailing dot allowed) is one of :attr:`names` or under
        one of its one-label wildcards."""
        return NameIndex([(self.names, True)]).get(host) is not None


def _pem(data: str | bytes, what: str, error: type[Exception]) -> bytes:
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    if len(raw) > MAX_PEM:
        raise error(f"the {what} file is {len(raw)} bytes; a PEM {what} is far smaller")
    return raw


def _names(leaf: x509.Certificate) -> tuple[str, ...]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        found = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        found = [
            str(attr.value) for attr in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        ]
    return tuple(dict.fromkeys(name.lower().rstrip(".") for name in found))


def parse_certificate(
    name: str, chain: str | bytes, key: str | bytes, now: datetime | None = None
) -> Certificate:
    """The certificate ``name`` from a PEM ``chain`` (leaf first) and a PEM ``key``; each
    problem raises its own :class:`~sipzone.model.errors.InvalidValue`.  ``now`` None skips
    the validity check (reading what is stored), else the whole chain must be valid then."""
    # Imported here: a snapshot and the CLI's start need only the values, not the parser.
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    name = parse_cert_name(name)
    try:
        certs = x509.load_pem_x509_certificates(_pem(chain, "certificate", BadCertificate))
    except ValueError as exc:
        raise BadCertificate(f"the certificate file holds no PEM certificate ({exc})") from None
    try:
        private = serialization.load_pem_private_key(_pem(key, "key", BadPrivateKey), password=None)
    except TypeError:
        raise BadPrivateKey("the key is encrypted; give it without a passphrase") from None
    except (ValueError, UnsupportedAlgorithm):
        # The library's message could quote the key's bytes: say only what kind of problem.
        raise BadPrivateKey("the key file holds no PEM private key sipzone can use") from None
    leaf = certs[0]
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if private.public_key().public_bytes(der, spki) != leaf.public_key().public_bytes(der, spki):
        raise KeyMismatch(
            f"the key does not belong to the certificate for {leaf.subject.rfc4514_string()!r} "
            "(the first certificate in the file)"
        )
    for position, (cert, issuer) in enumerate(itertools.pairwise(certs), start=1):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            raise ChainOrder(
                f"certificate {position} ({cert.subject.rfc4514_string()!r}) is not issued by "
                f"certificate {position + 1} ({issuer.subject.rfc4514_string()!r}); give the "
                "chain leaf first, each certificate followed by its issuer"
            ) from None
    if now is not None:
        for position, cert in enumerate(certs, start=1):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise CertificateExpired(
                    f"certificate {position} ({cert.subject.rfc4514_string()!r}) is valid from "
                    f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, not now"
                )
    names = _names(leaf)
    if not names:
        raise BadCertificate(
            f"the certificate for {leaf.subject.rfc4514_string()!r} names no DNS name "
            "(subjectAltName or common name)"
        )
    pem = serialization.Encoding.PEM
    return Certificate(
        name=name,
        chain_pem="".join(c.public_bytes(pem).decode("ascii") for c in certs),
        key_pem=_pem(key, "key", BadPrivateKey).decode("ascii", "replace"),
        names=names,
        subject=leaf.subject.rfc4514_string(),
        issuer=leaf.issuer.rfc4514_string(),
        serial=leaf.serial_number,
        not_before=leaf.not_valid_before_utc,
        not_after=leaf.not_valid_after_utc,
        fingerprint=hashlib.sha256(leaf.public_bytes(der)).hexdigest(),
    )


class NameIndex(Generic[T]):
    """Which value a server name gets: exact names first, then one-label wildcards; built from
    ``(names, value)`` pairs in order of preference (the first pair naming a name wins)."""

    __slots__ = ("_exact", "_wildcard")

    def __init__(self, entries: Iterable[tuple[Iterable[str], T]]) -> None:
        self._exact: dict[str, T] = {}
        self._wildcard: dict[str, T] = {}  # base ("teams.example.com") -> value
        for names, value in entries:
            for name in names:
                name = name.lower().rstrip(".")
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], value)
                elif "*" not in name:
                    self._exact.setdefault(name, value)

    def get(self, host: str | None) -> T | None:
        """The value for ``host`` (any case, trailing dot allowed), or None."""
        if not host:
            return None
        host = host.lower().rstrip(".")
        found = self._exact.get(host)
        if found is None:
            label, dot, base = host.partition(".")
            if dot and label and base:
                found = self._wildcard.get(base)
        return found
