"""IXFR (RFC 1995): what each zone's recent revisions deleted and added, so a secondary that
follows a zone of a million SIP domains receives what changed, not the zone.

Theory of operation.  The DNS server hands :class:`Journal` every snapshot it is given, in
order.  Transfers publish a zone *as configured*: every site as if healthy, drained sites out
(see :func:`configured`), so a zone's records change only with a store revision, and its serial
(the revision that last changed it, kept by the store per zone) says when.  A snapshot that
changes only rules (it carries a ``Delta``) changes a few owners per rule, all in the rule's
zone: the rule's own name (``D`` or ``*.B``) and its three service names (``_sip._udp.B``...).
The journal renders those owners' records in the previous and the new snapshot and keeps the
difference as one *step* from the old serial to the new one, so a change costs its names,
never the zone.  Any other change (a site, a drain, the email domain, a zone added inside this
one) may touch every name: the zone's history restarts there, and a secondary older than that
gets the whole zone, as RFC 1995 allows.  So does one older than the history kept: steps are
dropped, oldest first, beyond ``DnsConfig.ixfr_history`` records per zone, and a bulk change
bigger than that restarts the history without rendering anything.

The journal is memory only: after a restart every secondary gets one AXFR.  A health change
moves no serial and no record: a secondary cannot follow health within a probe interval (its
refresh, NOTIFY and transfer take longer, and it keeps answering what it has when we are
gone), so it publishes every configured site and leaves failover to the SRV set and the clients.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from sipzone.dns import DnsConfig
from sipzone.dns.answers import follows
from sipzone.dns.records import SERVICES, Records
from sipzone.dns.xfr import Omissions, Tails, rrs_of
from sipzone.model.snapshot import Snapshot, rule_zone

log = logging.getLogger("sipzone.dns")

Owners = tuple[tuple[str, tuple[bytes, ...]], ...]  # (owner name, its RR tails), per owner


@dataclass(frozen=True, slots=True)
class Step:
    """One revision of a zone as IXFR sends it: from serial ``before`` to ``after``."""

    before: int
    after: int
    soa_before: bytes  # the SOA RR tails (type, class, TTL, RDATA) of both versions
    soa_after: bytes
    deleted: Owners
    added: Owners

    @property
    def size(self) -> int:
        """Records this step sends (its two SOAs included)."""
        return 2 + sum(len(rrs) for _, rrs in self.deleted) + sum(len(rrs) for _, rrs in self.added)


def configured(snapshot: Snapshot) -> Snapshot:
    """``snapshot`` as zone transfers publish it: every site as if healthy (a drained site stays
    out: drain is configuration, a store revision that moves the serials)."""
    if all(site.healthy for site in snapshot.sites):
        return snapshot
    sites = tuple(s if s.healthy else replace(s, healthy=True) for s in snapshot.sites)
    return replace(snapshot, sites=sites)


def rule_owners(rule: str) -> list[str]:
    """The owners a SIP domain rule can put records under: ``D`` (or ``*.B``) and the service
    names of ``D`` (or ``B``)."""
    base = rule[2:] if rule.startswith("*.") else rule
    return [rule, *(f"{first}.{second}.{base}" for first, second, _, _ in SERVICES)]


class Journal:
    """Per zone, the steps that lead to its current serial (memory only, bounded)."""

    def __init__(self, snapshot: Snapshot, config: DnsConfig) -> None:
        self.config = config
        self.records = Records(configured(snapshot), config)
        self._steps: dict[str, deque[Step]] = {}
        self._sizes: dict[str, int] = {}

    def steps(self, zone: str, serial: int) -> list[Step] | None:
        """The steps from ``serial`` to the zone's current one, or None when the history does
        not reach back to ``serial``."""
        held = self._steps.get(zone, ())
        for i, step in enumerate(held):
            if step.before == serial:
                return list(held)[i:]
        return None

    def follow(self, snapshot: Snapshot) -> None:
        """Record what ``snapshot``, the one after the last one given, changes."""
        old, new = self.records, Records(configured(snapshot), self.config)
        self.records = new
        for zone in [z for z in self._steps if z not in new.snapshot.zones]:
            self._restart(zone)
        changed = [
            z
            for z in new.snapshot.zones
            if z not in old.snapshot.zones or old.serial(z) != new.serial(z)
        ]
        if not changed:
            return
        delta = snapshot.delta
        limit = self.config.ixfr_history
        # Each rule changes four owners at most, of a few records each: a bulk change that
        # would not fit the history anyway is not rendered.
        if (
            delta is None
            or not follows(old.snapshot, new.snapshot)
            or len(delta.added) + len(delta.removed) > limit // 4
        ):
            for zone in changed:
                self._restart(zone)
            return
        owners: dict[str, set[str]] = {}
        for rule in (*delta.added, *delta.removed):
            holder = rule_zone(rule, new.snapshot.zones)
            if holder is not None:
                owners.setdefault(holder, set()).update(rule_owners(rule))
        for zone in changed:
            if zone not in old.snapshot.zones:
                self._restart(zone)
            else:
                self._add(zone, _step(old, new, zone, sorted(owners.get(zone, ()))))

    def _add(self, zone: str, step: Step) -> None:
        held = self._steps.setdefault(zone, deque())
        held.append(step)
        size = self._sizes.get(zone, 0) + step.size
        while held and size > self.config.ixfr_history:
            size -= held.popleft().size
        self._sizes[zone] = size

    def _restart(self, zone: str) -> None:
        self._steps.pop(zone, None)
        self._sizes.pop(zone, None)


def _step(old: Records, new: Records, zone: str, owners: Iterable[str]) -> Step:
    """What changed under ``owners`` of ``zone`` from ``old`` to ``new``."""
    omitted = Omissions(zone)
    before, after = Tails(old, zone, omitted), Tails(new, zone, omitted)
    deleted: list[tuple[str, tuple[bytes, ...]]] = []
    added: list[tuple[str, tuple[bytes, ...]]] = []
    for name in owners:
        was, now = before.owner(name), after.owner(name)
        gone = _missing(was, now)
        if gone:
            deleted.append((name, gone))
        came = _missing(now, was)
        if came:
            added.append((name, came))
    return Step(
        old.serial(zone),
        new.serial(zone),
        rrs_of([old.soa(zone)])[0],
        rrs_of([new.soa(zone)])[0],
        tuple(deleted),
        tuple(added),
    )


def _missing(rrs: Sequence[bytes], other: Sequence[bytes]) -> tuple[bytes, ...]:
    """The RRs of ``rrs`` that ``other`` lacks."""
    there = set(other)
    return tuple(rr for rr in rrs if rr not in there)
