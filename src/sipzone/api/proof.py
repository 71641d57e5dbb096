"""Proof of control of a claimed name: a TXT record ``_sipzone-challenge.NAME`` holding the
challenge sipzone gave out, looked up through an ordinary resolver (as Microsoft 365 and
Google Workspace verify custom domains).  For a wildcard ``*.B`` the record sits at
``_sipzone-challenge.B``."""

from __future__ import annotations

import dns.exception
import dns.resolver

from sipzone.model.errors import ProofFailed
from sipzone.net import split_hostport

CHALLENGE_LABEL = "_sipzone-challenge"
LOOKUP_TIMEOUT = 5.0  # seconds for the whole lookup


def challenge_name(rule: str) -> str:
    """Where the TXT proof for rule ``rule`` (normalised text) must be published."""
    return f"{CHALLENGE_LABEL}.{rule.removeprefix('*.')}"


def txt_strings(name: str, resolver: str | None = None) -> list[str]:
    """The TXT strings at ``name`` (each record's strings joined), through ``resolver``
    (HOST:PORT; None: the system's).  No such name or record gives []; a resolver that cannot
    be reached raises :class:`ProofFailed`."""
    res = dns.resolver.Resolver(configure=resolver is None)
    if resolver is not None:
        host, port = split_hostport(resolver)
        res.nameservers = [host]
        res.port = port
    res.lifetime = LOOKUP_TIMEOUT
    res.cache = None
    try:
        answer = res.resolve(name, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except dns.exception.DNSException as exc:
        raise ProofFailed(f"the TXT lookup of {name} failed: {exc}") from None
    return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer]
