"""TLS for the SIP edge: a server context per stored certificate, chosen by the server name a
client asks for (SNI), replaced whole when the snapshot's certificates change; and the context
for connections we open.

Theory of operation.  Every TLS connection starts on one *dispatcher* context that holds no
certificate.  OpenSSL calls its ``sni_callback`` for every ClientHello (with ``None`` when the
client sent no name), and the callback moves the connection to the context of the certificate
that :class:`~sipzone.model.certificates.NameIndex` picks (exact name, then one-label wildcard,
case-insensitive), or of the default certificate.  The callback reads whatever :meth:`update`
built last, so a certificate added or replaced in the store serves the next handshake after
the snapshot arrives; a connection already established keeps the context it was given.

Every context, the dispatcher included, gets the same :class:`TlsPolicy`: TLS 1.2 and 1.3
only, the cipher list, no compression or renegotiation, and the client-certificate check with
its CA.  They must agree, because switching a connection's context in the callback keeps the
verification mode of the context it started on but takes the trust store of the new one: a
check enforced on one context and not on another is how client certificates went unchecked for
SNI-selected domains elsewhere (OpenSSIPS PR #4115).

Connections we open (to an upstream with ``transport=tls``, or back to a client) verify the
server's certificate against the host name we connect to (the configured upstream's name, else
its address), send that name as SNI, and present the default certificate, or, for a trunk,
the certificate that covers the name we stand for toward it (:meth:`TlsContexts.client_for`:
exact, then one-label wildcard, as for SNI).

Keys reach OpenSSL through an anonymous in-memory file (``memfd``), never a file on disk.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sipzone.model.certificates import Certificate, NameIndex

VERIFY_CLIENT = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}
# TLS 1.2 suites: forward secret, AEAD only; includes what Microsoft Teams Direct Routing asks
# for (ECDHE-RSA with AES-GCM).  TLS 1.3 suites are OpenSSL's (all AEAD).
DEFAULT_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"


@dataclass(frozen=True)
class TlsPolicy:
    """What every TLS context of the edge enforces (``serve --tls-...``)."""

    ciphers: str = DEFAULT_CIPHERS
    verify_client: str = "none"  # none, optional or required
    client_ca: str | None = None  # PEM file of the CAs client certificates must chain to
    upstream_ca: str | None = None  # PEM file of the CAs servers we connect to chain to

    def check(self) -> None:
        """ValueError naming what is wrong (the CLI checks ``serve`` options with it)."""
        if self.verify_client not in VERIFY_CLIENT:
            raise ValueError(
                f"--tls-verify-client {self.verify_client!r}: give none, optional or required"
            )
        if self.verify_client != "none" and not self.client_ca:
            raise ValueError(f"--tls-verify-client {self.verify_client} needs --tls-client-ca FILE")
        try:
            self.server_context()
            self.client_context()
        except (ssl.SSLError, OSError) as exc:
            raise ValueError(f"TLS settings refused: {exc}") from None

    def _common(self, context: ssl.SSLContext) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.maximum_version = ssl.TLSVersion.TLSv1_3
        context.set_ciphers(self.ciphers)
        context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
        return context

    def server_context(self, certificate: Certificate | None = None) -> ssl.SSLContext:
        """A server context with this policy and, when given, ``certificate`` loaded."""
        context = self._common(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))
        context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        if self.client_ca:
            context.load_verify_locations(cafile=self.client_ca)
        context.verify_mode = VERIFY_CLIENT[self.verify_client]
        if certificate is not None:
            load_certificate(context, certificate)
        return context

    def client_context(self, certificate: Certificate | None = None) -> ssl.SSLContext:
        """A client context: the server's certificate checked against the name we connect to
        (and the CAs of ``upstream_ca``, else the system's); ``certificate`` presented."""
        context = self._common(ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT))
        if self.upstream_ca:
            context.load_verify_locations(cafile=self.upstream_ca)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if certificate is not None:
            load_certificate(context, certificate)
        return context


