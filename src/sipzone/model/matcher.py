"""The one matching rule, shared by the SIP edge and the DNS authority.

A name is admitted when an exact rule equals it, or a wildcard ``*.B`` has ``B`` as a proper
suffix on a label boundary, at any depth (RFC 4592).  The most specific rule wins: exact beats
wildcard, and a longer base beats a shorter one.

Theory of operation: exact rules live in one dict keyed by name, wildcards in another keyed by
base.  A lookup is one probe of the exact dict, then one probe of the wildcard dict per
label-boundary suffix, longest first, so the first hit is the most specific.  Only suffixes
as deep as some wildcard base are probed (the matcher keeps the set of base depths), so a
name is usually one or two hash look-ups, never a scan, whatever the number of rules.

The wildcard probe comes first: the matcher counts, per wildcard base, the exact rules below
it, and when there are none the exact probe is skipped.  On a large rule set each probe is a
cache miss, so a name under a wildcard (`cust42.teams.example.com`) costs one miss, not two.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

OwnerT = TypeVar("OwnerT")


@dataclass(frozen=True, slots=True)
class Match(Generic[OwnerT]):
    """Why a name was admitted: the rule (``voip.acme.example`` or ``*.teams.example.com``)
    and its owner."""

    name: str
    rule: str
    wildcard: bool
    owner: OwnerT


class Matcher(Generic[OwnerT]):
    """Immutable rule set; ``OwnerT`` is whatever the caller uses as owner (a tenant, a name)."""

    __slots__ = ("_below", "_depth_count", "_depths", "_exact", "_wild")

    def __init__(self, exact: Mapping[str, OwnerT], wildcards: Mapping[str, OwnerT]) -> None:
        # Owned, never mutated after construction: snapshots share matchers between threads.
        self._init(dict(exact), dict(wildcards))

    def _init(
        self,
        exact: dict[str, OwnerT],
        wild: dict[str, OwnerT],
        depth_count: Counter[int] | None = None,
        below: Counter[str] | None = None,
    ) -> None:
        self._exact = exact
        self._wild = wild
        if depth_count is None:
            depth_count = Counter(base.count(".") + 1 for base in wild)
        self._depth_count = +depth_count  # unary plus drops zero counts
        # Label counts of wildcard bases, deepest first: the suffixes worth probing.
        self._depths: tuple[int, ...] = tuple(sorted(self._depth_count, reverse=True))
        if below is None:
            below = Counter(base for name in exact for base in self._bases_above(name))
        # Wildcard bases with exact rules below them: only there must the exact dict be asked.
        self._below: Counter[str] = +below

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
        self, added: Iterable[tuple[str, OwnerT]] = (), removed: Iterable[str] = ()
    ) -> Matcher[OwnerT]:
        """A new matcher with rules added and removed; this one is left untouched."""
        exact = self._exact.copy()
        wild = self._wild.copy()
        # What really moved, from the change itself: set differences of a million keys would
        # cost more than the copies.
        gone_exact: list[str] = []
        new_exact: list[str] = []
        gone_bases: list[str] = []
        new_bases: set[str] = set()
        for text in removed:
            if text.startswith("*."):
                if wild.pop(text[2:], None) is not None:
                    gone_bases.append(text[2:])
            elif exact.pop(text, None) is not None:
                gone_exact.append(text)
        for text, owner in added:
            if text.startswith("*."):
                if text[2:] not in wild:
                    new_bases.add(text[2:])
                wild[text[2:]] = owner
            else:
                if text not in exact:
                    new_exact.append(text)
                exact[text] = owner
        depths = self._depth_count.copy()
        depths.subtract(b.count(".") + 1 for b in gone_bases)
        depths.update(b.count(".") + 1 for b in new_bases)
        m = Matcher.__new__(Matcher)
        m._init(exact, wild, depths, Counter())
        # Counts of exact rules below each base: carried over, then corrected for what moved.
        # A new base needs a scan of the exact names; new bases are rare, names are not.
        below = Counter({b: n for b, n in self._below.items() if b in wild})
        for base in new_bases:
            suffix = "." + base
            below[base] = sum(1 for name in exact if name.endswith(suffix))
        for name in gone_exact:
            below.subtract(b for b in m._bases_above(name) if b not in new_bases)
        for name in new_exact:
            below.update(b for b in m._bases_above(name) if b not in new_bases)
        m._below = +below
        return m

    def _bases_above(self, name: str) -> Iterable[str]:
        """Every wildcard base that is a proper suffix of ``name``, deepest first.

        The same walk as :meth:`_wildcard_base`, which stays a plain loop: on the lookup path a
        generator would cost more than the probes it makes (measured: 1.07 against 0.64 µs).
        """
        labels = name.count(".") + 1
        wild = self._wild
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                if base in wild:
                    yield base

    def _wildcard_base(self, name: str) -> str | None:
        """The deepest wildcard base that is a proper suffix of ``name``, or None."""
        labels = name.count(".") + 1
        wild = self._wild
        for depth in self._depths:
            if depth < labels:
                base = name.split(".", labels - depth)[-1]
                if base in wild:
                    return base
        return None

    def owner(self, name: str) -> OwnerT | None:
        """The owner of the rule admitting ``name`` (already a lookup key), or None."""
        if not self._depths:
            return self._exact.get(name)
        base = self._wildcard_base(name)
        if base is not None and base not in self._below:
            return self._wild[base]
        hit = self._exact.get(name)
        if hit is not None or base is None:
            return hit
        return self._wild[base]

    def match(self, name: str) -> Match[OwnerT] | None:
        """The admitting rule for ``name`` with its owner, or None when nothing admits it."""
        base = self._wildcard_base(name) if self._depths else None
        if base is None or base in self._below:
            hit = self._exact.get(name)
            if hit is not None:
                return Match(name, name, False, hit)
        if base is None:
            return None
        return Match(name, "*." + base, True, self._wild[base])

    def exact_owner(self, name: str) -> OwnerT | None:
        return self._exact.get(name)

    def wildcard_owner(self, base: str) -> OwnerT | None:
        return self._wild.get(base)

    def exact_names(self) -> Iterable[str]:
        return self._exact.keys()

    def wildcard_bases(self) -> Iterable[str]:
        return self._wild.keys()

    def rules(self) -> Iterable[tuple[str, OwnerT]]:
        yield from self._exact.items()
        for base, owner in self._wild.items():
            yield "*." + base, owner

    def __len__(self) -> int:
        return len(self._exact) + len(self._wild)

    def __contains__(self, rule: str) -> bool:
        if rule.startswith("*."):
            return rule[2:] in self._wild
        return rule in self._exact
