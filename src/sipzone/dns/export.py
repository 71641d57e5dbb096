"""Zone files for other DNS servers: `sipzone zone export ZONE --format bind [--region R]`."""

from __future__ import annotations

import dns.name
import dns.zone

from sipzone.dns import DnsConfig
from sipzone.dns.records import Records
from sipzone.model.errors import NotFound
from sipzone.model.snapshot import Snapshot


def export_zone(
    snapshot: Snapshot, zone: str, region: str | None = None, config: DnsConfig | None = None
) -> str:
    """``zone`` as a BIND master file, as clients of ``region`` see it (default order without).

    Wildcard SIP domains come out as ``*.B`` A/AAAA/NAPTR records whose NAPTR points at
    ``_sip._udp.B`` and friends, which carry the SRV records: a zone file cannot give each name
    below B its own service names the way the live server does.
    """
    zone = zone.lower().rstrip(".")
    if zone not in snapshot.zones:
        raise NotFound(f"zone {zone!r} is not one of ours ({', '.join(snapshot.zones) or 'none'})")
    records = Records(snapshot, config or DnsConfig())
    try:
        view = records.region_index(region)
    except ValueError:
        known = ", ".join(r for r in records.regions if r) or "none"
        raise NotFound(f"no site is in region {region!r} (regions: {known})") from None
    origin = dns.name.from_text(zone)
    out = dns.zone.Zone(origin)
    for name, rds in records.zone_rrsets(zone, view):
        node = out.find_node(name, create=True)
        node.replace_rdataset(rds)
    text: str = out.to_text(sorted=True, relativize=True, want_origin=True)
    return text