@contextlib.contextmanager
def _in_memory(data: bytes) -> Iterator[str]:
    """A path OpenSSL can read ``data`` from: an anonymous memory file on Linux, else a
    temporary file readable by us alone, removed at once."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("sipzone-tls", os.MFD_CLOEXEC)
        try:
            with open(fd, "wb", closefd=False) as out:
                out.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="sipzone-tls-") as out:  # mode 0600
        out.write(data)
        out.flush()
        yield out.name


def load_certificate(context: ssl.SSLContext, certificate: Certificate) -> None:
    """Load ``certificate``'s chain and key into ``context`` without writing them to disk."""
    with _in_memory((certificate.chain_pem + certificate.key_pem).encode("ascii")) as path:
        context.load_cert_chain(path)


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a verified peer certificate says, for the edge policy and the logs."""

    subject: str  # "commonName=sip.pstnhub.microsoft.com, organizationName=..."
    names: tuple[str, ...]  # subjectAltName DNS names

    @classmethod
    def of(cls, tls: ssl.SSLObject) -> PeerCertificate | None:
        """The verified certificate of the peer on ``tls``; None when it sent none (or it was
        not asked for one)."""
        cert: dict[str, Any] | None = tls.getpeercert()
        if not cert:
            return None
        subject = ", ".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
        names = tuple(v for k, v in cert.get("subjectAltName", ()) if k == "DNS")
        return cls(subject, names)


def _fingerprints(certificates: tuple[Certificate, ...]) -> tuple[tuple[str, str], ...]:
    return tuple((c.name, c.fingerprint) for c in certificates)


class TlsContexts:
    """The edge's TLS contexts for one worker; :meth:`update` on every new snapshot."""

    def __init__(self, policy: TlsPolicy) -> None:
        self.policy = policy
        self.dispatcher = policy.server_context()
        self.dispatcher.sni_callback = self._choose
        self._index: NameIndex[ssl.SSLContext] = NameIndex(())
        self._default: ssl.SSLContext | None = None
        self._client: ssl.SSLContext | None = None
        self._by_name: NameIndex[Certificate] = NameIndex(())
        self._clients: dict[str, ssl.SSLContext] = {}  # by certificate name, built on demand
        self._built: tuple[tuple[str, str], ...] | None = None
        self.certificates: tuple[Certificate, ...] = ()

    @property
    def has_certificate(self) -> bool:
        return self._default is not None

    def update(self, certificates: tuple[Certificate, ...]) -> bool:
        """Build contexts for ``certificates`` (the default first) unless they are the ones
        built last; True when they changed.  Established connections keep theirs."""
        built = _fingerprints(certificates)
        if built == self._built:
            return False
        contexts = [(c.names, self.policy.server_context(c)) for c in certificates]
        self._index = NameIndex(contexts)
        self._default = contexts[0][1] if contexts else None
        self._client = None  # built again, with the new default, when next needed
        self._by_name = NameIndex((c.names, c) for c in certificates)
        self._clients = {}
        self.certificates = certificates
        self._built = built
        return True

    def _choose(
        self, tls: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _context: ssl.SSLContext
    ) -> int | None:
        chosen = self._index.get(server_name) or self._default
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_HANDSHAKE_FAILURE  # no certificate stored at all
        tls.context = chosen
        return None

    def client(self) -> ssl.SSLContext:
        """The context for connections we open, presenting the default certificate."""
        if self._client is None:
            default = self.certificates[0] if self.certificates else None
            self._client = self.policy.client_context(default)
        return self._client

    def client_for(self, name: str) -> ssl.SSLContext:
        """The context for connections we open as ``name`` (a trunk's base FQDN): it presents
        the certificate that covers ``name``, else the default one."""
        certificate = self._by_name.get(name)
        if certificate is None:
            return self.client()
        context = self._clients.get(certificate.name)
        if context is None:
            context = self._clients[certificate.name] = self.policy.client_context(certificate)
        return context
