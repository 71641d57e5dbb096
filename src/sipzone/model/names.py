"""Domain names as values: parsed, checked and normalised once, compared as plain strings.

A stored name is its IDNA 2008 / UTS 46 A-label form, lower case, without the trailing dot.
Wildcards are `*` as the whole leftmost label and nowhere else.  Every rejection raises a
subclass of :class:`InvalidName` whose message names the bad part.

Two limits come from what the DNS builds on a name: it publishes ``_sips._tcp.D`` (and
``_sip._tcp.D``, ``_sip._udp.D``) for every SIP domain D and ``hostmaster.Z`` in the SOA of
every zone Z, so D and Z must leave room for that prefix within 255 octets on the wire.  And
every label must be written in one script (UTS 39 §5.1), so that ``paypal`` spelt with a
Cyrillic ``a`` (U+0430) cannot pass for the real one.
"""

from __future__ import annotations

import ipaddress
import re
from bisect import bisect_right
from collections.abc import Sequence
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
    MixedScript,
    NameTooLong,
    NoRoomForServiceNames,
    PublicSuffixWildcard,
    TooFewLabels,
)
from sipzone.model.scriptdata import SETS, STARTS, VALUES

MAX_NAME = 253  # octets in text without the final dot: 255 on the wire (RFC 1035 §2.3.4)
MAX_LABEL = 63
# The longest prefix the DNS puts before a SIP domain D (sipzone.dns.records.SERVICES) and
# before a zone Z (the SOA's rname); both must fit, so D and Z are that much shorter.
SERVICE_PREFIX = "_sips._tcp."
ZONE_PREFIX = "hostmaster."
# A rule `*.B` admits `x.B`, which is as long as the rule text, so one limit serves both kinds.
MAX_SIP_DOMAIN = MAX_NAME - len(SERVICE_PREFIX)
MAX_ZONE = MAX_NAME - len(ZONE_PREFIX)
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
    if text.startswith("*."):  # IDNA decodes no '*' label
        return "*." + to_unicode(text[2:])
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
            ulabel = idna.decode(label)
        except (idna.IDNAError, UnicodeError) as exc:
            raise BadIDNA(f"label {label!r} is not a valid IDNA A-label: {exc}") from None
        _check_script(ulabel, label)


_ANY_SCRIPT = frozenset({"Zyyy", "Zinh"})  # Common, Inherited: compatible with every script


@lru_cache(maxsize=8192)
def _scripts(char: str) -> frozenset[str] | None:
    """The augmented Script_Extensions of ``char`` (UTS 39 §5.1); None means any script."""
    codes = frozenset(SETS[VALUES[bisect_right(STARTS, ord(char)) - 1]].split())
    if codes <= _ANY_SCRIPT:
        return None
    # Writing systems that mix scripts by nature count as one (Japanese, Korean, Chinese).
    extra: set[str] = set()
    if "Hani" in codes:
        extra |= {"Hanb", "Jpan", "Kore"}
    if codes & {"Hira", "Kana"}:
        extra.add("Jpan")
    if "Hang" in codes:
        extra.add("Kore")
    if "Bopo" in codes:
        extra.add("Hanb")
    return codes | extra


def _check_script(ulabel: str, alabel: str) -> None:
    """Refuse a label whose characters share no script (UTS 39 "single script")."""
    resolved: frozenset[str] | None = None
    for char in ulabel:
        scripts = _scripts(char)
        if scripts is None:
            continue
        if resolved is not None and not resolved & scripts:
            raise MixedScript(
                f"label {ulabel!r} ({alabel}) mixes scripts: {char!r} (U+{ord(char):04X}, "
                f"{'/'.join(sorted(scripts))}) next to {'/'.join(sorted(resolved))}; a label "
                "must be written in one script, so that it cannot pass for another name"
            )
        resolved = scripts if resolved is None else resolved & scripts


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
    if text[-1].isdigit():  # every IPv4 form does; skipping the rest saves a third of a parse
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
    """Parse an exact host name (a site host, an MX, a name to check); wildcards are refused."""
    return _parse_host(_strip(text), text)


def _room_for_services(name: str, original: str) -> None:
    if len(name) > MAX_SIP_DOMAIN:
        raise NoRoomForServiceNames(
            f"{original!r} is {len(name)} octets; a SIP domain holds at most {MAX_SIP_DOMAIN}, "
            f"because the DNS publishes '{SERVICE_PREFIX}' + the name (RFC 3263 SRV) and a "
            f"name holds at most {MAX_NAME} octets"
        )


