"""The one matching rule, shared by the SIP edge and the DNS authority.

A name is admitted when an exact rule equals it, or a wildcard ``*.B`` has ``B`` as a proper
suffix on a label boundary, at any depth (RFC 4592).  The most specific rule wins: exact beats
wildcard, and a longer base beats a shorter one.

Theory of operation: exact rules live in one dict keyed by name, wildcards in another keyed by
base.  A lookup is one probe of the wildcard dict per label-boundary suffix, longest first, so
the first hit is the most specific, then one probe of the exact dict.  Only suffixes as deep as
some wildcard base are probed (the matcher keeps the set of base depths), so a name is usually
one or two hash look-ups, never a scan, whatever the number of rules.

The wildcard probe comes first: the matcher counts, per wildcard base, the exact rules below
it, and when there are none the exact probe is skipped.  On a large rule set each probe is a
cache miss, so a name under a wildcard (`cust42.teams.example.com`) costs one miss, not two.

Changes.  A matcher is immutable: readers on any thread may hold an old one while newer ones
are made.  :meth:`Matcher.with_changes` does not copy the million-entry dicts: it returns a
layered matcher that shares them (the *base*) and carries the rules changed since in small
*overlay* dicts, consulted first, where a removed rule is recorded as None.  The overlay of a
wildcard base also holds its count of exact rules below, so one probe answers both questions.
Each change copies the overlay (at most ``overlay_limit`` entries) and never the base; past
the limit the overlay is folded into fresh dicts, one O(rules) copy per ``overlay_limit``
changes.  So a matcher keeps alive its base and one bounded overlay, never a chain of
predecessors.  A wildcard base added by a change does not know how many exact rules lie below
it (counting them is a scan of every name); it is marked as having some, which is always
correct and costs names under it one more probe until the next full build.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

OwnerT = TypeVar("OwnerT")

# Rules changed since the base before a change folds the overlay into fresh dicts: the fold
# costs one copy of the rule set, so a change costs that over this many changes, plus a copy of
# an overlay this big.  A lookup probes the overlay as well while it is not empty.
OVERLAY_LIMIT = 2048
# The count of exact rules below a wildcard base a change added: unknown, assumed non-zero.
_UNKNOWN = 1 << 62


def _depth(base: str) -> int:
    return base.count(".") + 1


@dataclass(frozen=True, slots=True)
class Match(Generic[OwnerT]):
    """Why a name was admitted: the rule (``voip.acme.example`` or ``*.teams.example.com``)
    and its owner."""

    name: str
    rule: str
    wildcard: bool
    owner: OwnerT


class Matcher(Generic[OwnerT]):
    """Immutable rule set; ``OwnerT`` is whatever the caller uses as owner (a tenant, a name).

    This class has no overlay; :meth:`with_changes` returns a :class:`_Layered` one.
    """

    __slots__ = ("_below", "_depth_count", "_depths", "_exact", "_len", "_wild")

    def __init__(self, exact: Mapping[str, OwnerT], wildcards: Mapping[str, OwnerT]) -> None:
        # Owned, never mutated after construction: snapshots share matchers between threads.
        self._init(dict(exact), dict(wildcards))

    def _init(
        self,
        exact: dict[str, OwnerT],
        wild: dict[str, OwnerT],
        below: dict[str, int] | None = None,
        depth_count: Counter[int] | None = None,
    ) -> None:
        self._exact = exact
        self._wild = wild
        self._len = len(exact) + len(wild)
        # Wildcard bases per label count (a scan of the bases unless the caller knows them).
        self._depth_count = +depth_count if depth_count is not None else Counter(map(_depth, wild))
        # Label counts of wildcard bases, deepest first: the suffixes worth probing.
        self._depths: tuple[int, ...] = tuple(sorted(self._depth_count, reverse=True))
        if below is None:
            below = dict(Counter(base for name in exact for base in self._bases_above(name)))
        # Wildcard bases with exact rules below them: only there must the exact dict be asked.
        self._below = below

    @classmethod
    def from_rules(cls, rules: Iterable[tuple[str, OwnerT]]) -> Matcher[OwnerT]:
        """Build from ``(rule text, owner)`` pairs, rule text as stored (``*.b`` for wildcards)."""
        exact: dict[str, OwnerT] = {}
        wild: dict[str, OwnerT] = {}
        for text, owner in rules:
            if text.startswith("*."):
                wild[text[2:]] = owner
            else:
                exact[text] = owner
        m = cls.__new__(cls)
        m._init(exact, wild)
        return m

    def with_changes(
        self,
        added: Iterable[tuple[str, OwnerT]] = (),
        removed: Iterable[str] = (),
        *,
        overlay_limit: int = OVERLAY_LIMIT,
    ) -> Matcher[OwnerT]:
        """A new matcher with rules removed, then added; this one is left untouched.

        Costs the size of the change plus a copy of the overlay, except once the overlay would
        pass ``overlay_limit``: then a copy of the whole rule set.
        """
        m: _Layered[OwnerT] = _Layered.__new__(_Layered)
        m._exact, m._wild, m._below = self._exact, self._wild, self._below
        m._len = self._len
        m._depth_count = self._depth_count.copy()
        m._depths = self._depths
        m._xo, m._wo = self._overlays()
        m._apply(added, removed)
        if len(m._xo) + len(m._wo) <= overlay_limit:
            return m
        return m._folded()

    def _overlays(self) -> tuple[dict[str, OwnerT | None], dict[str, tuple[OwnerT | None, int]]]:
        """Copies of this matcher's overlays, for a successor to extend."""
        return {}, {}

    # -- lookups ------------------------------------------------------------------------------

    def owner(self, name: str) -> OwnerT | None:
        """The owner of the rule admitting ``name`` (already a lookup key), or None.

        The hot path of the SIP edge and the DNS: one plain loop, no helper calls (a generator
        or a method call here would cost more than the probes it makes).
        """
        labels = name.count(".") + 1
        wild = self._wild
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                found = wild.get(base)
                if found is not None:
                    if base not in self._below:
                        return found
                    hit = self._exact.get(name)
                    return found if hit is None else hit
        return self._exact.get(name)

    def exact_owner(self, name: str) -> OwnerT | None:
        return self._exact.get(name)

    def wildcard_owner(self, base: str) -> OwnerT | None:
        return self._wild.get(base)

    def _below_count(self, base: str) -> int:
        """How many exact rules lie below wildcard base ``base`` (non-zero when unknown)."""
        return self._below.get(base, 0)

    def _deepest_wildcard(self, name: str) -> tuple[str, OwnerT] | None:
        """The deepest wildcard base that is a proper suffix of ``name``, with its owner."""
        labels = name.count(".") + 1
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                found = self.wildcard_owner(base)
                if found is not None:
                    return base, found
        return None

    def _bases_above(self, name: str) -> Iterator[str]:
        """Every wildcard base that is a proper suffix of ``name``, deepest first."""
        labels = name.count(".") + 1
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                if self.wildcard_owner(base) is not None:
                    yield base

    def match(self, name: str) -> Match[OwnerT] | None:
        """The admitting rule for ``name`` with its owner, or None when nothing admits it."""
        wildcard = self._deepest_wildcard(name)
        if wildcard is None or self._below_count(wildcard[0]):
            hit = self.exact_owner(name)
            if hit is not None:
                return Match(name, name, False, hit)
        if wildcard is None:
            return None
        return Match(name, "*." + wildcard[0], True, wildcard[1])

    # -- whole rule set -----------------------------------------------------------------------

    def exact_names(self) -> Iterable[str]:
        return self._exact.keys()

    def wildcard_bases(self) -> Iterable[str]:
        return self._wild.keys()

    def rules(self) -> Iterable[tuple[str, OwnerT]]:
        yield from self._exact.items()
        for base, owner in self._wild.items():
            yield "*." + base, owner

    def __len__(self) -> int:
        return self._len

    def __contains__(self, rule: str) -> bool:
        if rule.startswith("*."):
            return self.wildcard_owner(rule[2:]) is not None
        return self.exact_owner(rule) is not None


