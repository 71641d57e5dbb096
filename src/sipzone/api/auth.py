"""Who calls: bearer tokens, the tenant subtree a token may see, and the failed-auth limiter.

A token is ``sz_`` and 43 base64url characters (32 random octets); the store keeps its SHA-256
only (:meth:`Store.create_token`).  The provider's token sees everything; any other tenant's
sees the tenants of its subtree and the objects they own.  A client address that fails
authentication :attr:`ApiConfig.auth_failures` times within :attr:`ApiConfig.auth_window`
seconds gets 429 for every request until the oldest failure ages out (an IPv6 client counts
per /64): guessing tokens is hopeless anyway (2^256), but a flood of guesses is load and noise.
"""

from __future__ import annotations

import ipaddress
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection
from dataclasses import dataclass

from sipzone.model.errors import NotAuthenticated, TooManyAttempts
from sipzone.model.tenancy import PROVIDER, TenancyTree
from sipzone.store.repository import Store, TokenRow

MAX_ADDRESSES = 100_000  # client addresses the limiter remembers; the stalest go first


@dataclass(frozen=True)
class Caller:
    """The tenant a request acts as, and what it may see."""

    tenant: str
    label: str
    token_id: int
    scope: frozenset[str] | None  # tenants whose objects it sees; None: all (the provider)
    chain: tuple[str, ...]  # its own chain, self first: names it may read in messages
    others: frozenset[str]  # every tenant it may not see (to keep out of messages)

    @property
    def principal(self) -> str:
        return f"token {self.label!r} (#{self.token_id})"

    @property
    def owners(self) -> list[str] | None:
        """The tenants whose objects a listing shows (None: all), sorted."""
        return None if self.scope is None else sorted(self.scope)

    def sees(self, tenant: str) -> bool:
        return self.scope is None or tenant in self.scope

    def hide(self, text: str, said: Collection[str] = ()) -> str:
        """``text`` with every tenant name the caller may not see put as "another tenant",
        except names the caller ``said`` itself (hiding those would tell that they exist)."""
        for name in self.others - set(said):
            text = text.replace(f"tenant {name!r}", "another tenant")
            text = text.replace(repr(name), "another tenant")
        return text


def caller_for(token: TokenRow, tree: TenancyTree) -> Caller:
    if token.tenant == PROVIDER:
        return Caller(token.tenant, token.label, token.id, None, (PROVIDER,), frozenset())
    scope = frozenset(tree.subtree(token.tenant))
    chain = tree.view(token.tenant).chain
    others = frozenset(t.name for t in tree) - scope - set(chain)
    return Caller(token.tenant, token.label, token.id, scope, chain, others)


_BEARER = re.compile(r"Bearer +(\S+)\s*\Z", re.IGNORECASE)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer TOKEN`` header; :class:`NotAuthenticated`."""
    found = _BEARER.match(header or "")
    if found is None:
        raise NotAuthenticated(
            "this request needs an API token: send 'Authorization: Bearer TOKEN' "
            "(sipzone token create --tenant NAME)"
        )
    return found.group(1)


class FailureLimiter:
    """Failed authentications per client address in a sliding window."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()  # endpoints run in a thread pool

    def check(self, address: str) -> None:
        """Raise :class:`TooManyAttempts` while ``address`` is over its limit."""
        wait = self.retry_after(address)
        if wait > 0:
            raise TooManyAttempts(
                f"too many failed authentications from {address}; retry in {wait:.0f} s"
            )

    def retry_after(self, address: str) -> float:
        with self._lock:
            return self._retry_after(address)

    def _retry_after(self, address: str) -> float:
        times = self._failures.get(address)
        if not times:
            return 0.0
        now = self._clock()
        while times and times[0] <= now - self.window:
            times.popleft()
        if len(times) < self.limit:
            return 0.0
        return max(1.0, times[0] + self.window - now)

    def failed(self, address: str) -> None:
        with self._lock:
            times = self._failures.pop(address, None) or deque(maxlen=self.limit)
            times.append(self._clock())
            self._failures[address] = times
            while len(self._failures) > MAX_ADDRESSES:
                self._failures.popitem(last=False)


def limit_key(address: str) -> str:
    """What the limiter counts per: an IPv4 address, or an IPv6 /64 (one host's share of a
    network, which it could otherwise walk through address by address)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def authenticate(store: Store, limiter: FailureLimiter, secret: str, address: str) -> Caller:
    """The caller whose token is ``secret``; counts a failure for ``address`` otherwise."""
    address = limit_key(address)
    limiter.check(address)
    token = store.authenticate(secret)
    if token is None:
        limiter.failed(address)
        raise NotAuthenticated("the API token is unknown, revoked or expired")
    return caller_for(token, store.tenants())
