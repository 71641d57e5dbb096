"""Zone files for other DNS servers: `sipzone zone export ZONE --format bind [--region R]`.

Like a transfer (:mod:`sipzone.dns.xfr`), an export streams: names come from
:meth:`Records.zone_walk` one at a time, each set of roles is turned into text once, and the
text leaves in chunks, so a zone of a million domains starts at once and costs memory
independent of its size.  Names come out in no particular order, which master files allow.
"""

from __future__ import annotations

from collections.abc import Iterator

import dns.name
import dns.rdatatype

from sipzone.dns import DnsConfig
from sipzone.dns.ixfr import configured
from sipzone.dns.records import RdType, Records, Role
from sipzone.dns.xfr import Omissions
from sipzone.model.errors import NotFound
from sipzone.model.snapshot import Snapshot

CHUNK_LINES = 2048  # lines per piece of text handed to the writer


def zone_file(
    snapshot: Snapshot,
    zone: str,
    region: str | None = None,
    config: DnsConfig | None = None,
    omitted: Omissions | None = None,
) -> Iterator[str]:
    """``zone`` as a BIND master file, as clients of ``region`` see it (default order without),
    in pieces of text to write one after the other.  An unknown zone or region raises
    :class:`NotFound` here, before any text.  Records whose names would exceed 255 octets are
    left out and counted in ``omitted``.

    Wildcard SIP domains come out as ``*.B`` A/AAAA/NAPTR records whose NAPTR points at
    ``_sip._udp.B`` and friends, which carry the SRV records: a zone file cannot give each name
    below B its own service names the way the live server does.
    """
    zone = zone.lower().rstrip(".")
    if zone not in snapshot.zones:
        raise NotFound(f"zone {zone!r} is not one of ours ({', '.join(snapshot.zones) or 'none'})")
    records = Records(configured(snapshot), config or DnsConfig())  # as transfers publish it
    try:
        view = records.region_index(region)
    except ValueError:
        known = ", ".join(r for r in records.regions if r) or "none"
        raise NotFound(f"no site is in region {region!r} (regions: {known})") from None
    return _text(records, zone, view, omitted or Omissions(zone))


def export_zone(
    snapshot: Snapshot, zone: str, region: str | None = None, config: DnsConfig | None = None
) -> str:
    """:func:`zone_file` as one string (small zones, tests)."""
    return "".join(zone_file(snapshot, zone, region, config))


def _text(records: Records, zone: str, view: int, omitted: Omissions) -> Iterator[str]:
    origin = dns.name.from_text(zone)
    cut = len(zone) + 1

    def lines(rdatasets: dict[RdType, dns.rdataset.Rdataset], soa: bool = False) -> list[str]:
        """`` TTL IN TYPE RDATA`` lines after an owner: the SOA alone, or everything else."""
        return [
            f" {rds.ttl} IN {dns.rdatatype.to_text(rdtype)} "
            f"{rd.to_text(origin=origin, relativize=True)}\n"
            for rdtype, rds in rdatasets.items()
            if (rdtype == RdType.SOA) == soa
            for rd in rds
        ]

    # Per set of roles (one shared tuple object per set, see Records.zone_walk): its lines.
    cache: dict[int, tuple[tuple[Role, ...], list[str]]] = {}
    naptr: list[tuple[str, str]] = []  # (line up to the replacement, replacement's labels)
    if records.config.naptr:
        rds = records.naptr("")
        naptr = [
            (f" {rds.ttl} IN NAPTR {rd.to_text()[: -len(rd.replacement.to_text())]}",
             rd.replacement.to_text())
            for rd in rds
        ]  # fmt: skip
    out = [
        f"$ORIGIN {zone}.\n",
        *("@" + line for line in lines({RdType.SOA: records.soa(zone)}, True)),
    ]
    for name, roles, naptr_base in records.zone_walk(zone, omitted):
        hit = cache.get(id(roles))
        if hit is None:
            hit = cache[id(roles)] = (roles, lines(records.rdatasets(zone, roles, view)))
        owner = "@" if name == zone else name[: len(name) - cut]
        out += [owner + line for line in hit[1]]
        if naptr_base is not None:
            for head, replacement in naptr:
                target = replacement + naptr_base
                if omitted.fits(target):
                    out.append(f"{owner}{head}{target}.\n")
        if len(out) >= CHUNK_LINES:
            yield "".join(out)
            out = []
    yield "".join(out)
