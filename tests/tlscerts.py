"""Throwaway certificates for the TLS tests: a trustme CA made at run time, never a key in git."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme

NOW = datetime.now(UTC)
_files = itertools.count(1)


@dataclass(frozen=True)
class Issued:
    """A certificate written as ``cert add`` reads it: the chain file and the key file."""

    chain: Path
    key: Path
    leaf: trustme.LeafCert

    @property
    def serial(self) -> int:
        from cryptography import x509

        return x509.load_pem_x509_certificate(self.leaf.cert_chain_pems[0].bytes()).serial_number


def issue(
    ca: trustme.CA,
    where: Path,
    *names: str,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    key_type: trustme.KeyType = trustme.KeyType.RSA,
) -> Issued:
    """A leaf for ``names`` from ``ca`` written into ``where`` (chain: leaf first); RSA by
    default, as public CAs mostly issue (and ECDHE-RSA suites need)."""
    leaf = ca.issue_cert(
        *names,
        key_type=key_type,
        not_before=not_before or NOW - timedelta(hours=1),
        not_after=not_after or NOW + timedelta(days=90),
    )
    where.mkdir(parents=True, exist_ok=True)
    chain = where / f"{names[0].replace('*', 'star')}-{next(_files)}.pem"
    chain.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    key = chain.with_suffix(".key")
    key.write_bytes(leaf.private_key_pem.bytes())
    return Issued(chain, key, leaf)
