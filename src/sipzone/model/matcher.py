"""The one matching rule, shared by the SIP edge and the DNS authority.

A name is admitted when an exact rule equals it, or a wildcard ``*.B`` has ``B`` as a proper
suffix on a label boundary, at any depth (RFC 4592).  The most specific rule wins: exact beats
wildcard, and a longer base beats a shorter one.

Theory of operation: exact rules live in one dict keyed by name, wildcards in another keyed by
base.  A lookup is one probe of the exact dict, then one probe of the wildcard dict per
label-boundary suffix, longest first, so the first hit is the most specific.  The cost is a
handful of hash look-ups, never a scan, whatever the number of rules.
"""

from __future__ import annotations

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

    __slots__ = ("_exact", "_wild")

    def __init__(self, exact: Mapping[str, OwnerT], wildcards: Mapping[str, OwnerT]) -> None:
        # Owned, never mutated after construction: snapshots share matchers between threads.
        self._exact: dict[str, OwnerT] = dict(exact)
        self._wild: dict[str, OwnerT] = dict(wildcards)

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
        return m

    def with_changes(
        self, added: Iterable[tuple[str, OwnerT]] = (), removed: Iterable[str] = ()
    ) -> Matcher[OwnerT]:
        """A new matcher with rules added and removed; this one is left untouched."""
        exact = self._exact.copy()
        wild = self._wild.copy()
        for text in removed:
            if text.startswith("*."):
                wild.pop(text[2:], None)
            else:
                exact.pop(text, None)
        for text, owner in added:
            if text.startswith("*."):
                wild[text[2:]] = owner
            else:
                exact[text] = owner
        return Matcher._adopt(exact, wild)

    def owner(self, name: str) -> OwnerT | None:
        """The owner of the rule admitting ``name`` (already a lookup key), or None."""
        hit = self._exact.get(name)
        if hit is not None:
            return hit
        wild = self._wild
        if not wild:
            return None
        dot = name.find(".")
        while dot >= 0:
            base = name[dot + 1 :]
            hit = wild.get(base)
            if hit is not None:
                return hit
            dot = name.find(".", dot + 1)
        return None

    def match(self, name: str) -> Match[OwnerT] | None:
        """The admitting rule for ``name`` with its owner, or None when nothing admits it."""
        hit = self._exact.get(name)
        if hit is not None:
            return Match(name, name, False, hit)
        dot = name.find(".")
        while dot >= 0:
            base = name[dot + 1 :]
            hit = self._wild.get(base)
            if hit is not None:
                return Match(name, "*." + base, True, hit)
            dot = name.find(".", dot + 1)
        return None

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
