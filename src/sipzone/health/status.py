"""What the store says about health and nodes, as the stable JSON of `site list --json` and
`sipzone status --json` (and the API, once it shows them): sites, nodes, and each node's
upstream targets.

The verdict here is the store's: the nodes' fresh views as last written, by the rule of
sipzone.model.health.  A serving node may be a heartbeat ahead of it (it counts its own view
as it is now); they agree within one heartbeat (monitor.BEAT_INTERVAL at most).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sipzone.model.health import UpstreamTargetState, majority
from sipzone.model.snapshot import Site
from sipzone.store.repository import NodeRow, SiteView


def site_state(site: Site, views: Iterable[SiteView]) -> dict[str, Any]:
    """The health fields of one site: settings, drain, each node's view and the verdict.

    ``state`` is drained, down (an operator's `site health NAME down`, or the nodes' majority)
    or up; ``views`` holds every fresh view of the site.
    """
    mine = [v for v in views if v.site == site.name]
    verdict = majority({v.node: v.up for v in mine})
    if site.drained:
        state = "drained"
    elif not site.healthy or not verdict.up:
        state = "down"
    else:
        state = "up"
    return {
        "state": state,
        "drained": site.drained,
        "health_check": site.check.as_dict(),
        "down_votes": verdict.down_votes,
        "voters": verdict.voters,
        "views": [
            {
                "node": v.node,
                "up": v.up,
                "since": v.changed_at.isoformat(),
                "seen": v.seen_at.isoformat() if v.seen_at else None,
                "detail": v.detail,
            }
            for v in mine
        ],
    }


def node_json(
    node: NodeRow,
    views: Iterable[SiteView],
    upstreams: Iterable[tuple[str, UpstreamTargetState]] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """One node's last heartbeat: what it serves, how far behind the store it was, how long
    ago it was seen, whether it could reach the store, its view of every site, and what its
    edge located and probed of its upstreams (``upstreams``: every node's (node, state))."""
    now = now or datetime.now(UTC)
    seen = node.seen_at or node.started_at
    age = node.age(now)
    return {
        "name": node.name,
        "site": node.site,
        "addresses": list(node.addresses),
        "revision": node.revision,
        "behind": max(0, node.store_revision - node.revision),
        "started": node.started_at.isoformat(),
        "last_seen": seen.isoformat(),
        "seconds_since_seen": round(age, 1),
        "alive": node.alive(now),
        "store_down_since": node.store_down_since.isoformat() if node.store_down_since else None,
        "sites": {v.site: "up" if v.up else "down" for v in views if v.node == node.name},
        "upstreams": [
            {
                "upstream": u.upstream,
                "target": u.target,
                "priority": u.priority,
                "weight": u.weight,
                "state": "unknown" if u.up is None else "up" if u.up else "down",
                "in_use": u.in_use,
                "since": u.changed_at.isoformat(),
                "detail": u.detail,
            }
            for name, u in upstreams
            if name == node.name
        ],
    }