class _Layered(Matcher[OwnerT]):
    """A base shared with other matchers, under overlays of the rules changed since.

    ``_xo``: exact name -> owner, or None when removed.  ``_wo``: wildcard base -> (owner, or
    None when removed; count of exact rules below it).  Filled by :meth:`_apply` before anyone
    else sees the matcher, never written after.
    """

    __slots__ = ("_wo", "_xo")

    _xo: dict[str, OwnerT | None]
    _wo: dict[str, tuple[OwnerT | None, int]]

    def _overlays(self) -> tuple[dict[str, OwnerT | None], dict[str, tuple[OwnerT | None, int]]]:
        return self._xo.copy(), self._wo.copy()

    def owner(self, name: str) -> OwnerT | None:
        """As :meth:`Matcher.owner`, each probe asking the overlay first (``in`` costs less
        than a ``get`` call, and most names are not in the overlay)."""
        labels = name.count(".") + 1
        wo = self._wo
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                if base in wo:
                    found, below = wo[base]
                    if found is None:
                        continue
                    if not below:
                        return found
                else:
                    found = self._wild.get(base)
                    if found is None:
                        continue
                    if base not in self._below:
                        return found
                hit = self._xo[name] if name in self._xo else self._exact.get(name)
                return found if hit is None else hit
        xo = self._xo
        return xo[name] if name in xo else self._exact.get(name)

    def exact_owner(self, name: str) -> OwnerT | None:
        xo = self._xo
        return xo[name] if name in xo else self._exact.get(name)

    def wildcard_owner(self, base: str) -> OwnerT | None:
        wo = self._wo
        return wo[base][0] if base in wo else self._wild.get(base)

    def _below_count(self, base: str) -> int:
        wo = self._wo
        return wo[base][1] if base in wo else self._below.get(base, 0)

    def exact_names(self) -> Iterable[str]:
        xo = self._xo
        yield from (name for name in self._exact if name not in xo)
        yield from (name for name, owner in xo.items() if owner is not None)

    def wildcard_bases(self) -> Iterable[str]:
        wo = self._wo
        yield from (base for base in self._wild if base not in wo)
        yield from (base for base, (owner, _) in wo.items() if owner is not None)

    def rules(self) -> Iterable[tuple[str, OwnerT]]:
        xo, wo = self._xo, self._wo
        yield from ((name, owner) for name, owner in self._exact.items() if name not in xo)
        yield from ((name, owner) for name, owner in xo.items() if owner is not None)
        yield from (("*." + base, owner) for base, owner in self._wild.items() if base not in wo)
        yield from (("*." + base, owner) for base, (owner, _) in wo.items() if owner is not None)

    def _apply(self, added: Iterable[tuple[str, OwnerT]], removed: Iterable[str]) -> None:
        """Record a change in this (not yet shared) matcher's overlays."""
        xo, wo = self._xo, self._wo
        for text in removed:
            if text.startswith("*."):
                base = text[2:]
                if self.wildcard_owner(base) is not None:
                    wo[base] = (None, 0)
                    self._len -= 1
                    self._count_depth(base, -1)
            elif self.exact_owner(text) is not None:
                self._count_below(text, -1)
                xo[text] = None
                self._len -= 1
        for text, owner in added:
            if text.startswith("*."):
                base = text[2:]
                if self.wildcard_owner(base) is None:
                    wo[base] = (owner, _UNKNOWN)
                    self._len += 1
                    self._count_depth(base, 1)
                else:
                    wo[base] = (owner, self._below_count(base))
            else:
                if self.exact_owner(text) is None:
                    self._count_below(text, 1)
                    self._len += 1
                xo[text] = owner

    def _count_depth(self, base: str, step: int) -> None:
        counts = self._depth_count
        counts[_depth(base)] += step
        self._depths = tuple(sorted((d for d, n in counts.items() if n > 0), reverse=True))

    def _count_below(self, name: str, step: int) -> None:
        """An exact rule ``name`` comes (1) or goes (-1): count it for the bases above it."""
        for base in list(self._bases_above(name)):
            owner = self.wildcard_owner(base)
            self._wo[base] = (owner, self._below_count(base) + step)

    def _folded(self) -> Matcher[OwnerT]:
        """The same rules as a plain matcher: the overlays applied to copies of the base."""
        exact = self._exact.copy()
        for name, owner in self._xo.items():
            if owner is None:
                exact.pop(name, None)
            else:
                exact[name] = owner
        wild = self._wild.copy()
        below = self._below.copy()
        for base, (found, count) in self._wo.items():
            if found is None:
                wild.pop(base, None)
            else:
                wild[base] = found
            if found is None or not count:
                below.pop(base, None)
            else:
                below[base] = count
        m: Matcher[OwnerT] = Matcher.__new__(Matcher)
        m._init(exact, wild, below, self._depth_count)
        return m
