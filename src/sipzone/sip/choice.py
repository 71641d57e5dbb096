"""Which of an upstream's targets a request goes to, sans-IO: the targets RFC 3263 located for
it (``locate.py``), in priority order, and what the probes say of each.

Theory of operation.  An upstream URI locates to *hops*: one per address of each SRV target,
carrying that record's priority and weight (one hop per address, priority and weight 0, when
there is no SRV).  :func:`choose` keeps the hops the probes have not found down (a hop never
probed counts as usable), takes the lowest priority among them and spreads requests over
that priority's hops by weight (RFC 2782).  When every hop is down it fails open to the
first hop (the best priority, the heaviest weight): sending somewhere beats a 503 when the
probes may be what is wrong.

The edge is stateless, so the spread must not be random per message: CANCEL and the ACK of
a non-2xx answer must reach the target the INVITE reached (RFC 3261 §16.11), and a dialog
whose core does not record-route sends its in-dialog requests by the same rule.  A request's
share is a hash of its Call-ID (:meth:`Choice.pick`), the same in every worker and node.  A
:class:`Choice` is worked out in the background whenever locations or health change; the
edge reads it as is, and a single target (the common case) costs no hash at all.
"""

from __future__ import annotations

import zlib
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import NamedTuple

from sipzone.sip.values import Target


class Hop(NamedTuple):
    """One located target of an upstream: where to send, its SRV priority and weight, and the
    name it was found under (the SRV target, or the URI's host; the address for a literal)."""

    target: Target
    priority: int = 0
    weight: int = 0
    name: str = ""


class Choice(NamedTuple):
    """Where an upstream's requests go now: ``first`` when ``spread`` is None, else one of
    ``targets`` by weight (``spread`` holds their cumulative weights); ``known`` every target
    located (the core may send from any), ``fail_open`` when every one is down."""

    first: Target
    targets: tuple[Target, ...]
    spread: tuple[int, ...] | None
    known: frozenset[tuple[str, int]]
    fail_open: bool = False

    @classmethod
    def of(cls, target: Target) -> Choice:
        """The choice of one target: an address as configured."""
        return cls(target, (target,), None, frozenset({(target.host, target.port)}))

    def pick(self, call_id: bytes) -> Target:
        """The target of the request with ``call_id``: the same for every request of a call."""
        spread = self.spread
        if spread is None:
            return self.first
        point = zlib.crc32(call_id) % spread[-1]
        return self.targets[bisect_right(spread, point)]


def ordered(hops: Sequence[Hop]) -> list[Hop]:
    """``hops`` in failover order: priority, then the heavier weight first (stable)."""
    return sorted(hops, key=lambda hop: (hop.priority, -hop.weight))


def choose(hops: Sequence[Hop], usable: Callable[[Target], bool]) -> Choice | None:
    """The choice among ``hops`` (see the module docstring); None when there is none."""
    if not hops:
        return None
    order = ordered(hops)
    known = frozenset((hop.target.host, hop.target.port) for hop in order)
    alive = [hop for hop in order if usable(hop.target)]
    if not alive:
        return Choice(order[0].target, (order[0].target,), None, known, fail_open=True)
    # One SRV target's addresses are alternatives, not shares: its first usable one serves.
    best: list[Hop] = []
    names: set[str] = set()
    for hop in alive:
        if hop.priority != alive[0].priority:
            break
        if hop.name not in names:
            names.add(hop.name)
            best.append(hop)
    targets = tuple(hop.target for hop in best)
    if len(best) == 1:
        return Choice(targets[0], targets, None, known)
    # Weight 0 is for "no preference" (RFC 2782): among weights > 0 it takes no share here
    # (the RFC's "very small chance"), and a priority of nothing but 0 is spread evenly.
    weights = [hop.weight for hop in best]
    if not any(weights):
        weights = [1] * len(best)
    spread, total = [], 0
    for weight in weights:
        total += weight
        spread.append(total)
    return Choice(targets[0], targets, tuple(spread), known)
