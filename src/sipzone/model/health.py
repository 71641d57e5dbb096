"""Site health as values: a site's probe settings, one node's view of it, and the rule that
turns every node's view into the one verdict the DNS and the edge follow.  Pure, no I/O.

Theory of operation.  Every node probes every site (sipzone.health) and keeps its own *view*:
up or down, changed only after ``failures`` failed rounds in a row (to down) or ``successes``
good rounds in a row (to up), so one lost datagram never flaps a site.  Nodes write their
views to the store; a view older than :data:`VIEW_STALE` seconds is a node that no longer
sees the site (stopped, or cut off with the store) and does not vote.  A site is **down when
a majority of the nodes that see it say so**: strictly more than half of the fresh views,
this node's own current view counted in place of what it last wrote.  A node alone (the store
away, or the only one) decides by itself.  A site an operator drained or marked down is out
whatever the probes say; when every site that is not drained is out, the DNS serves them all
(fail open, see dns/records.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sipzone.model.errors import OutOfRange

# Bounds of the settings: a probe needs time to fail, and a threshold above 100 rounds is a
# site that never changes state.
MIN_INTERVAL, MAX_INTERVAL = 0.1, 3600.0
MIN_TIMEOUT = 0.05
MAX_THRESHOLD = 100
# Seconds after which a node's written view no longer votes: it has not refreshed it for about
# six heartbeats (sipzone.health.BEAT_INTERVAL).
VIEW_STALE = 30.0


@dataclass(frozen=True, slots=True)
class HealthCheck:
    """How nodes probe one site: every ``interval`` seconds an OPTIONS per transport and
    virtual IP, each answered within ``timeout``; ``failures`` bad rounds in a row make the
    site down, ``successes`` good ones up again."""

    interval: float = 5.0
    timeout: float = 2.0
    failures: int = 3
    successes: int = 2

    @classmethod
    def checked(
        cls,
        interval: float | None = None,
        timeout: float | None = None,
        failures: int | None = None,
        successes: int | None = None,
        base: HealthCheck | None = None,
    ) -> HealthCheck:
        """``base`` (default: the defaults) with the given values, each checked: raises
        :class:`OutOfRange` naming the field.  A shorter interval given alone shortens the
        timeout kept from ``base`` to it."""
        base = base or DEFAULT_CHECK
        new_interval = base.interval if interval is None else float(interval)
        out = cls(
            new_interval,
            min(base.timeout, new_interval) if timeout is None else float(timeout),
            base.failures if failures is None else int(failures),
            base.successes if successes is None else int(successes),
        )
        if not MIN_INTERVAL <= out.interval <= MAX_INTERVAL:
            raise OutOfRange(
                f"health-check interval {out.interval:g} s is outside "
                f"{MIN_INTERVAL:g}-{MAX_INTERVAL:g} s"
            )
        if not MIN_TIMEOUT <= out.timeout <= out.interval:
            raise OutOfRange(
                f"health-check timeout {out.timeout:g} s is outside {MIN_TIMEOUT:g} s to the "
                f"interval ({out.interval:g} s)"
            )
        for what, value in (("failures to down", out.failures), ("successes to up", out.successes)):
            if not 1 <= value <= MAX_THRESHOLD:
                raise OutOfRange(f"health-check {what} {value} is outside 1-{MAX_THRESHOLD}")
        return out

    def as_dict(self) -> dict[str, float | int]:
        return {
            "interval": self.interval,
            "timeout": self.timeout,
            "failures": self.failures,
            "successes": self.successes,
        }


DEFAULT_CHECK = HealthCheck()


@dataclass(slots=True)
class Tracker:
    """One prober's view of one thing it probes (a site, an upstream's target), moved by probe
    rounds through ``check``'s thresholds.

    ``up`` is None until the first round, which decides alone: thresholds guard against
    flapping between known states, and a node must not use a dead target for ``failures``
    rounds just because it has only just started.
    """

    check: HealthCheck
    up: bool | None = None
    failures: int = 0
    successes: int = 0
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    detail: str | None = None

    def observe(self, error: str | None) -> bool:
        """Count one round (``error`` None: good); True when the view changed."""
        check = self.check
        if error is None:
            self.failures, self.successes = 0, self.successes + 1
            flips = self.up is None or (not self.up and self.successes >= check.successes)
        else:
            self.failures, self.successes = self.failures + 1, 0
            self.detail = error
            flips = self.up is None or (self.up and self.failures >= check.failures)
        if flips:
            self.up = error is None
            self.changed_at = datetime.now(UTC)
            if self.up:
                self.detail = None
        return flips


@dataclass(frozen=True, slots=True)
class UpstreamTargetState:
    """One node's view of one target an upstream URI located to: its SRV priority and weight,
    what the probes say (``up`` None: not probed), whether requests go there now, and since
    when the view holds (``detail``: the last failure)."""

    upstream: str  # the configured URI
    target: str  # "udp 192.0.2.7:5060"
    priority: int
    weight: int
    up: bool | None
    in_use: bool
    changed_at: datetime
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the nodes' views say about one site: ``up`` and the votes behind it."""

    up: bool
    down_votes: int
    voters: int

    def describe(self) -> str:
        return f"{self.down_votes} of {self.voters} node(s) see it down"


def majority(views: Mapping[str, bool]) -> Verdict:
    """The verdict of fresh views (node name -> up?): down when strictly more than half say
    down; no view at all (nobody probes it) leaves the site up."""
    down = sum(1 for up in views.values() if not up)
    return Verdict(up=not (down * 2 > len(views)), down_votes=down, voters=len(views))
