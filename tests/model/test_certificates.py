"""Certificate validation and the SNI choice (model/certificates.py), on a throwaway CA."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import trustme

from sipzone.model.certificates import NameIndex, parse_cert_name, parse_certificate
from sipzone.model.errors import (
    BadCertificate,
    BadPrivateKey,
    BadWord,
    CertificateExpired,
    ChainOrder,
    KeyMismatch,
)
from tests.tlscerts import NOW, issue


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_a_valid_chain_and_key_give_names_issuer_and_validity(
    ca: trustme.CA, tmp_path: Path
) -> None:
    got = issue(ca, tmp_path, "*.Teams.Example.com", "teams.example.com")
    cert = parse_certificate("teams", got.chain.read_bytes(), got.key.read_bytes(), now=NOW)
    assert cert.names == ("*.teams.example.com", "teams.example.com")
    assert cert.serial == got.serial
    assert "trustme" in cert.issuer.lower()
    assert 89 < cert.days_left() <= 90
    assert "PRIVATE KEY" not in cert.chain_pem and "PRIVATE KEY" in cert.key_pem
    assert "PRIVATE" not in repr(cert) and "BEGIN" not in repr(cert)


def test_a_chain_with_an_intermediate_is_accepted_leaf_first_only(
    ca: trustme.CA, tmp_path: Path
) -> None:
    child = ca.create_child_ca()
    got = issue(child, tmp_path, "voip.example.com")
    pems = [blob.bytes() for blob in got.leaf.cert_chain_pems]
    assert len(pems) == 2
    key = got.key.read_bytes()
    assert parse_certificate("voip", b"".join(pems), key, now=NOW).names == ("voip.example.com",)
    with pytest.raises(ChainOrder, match=r"certificate 1 .* is not issued by certificate 2"):
        # the right key, the wrong issuer after the leaf
        parse_certificate("voip", pems[0] + ca.cert_pem.bytes(), key, now=NOW)
    with pytest.raises(KeyMismatch):
        parse_certificate("voip", pems[1] + pems[0], key, now=NOW)


def test_a_key_of_another_certificate_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    one = issue(ca, tmp_path, "a.example.com")
    two = issue(ca, tmp_path, "b.example.com")
    with pytest.raises(KeyMismatch, match="does not belong"):
        parse_certificate("a", one.chain.read_bytes(), two.key.read_bytes(), now=NOW)


def test_expired_and_not_yet_valid_are_refused_on_add_but_read_back(
    ca: trustme.CA, tmp_path: Path
) -> None:
    old = issue(
        ca, tmp_path, "old.example.com",
        not_before=NOW - timedelta(days=30), not_after=NOW - timedelta(days=1),
    )  # fmt: skip
    with pytest.raises(CertificateExpired, match="not now"):
        parse_certificate("old", old.chain.read_bytes(), old.key.read_bytes(), now=NOW)
    future = issue(ca, tmp_path, "new.example.com", not_before=NOW + timedelta(days=1))
    with pytest.raises(CertificateExpired):
        parse_certificate("new", future.chain.read_bytes(), future.key.read_bytes(), now=NOW)
    stored = parse_certificate("old", old.chain.read_bytes(), old.key.read_bytes())
    assert stored.days_left() < 0


@pytest.mark.parametrize(
    ("chain", "key", "error"),
    [
        (b"", None, BadCertificate),
        (b"not a pem at all", None, BadCertificate),
        (None, b"", BadPrivateKey),
        (None, b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", BadPrivateKey),
        (b"x" * 300_000, None, BadCertificate),
    ],
)
def test_files_without_pem_are_refused_without_quoting_the_key(
    ca: trustme.CA, tmp_path: Path, chain: bytes | None, key: bytes | None, error: type
) -> None:
    good = issue(ca, tmp_path, "x.example.com")
    with pytest.raises(error) as caught:
        parse_certificate(
            "x",
            good.chain.read_bytes() if chain is None else chain,
            good.key.read_bytes() if key is None else key,
            now=NOW,
        )
    assert "AAAA" not in str(caught.value)


def test_an_encrypted_key_is_refused(ca: trustme.CA, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    good = issue(ca, tmp_path, "x.example.com")
    private = serialization.load_pem_private_key(good.key.read_bytes(), None)
    encrypted = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    with pytest.raises(BadPrivateKey, match="encrypted"):
        parse_certificate("x", good.chain.read_bytes(), encrypted, now=NOW)


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 101, "ä"])
def test_certificate_names_are_words(name: str) -> None:
    with pytest.raises(BadWord):
        parse_cert_name(name)


INDEX = NameIndex(
    [
        (("voip.example.com", "*.example.com"), "first"),
        (("*.teams.example.com", "teams.example.com"), "teams"),
        (("*.example.com", "cust42.teams.example.com"), "second"),
    ]
)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("voip.example.com", "first"),
        ("VOIP.Example.COM.", "first"),  # case and the trailing dot do not matter
        ("cust42.teams.example.com", "second"),  # exact beats wildcard, whoever added it
        ("cust43.teams.example.com", "teams"),
        ("CUST43.Teams.Example.Com", "teams"),
        ("teams.example.com", "teams"),
        ("a.b.teams.example.com", None),  # one label only (RFC 6125)
        ("other.example.com", "first"),  # the first entry naming *.example.com wins
        ("example.com", None),  # a wildcard does not cover its base
        (".example.com", None),
        ("", None),
        (None, None),
    ],
)
def test_sni_choice_exact_then_one_label_wildcard(host: str | None, expected: str | None) -> None:
    assert INDEX.get(host) == expected
