"""Trunk health, sans-IO: the OPTIONS the edge sends to each trunk target, what an answer (or
its absence) does to the target's state, and which target takes the next call.

Theory of operation.  Every target of every trunk gets an OPTIONS every ``options_interval``
seconds, jittered by up to a tenth either way so that many trunks do not fire together.  The
OPTIONS says who we are the way Microsoft Teams Direct Routing wants it: ``Contact:
<sip:BASE:PORT;transport=tls>`` with the trunk's base FQDN (never an address) and, under the
``teams`` profile, ``X-MS-SBC``.  A target's state (:class:`TargetHealth`) is *unknown* until
the first probe ends, then:

* a ``2xx`` answer makes it *up*;
* a ``503`` makes it *down* at once and unavailable for its ``Retry-After`` (the interval
  when it gives none): no OPTIONS and no call go there before that time;
* any other final answer makes it *down* at once (the target refuses us);
* a missed answer (no connection, a failed handshake, no answer within the timeout) makes it
  *down* after :data:`MISSES_DOWN` in a row, or at once when it was never up.

:func:`choose` gives the first target, in the trunk's order, that is not down and not
unavailable (``sip`` → ``sip2`` → ``sip3``); an unknown target counts as usable.  Every change
of up/down is one log line (the prober writes it), never one per probe.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sipzone import __version__
from sipzone.model.trunks import Trunk, TrunkState
from sipzone.sip.message import Response

MISSES_DOWN = 2  # missed answers in a row that take an up target down
JITTER = 0.1  # fraction of the interval a probe moves either way
MAX_RETRY_AFTER = 3600  # seconds a 503's Retry-After may keep a target unavailable
DEFAULT_SBC = f"sipzone/edge/{__version__}"  # X-MS-SBC: vendor/model/version


def next_delay(interval: float, rng: random.Random | None = None) -> float:
    """Seconds to the next OPTIONS: ``interval`` jittered by up to ±:data:`JITTER`."""
    rng = rng or random.Random()  # spreads timers; no secret
    return interval * (1 + rng.uniform(-JITTER, JITTER))


def options_request(trunk: Trunk, target: str, host: str, port: int, cseq: int) -> bytes:
    """The OPTIONS for ``target`` (a trunk target URI whose host is ``host``), from the
    trunk's base FQDN, whose TLS listener is at ``port``."""
    base = trunk.base
    branch = "z9hG4bK-sztrunk-" + secrets.token_hex(8)
    lines = [
        f"OPTIONS {target} SIP/2.0",
        f"Via: SIP/2.0/TLS {base}:{port};branch={branch}",
        "Max-Forwards: 70",
        f"From: <sip:options@{base}>;tag={secrets.token_hex(6)}",
        f"To: <sip:{host}>",
        f"Call-ID: {secrets.token_hex(12)}@{base}",
        f"CSeq: {cseq} OPTIONS",
        f"Contact: <sip:{base}:{port};transport=tls>",
        "Accept: application/sdp",
        f"User-Agent: {DEFAULT_SBC}",
    ]
    if trunk.teams:
        lines.append(f"X-MS-SBC: {trunk.sbc_header or DEFAULT_SBC}")
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


def retry_after(response: Response) -> int | None:
    """The seconds a response's Retry-After asks for (RFC 3261 §20.33), bounded; None when it
    has none or it is not a number."""
    value = response.fields.get(b"Retry-After")
    if not value:
        return None
    digits = value.split(b";", 1)[0].split(b"(", 1)[0].strip()
    if not digits.isdigit():
        return None
    return min(int(digits), MAX_RETRY_AFTER)


@dataclass(slots=True)
class TargetHealth:
    """What the prober knows of one trunk target; changes only by :meth:`answered` and
    :meth:`missed`, which say whether up/down changed."""

    trunk: str
    target: str
    up: bool | None = None  # None: no probe has ended yet
    misses: int = 0
    last_response: str = "none yet"
    latency_ms: float | None = None
    checked_at: datetime | None = None
    changed_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    unavailable_until: datetime | None = None

    @classmethod
    def of(cls, state: TrunkState) -> TargetHealth:
        """The health another worker saw (``trunk list``'s row), for a worker that only reads."""
        return cls(
            state.trunk, state.target, state.up, 0, state.last_response, state.latency_ms,
            state.checked_at, state.changed_at, state.unavailable_until,
        )  # fmt: skip

    def answered(
        self, status: int, reason: str, rtt: float, interval: float, now: datetime, wait: int | None
    ) -> bool:
        """A final answer ``status`` after ``rtt`` seconds (``wait``: its Retry-After)."""
        self.last_response = f"{status} {reason}"[:100]
        self.latency_ms = rtt * 1000
        self.checked_at = now
        self.misses = 0
        self.unavailable_until = None
        if status == 503:
            self.unavailable_until = now + timedelta(seconds=interval if wait is None else wait)
        return self._set(200 <= status < 300, now)

    def missed(self, why: str, now: datetime) -> bool:
        """No answer: ``why`` (timeout, connect failed: ..., handshake failed: ...)."""
        self.last_response = why[:100]
        self.checked_at = now
        self.misses += 1
        if self.up and self.misses < MISSES_DOWN:
            return False
        return self._set(False, now)

    def _set(self, up: bool, now: datetime) -> bool:
        if self.up is up:
            return False
        self.up = up
        self.changed_at = now
        return True

    def usable(self, now: datetime) -> bool:
        """Whether a call may go here: not down, not in a 503's Retry-After."""
        until = self.unavailable_until
        return self.up is not False and (until is None or now >= until)

    def state(self) -> TrunkState:
        """As ``trunk list`` shows it (an unknown target as down)."""
        return TrunkState(
            self.trunk,
            self.target,
            bool(self.up),
            self.last_response,
            self.latency_ms,
            self.checked_at or self.changed_at,
            self.changed_at,
            self.unavailable_until,
        )


def choose(
    trunk: Trunk, health: Mapping[tuple[str, str], TargetHealth], now: datetime
) -> str | None:
    """The target the next call goes to: the first, in order, that is usable; None when none
    is.  A target never probed counts as usable."""
    for target in trunk.targets:
        seen = health.get((trunk.name, target))
        if seen is None or seen.usable(now):
            return target
    return None
