"""The one matching rule, shared by the SIP edge and the DNS authority.

A name is admitted when an exact rule equals it, or a wildcard ``*.B`` has ``B`` as a proper
suffix on a label boundary, at any depth (RFC 4592).  The most specific rule wins: exact beats
wildcard, and a longer base beats a shorter one.

Theory of operation: exact rules live in one dict keyed by name, wildcards in another keyed by
base.  A lookup is one probe of the exact dict, then one probe of the wildcard dict per
label-boundary suffix, longest first, so the first hit is the most specific.  Only suffixes
as deep as some wildcard base are probed (the matcher keeps the set of base depths), so a
name is usually one or two hash look-ups, never a scan, whatever the number of rules.
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

    @property
    def base(self) -> str:
        return self.rule[2:] if self.wildcard else self.rule


class Matcher(Generic[OwnerT]):
    """Immutable rule set; ``OwnerT`` is whatever the caller uses as owner (a tenant, a name)."""

    __slots__ = ("_depth_count", "_depths", "_exact", "_wild")

    def __init__(self, exact: Mapping[str, OwnerT], wildcards: Mapping[str, OwnerT]) -> None:
        # Owned, never mutated after construction: snapshots share matchers between threads.
        self._exact: dict[str, OwnerT] = dict(exact)
        self._wild: dict[str, OwnerT] = dict(wildcards)
        self._set_depths(Counter(base.count(".") + 1 for base in self._wild))

    def _set_depths(self, depth_count: Counter[int]) -> None:
        self._depth_count = +depth_count  # unary plus drops zero counts
        # Label counts of wildcard bases, deepest first: the suffixes worth probing.
        self._depths: tuple[int, ...] = tuple(sorted(self._depth_count, reverse=True))

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
        return cls._adopt(exact, wild)

    @classmethod
    def _adopt(cls, exact: dict[str, OwnerT], wild: dict[str, OwnerT]) -> Matcher[OwnerT]:
        m = cls.__new__(cls)
        m._exact = exact
        m._wild = wild
        m._set_depths(Counter(base.count(".") + 1 for base in wild))
        return m

    def with_changes(
        self, added: Iterable[tuple[str, OwnerT]] = (), removed: Iterable[str] = ()
    ) -> Matcher[OwnerT]:
        """A new matcher with rules added and removed; this one is left untouched."""
        exact = self._exact.copy()
        wild = self._wild.copy()
        depths = self._depth_count.copy()
        for text in removed:
            if text.startswith("*."):
                if wild.pop(text[2:], None) is not None:
                    depths[text.count(".")] -= 1
            else:
                exact.pop(text, None)
        for text, owner in added:
            if text.startswith("*."):
                if text[2:] not in wild:
                    depths[text.count(".")] += 1
                wild[text[2:]] = owner
            else:
                exact[text] = owner
        m = Matcher.__new__(Matcher)
        m._exact = exact
        m._wild = wild
        m._set_depths(depths)
        return m

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
        hit = self._exact.get(name)
        if hit is not None or not self._depths:
            return hit
        base = self._wildcard_base(name)
        return None if base is None else self._wild[base]

    def match(self, name: str) -> Match[OwnerT] | None:
        """The admitting rule for ``name`` with its owner, or None when nothing admits it."""
        hit = self._exact.get(name)
        if hit is not None:
            return Match(name, name, False, hit)
        base = self._wildcard_base(name)
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
