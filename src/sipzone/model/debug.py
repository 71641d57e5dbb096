"""Runtime debug switches: log every SIP message or DNS query of one peer or name, for a while.

An operator chasing one customer's trouble turns a switch on with ``sipzone debug sip --peer
192.0.2.7`` (or ``dns --name cust42.example.com``); it is a setting in the store, so it reaches
every node through the change feed like any other change, and it ends by itself at ``until``
(or with ``sipzone debug off``).  One switch per kind (SIP, DNS) at a time: a new one replaces
the old.  This module holds the value and its stored form; ``sipzone.logs.Trace`` does the
logging.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from sipzone.model.errors import InvalidValue
from sipzone.model.names import parse_domain

KINDS = ("sip", "dns")
SETTING_PREFIX = "debug_"  # the setting of kind K is "debug_K"
DEFAULT_SECONDS = 600
MAX_SECONDS = 24 * 3600  # a forgotten switch must not log for ever
_DURATION = re.compile(r"^(?P<n>[0-9]{1,6})(?P<unit>[smh]?)$")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600}


@dataclass(frozen=True, slots=True)
class DebugSwitch:
    """Log messages of ``kind`` from or to ``peer`` (an IP address), or naming ``name``."""

    kind: str
    until: float  # Unix time it ends
    peer: str | None = None
    name: str | None = None
    full: bool = False  # the whole message, not only its summary line

    def setting(self) -> tuple[str, str]:
        """The (key, value) the store keeps it as."""
        value = {"until": self.until, "peer": self.peer, "name": self.name, "full": self.full}
        return setting_key(self.kind), json.dumps(value, sort_keys=True)

    def describe(self) -> str:
        who = f"peer {self.peer}" if self.peer else f"name {self.name}"
        return f"{self.kind} {who}" + (" (whole messages)" if self.full else "")


def setting_key(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidValue(f"debug kind {kind!r}: use one of {', '.join(KINDS)}")
    return SETTING_PREFIX + kind


def is_switch_setting(key: str) -> bool:
    return key.startswith(SETTING_PREFIX)


def parse_duration(text: str) -> int:
    """Seconds of a duration such as ``90``, ``90s``, ``10m`` or ``2h`` (at most a day)."""
    match = _DURATION.match(text.strip().lower())
    if match is None:
        raise InvalidValue(f"duration {text!r}: write it as 90s, 10m or 2h")
    seconds = int(match["n"]) * _UNIT[match["unit"]]
    if not 0 < seconds <= MAX_SECONDS:
        raise InvalidValue(f"duration {text!r}: from 1s to {MAX_SECONDS // 3600}h")
    return seconds


def new_switch(
    kind: str,
    now: float,
    seconds: int,
    *,
    peer: str | None = None,
    name: str | None = None,
    full: bool = False,
) -> DebugSwitch:
    """A checked switch: exactly one of ``peer`` (an IP address) and ``name`` (a domain)."""
    setting_key(kind)
    if (peer is None) == (name is None):
        raise InvalidValue("a debug switch takes one peer (--peer IP) or one name (--name NAME)")
    if peer is not None:
        try:
            peer = str(ipaddress.ip_address(peer))
        except ValueError:
            raise InvalidValue(f"peer {peer!r} is not an IP address") from None
    if name is not None:
        name = parse_domain(name).text
    return DebugSwitch(kind, now + seconds, peer=peer, name=name, full=full)


def switch_of(settings: Mapping[str, str], kind: str) -> DebugSwitch | None:
    """The switch of ``kind`` stored in ``settings``, or None (none, or a value no sipzone
    wrote: a debug switch is never worth refusing a snapshot over)."""
    value = settings.get(setting_key(kind))
    if value is None:
        return None
    try:
        data = json.loads(value)
        switch = new_switch(
            kind, 0.0, 0, peer=data.get("peer"), name=data.get("name"), full=data.get("full")
        )
        return DebugSwitch(kind, float(data["until"]), switch.peer, switch.name, bool(switch.full))
    except (ValueError, TypeError, KeyError, AttributeError, InvalidValue):
        return None


def without_switches(settings: Mapping[str, str]) -> dict[str, str]:
    """``settings`` less the debug switches (which change no answer)."""
    return {k: v for k, v in settings.items() if not is_switch_setting(k)}