def parse_zone(text: str) -> DomainName:
    """Parse a zone name: a host name short enough for the SOA's ``hostmaster.ZONE``."""
    zone = parse_domain(text)
    if len(zone.text) > MAX_ZONE:
        raise NoRoomForServiceNames(
            f"{text!r} is {len(zone.text)} octets; a zone holds at most {MAX_ZONE}, because "
            f"its SOA names '{ZONE_PREFIX}' + the zone and a name holds at most {MAX_NAME} octets"
        )
    return zone


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
        _room_for_services("*." + base.text, text)
        if is_public_suffix(base.text):
            raise PublicSuffixWildcard(
                f"'*.{base.text}': {base.text!r} is a public suffix; a wildcard there would "
                "claim names that belong to others"
            )
        return WildcardName(base)
    name = _parse_host(stripped, text)
    _room_for_services(name.text, text)
    return name


# What a stored rule may look like, checked on store reads: what the DNS and the matcher rely
# on (label and name lengths, no empty label, LDH, '*' only as the whole first label).  Policy
# that data files can change (the Public Suffix List, Unicode's scripts) and the finer syntax
# (hyphen placement, A-label validity) are checked when a rule is written, not when it is read,
# so an upgrade never silently drops a customer's working domain.
_STORED_NAME = re.compile(r"(?:[a-z0-9-]{1,63}\.)+[a-z0-9-]{1,63}\Z")
_STORED_RULE = re.compile(r"(?:\*\.)?(?:[a-z0-9-]{1,63}\.)+[a-z0-9-]{1,63}\Z")
_STORED_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789.-*\n"
_ALL_BUT_DOT_AND_NEWLINE = bytes(b for b in range(256) if b not in b".\n")


def check_stored_rule(text: str) -> None:
    """Raise :class:`InvalidName` unless ``text`` is shaped like a rule sipzone stores."""
    if len(text) <= MAX_SIP_DOMAIN and _STORED_RULE.match(text):
        return
    parse_rule(text)  # raises with the precise reason, when there is one
    raise InvalidName(f"{text!r} is not a rule in the stored form (lower case A-labels)")


def check_stored_name(text: str, limit: int = MAX_NAME) -> None:
    """Like :func:`check_stored_rule` for an exact name of at most ``limit`` octets (a zone,
    a site host, the email domain)."""
    if len(text) <= limit and _STORED_NAME.match(text):
        return
    parse_domain(text)
    if len(text) > limit:
        raise NoRoomForServiceNames(f"{text!r} is {len(text)} octets; here at most {limit}")
    raise InvalidName(f"{text!r} is not a name in the stored form (lower case A-labels)")


def _plausibly_all_stored(texts: Sequence[str]) -> bool:
    """True only if every text passes :func:`check_stored_rule`; False means "look closer".

    A million rules are read at every server start, so this tests the whole list with a few
    passes in C (lengths, bytes, substrings) instead of one pattern per name.
    """
    if not texts:
        return True
    longest = max(map(len, texts))
    if longest > MAX_SIP_DOMAIN:
        return False
    try:
        blob = "\n".join(texts).encode("ascii")
    except UnicodeEncodeError:
        return False
    if blob.translate(None, _STORED_BYTES) or blob[:1] == b"." or blob[-1:] == b".":
        return False
    if b".." in blob or b"\n." in blob or b".\n" in blob or b"\n\n" in blob:
        return False
    stars = blob.count(b"*")
    if stars and (stars != blob.count(b"\n*.") + blob.startswith(b"*.") or b"*.*" in blob):
        return False
    if b"\n\n" in b"\n" + blob.translate(None, _ALL_BUT_DOT_AND_NEWLINE) + b"\n":
        return False  # a single-label name
    # A label of more than 63 octets needs a name longer than that: look at those alone.
    return longest <= MAX_LABEL or all(_STORED_RULE.match(t) for t in texts if len(t) > MAX_LABEL)


def invalid_stored_rules(texts: Sequence[str]) -> list[tuple[str, InvalidName]]:
    """The texts that fail :func:`check_stored_rule`, with the reason; fast when there are none."""
    if _plausibly_all_stored(texts):
        return []
    bad: list[tuple[str, InvalidName]] = []
    for text in texts:
        try:
            check_stored_rule(text)
        except InvalidName as exc:
            bad.append((text, exc))
    return bad


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
