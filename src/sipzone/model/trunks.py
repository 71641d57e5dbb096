"""Trunks: the external SIP services the edge keeps alive and sends calls to (Microsoft Teams
Direct Routing, a carrier), as values.

Theory of operation.  A trunk is a name, its *targets* (SIP URIs, in failover order: the first
that is up takes the calls), the *base* FQDN we stand for toward it (the carrier trunk name
that the Contact of our OPTIONS carries, and the name our TLS certificate for it must cover),
how often each target gets an OPTIONS, and a *profile*: ``teams`` applies Microsoft's rules
(targets over TLS, customer FQDNs in Contact and Record-Route, ``X-MS-SBC``); ``sip`` is a
plain trunk.  Everything is checked here, once, when it is written; the edge only reads.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sipzone.model.errors import BadSipURI, BadText, BadWord, OutOfRange
from sipzone.model.names import parse_domain
from sipzone.model.tenancy import parse_upstream

PROFILES = ("sip", "teams")
MAX_TARGETS = 8
MIN_INTERVAL, MAX_INTERVAL = 2, 3600  # seconds between OPTIONS to a target
DEFAULT_INTERVAL = 60  # Microsoft demotes an SBC silent for three minutes; it asks for one
MAX_TRUNK_NAME = 100
MAX_SBC_HEADER = 200
_TRUNK_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_TRUNK_NAME - 1}}}\Z")
_TRANSPORT = re.compile(r";transport=([a-z]+)", re.IGNORECASE)
_PRINTABLE = re.compile(r"[\x20-\x7e]+\Z")


@dataclass(frozen=True, slots=True)
class Trunk:
    """One trunk as stored."""

    name: str
    targets: tuple[str, ...]  # sip: URIs, failover order
    base: str  # the carrier FQDN (A-labels, lower case)
    options_interval: int = DEFAULT_INTERVAL
    profile: str = "sip"
    sbc_header: str | None = None  # X-MS-SBC value; None: sipzone's own

    @property
    def teams(self) -> bool:
        return self.profile == "teams"


@dataclass(frozen=True, slots=True)
class TrunkState:
    """What an edge last saw of one trunk target."""

    trunk: str
    target: str
    up: bool
    last_response: str  # "200 OK", "503 Service Unavailable", "timeout", "connect failed: ..."
    latency_ms: float | None  # of the last answer
    checked_at: datetime
    changed_at: datetime  # when ``up`` last changed
    unavailable_until: datetime | None = None  # a 503's Retry-After


def parse_trunk_name(text: str) -> str:
    """The name a trunk is stored under: a word such as ``teams`` or ``carrier-1``."""
    if not _TRUNK_NAME.match(text):
        raise BadWord(
            f"trunk name {text!r} must be a word of letters, digits and '_.-' "
            f"(at most {MAX_TRUNK_NAME})"
        )
    return text


def parse_target(text: str, profile: str) -> str:
    """One target URI; under the ``teams`` profile it must say ``;transport=tls`` (Microsoft
    speaks SIP over TLS only, and never takes a ``sips:`` URI)."""
    uri = parse_upstream(text)
    if "@" in uri.split(";", 1)[0]:
        raise BadSipURI(f"trunk target {uri!r} names a user; give sip:HOST[:PORT];transport=...")
    transport = _TRANSPORT.search(uri)
    if profile == "teams":
        if uri.lower().startswith("sips:"):
            raise BadSipURI(f"trunk target {uri!r}: Microsoft does not accept sips: URIs")
        if transport is None or transport.group(1).lower() != "tls":
            raise BadSipURI(
                f"trunk target {uri!r}: the teams profile needs ;transport=tls, such as "
                "sip:sip.pstnhub.microsoft.com:5061;transport=tls"
            )
    return uri


def parse_trunk(
    name: str,
    targets: list[str] | tuple[str, ...],
    base: str,
    options_interval: int = DEFAULT_INTERVAL,
    profile: str = "sip",
    sbc_header: str | None = None,
) -> Trunk:
    """A :class:`Trunk` from what an operator typed; a sipzone error naming the bad part."""
    name = parse_trunk_name(name)
    if profile not in PROFILES:
        raise BadWord(f"trunk profile {profile!r}: give one of {', '.join(PROFILES)}")
    if not targets:
        raise BadSipURI("a trunk needs at least one --target URI")
    if len(targets) > MAX_TARGETS:
        raise OutOfRange(f"a trunk holds at most {MAX_TARGETS} targets, not {len(targets)}")
    parsed = tuple(parse_target(t, profile) for t in targets)
    if len(set(parsed)) != len(parsed):
        raise BadSipURI("a trunk target is given twice")
    if not MIN_INTERVAL <= options_interval <= MAX_INTERVAL:
        raise OutOfRange(
            f"--options-interval {options_interval}: give {MIN_INTERVAL} to {MAX_INTERVAL} seconds"
        )
    if sbc_header is not None and (
        len(sbc_header) > MAX_SBC_HEADER or not _PRINTABLE.match(sbc_header)
    ):
        raise BadText(f"X-MS-SBC value: printable ASCII on one line, at most {MAX_SBC_HEADER}")
    return Trunk(
        name, parsed, parse_domain(base).text, options_interval, profile, sbc_header or None
    )


def trunk_json(trunk: Trunk, seen: Iterable[tuple[str, TrunkState]]) -> dict[str, Any]:
    """``trunk list --json``: the trunk, and per target what each node saw (``seen``: (node,
    state) pairs of any trunk)."""
    states: dict[str, list[dict[str, object]]] = {t: [] for t in trunk.targets}
    for node, state in seen:
        if state.trunk == trunk.name and state.target in states:
            until = state.unavailable_until
            states[state.target].append(
                {
                    "node": node,
                    "state": "up" if state.up else "down",
                    "last_response": state.last_response,
                    "latency_ms": state.latency_ms,
                    "checked_at": state.checked_at.isoformat(),
                    "changed_at": state.changed_at.isoformat(),
                    "unavailable_until": until.isoformat() if until else None,
                }
            )
    return {
        "name": trunk.name,
        "base": trunk.base,
        "profile": trunk.profile,
        "options_interval": trunk.options_interval,
        "sbc_header": trunk.sbc_header,
        "targets": [{"uri": t, "state": states[t]} for t in trunk.targets],
    }
