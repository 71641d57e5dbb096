"""Domain names as values: parsed, checked and normalised once, compared as plain strings.

A stored name is its IDNA 2008 / UTS 46 A-label form, lower case, without the trailing dot.
Wildcards are `*` as the whole leftmost label and nowhere else.  Every rejection raises a
subclass of :class:`InvalidName` whose message names the bad part.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from functools import lru_cache

import idna

from sipzone.model.errors import (
    BadCharacter,
    BadHyphen,
    BadIDNA,
    BadWildcard,
    EmptyLabel,
    InvalidName,
    IPLiteral,
    LabelTooLong,
    NameTooLong,
    PublicSuffixWildcard,
    TooFewLabels,
)

MAX_NAME = 253
MAX_LABEL = 63
_LDH = re.compile(r"[a-z0-9-]+\Z")
_NOT_LDH = re.compile(r"[^a-z0-9-]")


@dataclass(frozen=True, slots=True)
class DomainName:
    """An exact, normalised host name such as ``voip.acme.example``."""

    text: str

    @property
    def is_wildcard(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, slots=True)
class WildcardName:
    """``*.B``: admits every name below ``B`` at any depth (RFC 4592), never ``B`` itself."""

    base: DomainName

    @property
    def text(self) -> str:
        return "*." + self.base.text

    @property
    def is_wildcard(self) -> bool:
        return True

    def covers(self, name: str) -> bool:
        return name.endswith("." + self.base.text)

    def __str__(self) -> str:
        return self.text


RuleName = DomainName | WildcardName


def to_unicode(text: str) -> str:
    """Display form of an A-label name; falls back to the stored form if it will not decode."""
    if "xn--" not in text:
        return text
    try:
        return str(idna.decode(text))
    except idna.IDNAError:
        return text


def _check_label(label: str, position: int, original: str) -> None:
    where = f"label {position + 1} of {original!r}"
    if not label:
        raise EmptyLabel(f"{where} is empty (two dots in a row, or a leading dot)")
    if len(label) > MAX_LABEL:
        raise LabelTooLong(f"{where} is {len(label)} octets; a label holds at most {MAX_LABEL}")
    if not _LDH.match(label):
        bad = _NOT_LDH.search(label)
        char = bad.group(0) if bad else "?"
        raise BadCharacter(
            f"label {label!r} has {char!r}; SIP host names allow letters, digits and '-'"
        )
    if label.startswith("-") or label.endswith("-"):
        raise BadHyphen(f"label {label!r} starts or ends with '-'")
    if label[2:4] == "--":
        if not label.startswith("xn--"):
            raise BadHyphen(
                f"label {label!r} has '--' in positions 3-4 but is not an 'xn--' A-label"
            )
        try:
            idna.decode(label)
        except (idna.IDNAError, UnicodeError) as exc:
            raise BadIDNA(f"label {label!r} is not a valid IDNA A-label: {exc}") from None


def _to_ascii(text: str, original: str) -> str:
    if text.isascii():
        return text.lower()
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise BadIDNA(f"{original!r} is not a valid internationalised name: {exc}") from None


def _strip(text: str) -> str:
    text = text.strip()
    if text.endswith("."):
        text = text[:-1]
    return text


@lru_cache(maxsize=4096)
def _parse_host(text: str, original: str) -> DomainName:
    if not text:
        raise EmptyLabel(f"{original!r} is empty")
    if text.startswith("[") or ":" in text:
        raise IPLiteral(f"{original!r} is an IP literal; a SIP domain must be a name")
    try:
        ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        raise IPLiteral(f"{original!r} is an IP address; a SIP domain must be a name")
    if "*" in text:
        raise BadWildcard(
            f"{original!r} has '*' where it is not allowed; a wildcard is '*' as the whole "
            "leftmost label, as in '*.teams.example.com'"
        )
    ascii_text = _to_ascii(text, original)
    labels = ascii_text.split(".")
    for i, label in enumerate(labels):
        _check_label(label, i, original)
    if len(labels) < 2:
        raise TooFewLabels(f"{original!r} has one label; a SIP domain needs at least two")
    if len(ascii_text) > MAX_NAME:
        raise NameTooLong(
            f"{original!r} is {len(ascii_text)} octets; a name holds at most {MAX_NAME}"
        )
    if labels[-1].isdigit():
        raise IPLiteral(f"{original!r} ends in an all-digit label, which no top-level domain is")
    return DomainName(ascii_text)


def parse_domain(text: str) -> DomainName:
    """Parse an exact host name; wildcards are refused."""
    return _parse_host(_strip(text), text)


def parse_rule(text: str) -> RuleName:
    """Parse a rule name as an operator writes it: an exact FQDN or ``*.BASE``."""
    stripped = _strip(text)
    if stripped == "*":
        raise BadWildcard("'*' alone would admit every name; write '*.BASE'")
    if stripped.startswith("*."):
        base_text = stripped[2:]
        if "*" in base_text:
            raise BadWildcard(f"{text!r} has a second '*'; only the leftmost label may be '*'")
        try:
            base = _parse_host(base_text, text)
        except TooFewLabels:
            raise PublicSuffixWildcard(
                f"{text!r} would admit a whole top-level domain; write '*.BASE' with BASE at "
                "least two labels"
            ) from None
        if len(base.text) + 2 > MAX_NAME:
            raise NameTooLong(f"{text!r} is longer than {MAX_NAME} octets")
        if is_public_suffix(base.text):
            raise PublicSuffixWildcard(
                f"'*.{base.text}': {base.text!r} is a public suffix; a wildcard there would "
                "claim names that belong to others"
            )
        return WildcardName(base)
    return _parse_host(stripped, text)


def lookup_key(host: str) -> str:
    """The matcher key for a host as it arrives on the wire (SIP URI host, DNS qname).

    Cheap on purpose: lower case and no trailing dot.  Non-ASCII input takes the IDNA path and
    anything that is not a valid name gives a key no rule can hold.
    """
    if host.isascii():
        key = host.lower()
        return key[:-1] if key.endswith(".") else key
    try:
        return parse_domain(host).text
    except InvalidName:
        return ""


_psl: object | None = None


def is_public_suffix(name: str) -> bool:
    """True when ``name`` is on the Public Suffix List (the list ships with the package)."""
    global _psl
    if _psl is None:
        from publicsuffixlist import PublicSuffixList

        _psl = PublicSuffixList()
    return bool(_psl.is_public(name))  # type: ignore[attr-defined]
