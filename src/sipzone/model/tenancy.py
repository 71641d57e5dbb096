"""The reseller chain and the namespace rule that keeps each tenant inside its own names.

The provider is the root; resellers, sub-resellers and customers hang below it.  Brand fields
and the upstream SIP URI inherit down the chain: a tenant that leaves one empty shows its
parent's.

Namespace rule: every name has a *controller*, the owner of the most specific rule covering it
(an exact rule for the name or for one of its parents, or a wildcard admitting it), or the
provider when none does.  A rule for ``N`` or ``*.N`` may be owned by tenant T only when the
controller of ``N`` is T or one of T's ancestors, so a reseller can never claim a name inside
another reseller's space.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from sipzone.model.errors import NotPermitted, TenantCycle, UnknownTenant
from sipzone.model.matcher import Matcher

PROVIDER = "provider"
BRAND_FIELDS = ("brand_name", "support_email", "web_url", "logo_url")


@dataclass(frozen=True, slots=True)
class Tenant:
    """One node of the chain as stored: its own fields only, no inheritance applied."""

    name: str
    parent: str | None = None
    brand_name: str | None = None
    support_email: str | None = None
    web_url: str | None = None
    logo_url: str | None = None
    upstream: str | None = None


@dataclass(frozen=True, slots=True)
class Brand:
    brand_name: str | None
    support_email: str | None
    web_url: str | None
    logo_url: str | None


@dataclass(frozen=True, slots=True)
class TenantView:
    """A tenant as the SIP edge and DNS see it: inheritance applied, chain precomputed."""

    name: str
    chain: tuple[str, ...]  # self first, provider last
    brand: Brand
    upstream: str | None
    header_value: bytes = field(repr=False, default=b"")


class TenancyTree:
    """Immutable tree of tenants; raises on unknown parents and cycles."""

    def __init__(self, tenants: Iterable[Tenant]) -> None:
        self._tenants: dict[str, Tenant] = {t.name: t for t in tenants}
        if PROVIDER not in self._tenants:
            self._tenants[PROVIDER] = Tenant(PROVIDER)
        self._views: dict[str, TenantView] = {}
        for name in self._tenants:
            self._views[name] = self._resolve(name)

    def _chain(self, name: str) -> tuple[str, ...]:
        chain: list[str] = []
        seen: set[str] = set()
        current: str | None = name
        while current is not None:
            if current in seen:
                raise TenantCycle(f"tenant {name!r} is its own ancestor via {current!r}")
            seen.add(current)
            tenant = self._tenants.get(current)
            if tenant is None:
                raise UnknownTenant(f"tenant {current!r} (in the chain of {name!r}) does not exist")
            chain.append(current)
            current = tenant.parent if current != PROVIDER else None
        if chain[-1] != PROVIDER:
            raise UnknownTenant(f"tenant {name!r} does not descend from the provider")
        return tuple(chain)

    def _resolve(self, name: str) -> TenantView:
        chain = self._chain(name)
        nodes = [self._tenants[n] for n in chain]

        def inherit(attr: str) -> str | None:
            for node in nodes:
                value = getattr(node, attr)
                if value:
                    return str(value)
            return None

        brand = Brand(*(inherit(f) for f in BRAND_FIELDS))
        return TenantView(name, chain, brand, inherit("upstream"), name.encode())

    def __contains__(self, name: object) -> bool:
        return name in self._tenants

    def __iter__(self) -> Iterator[Tenant]:
        return iter(self._tenants.values())

    def __len__(self) -> int:
        return len(self._tenants)

    def get(self, name: str) -> Tenant:
        try:
            return self._tenants[name]
        except KeyError:
            raise UnknownTenant(f"tenant {name!r} does not exist") from None

    def view(self, name: str) -> TenantView:
        try:
            return self._views[name]
        except KeyError:
            raise UnknownTenant(f"tenant {name!r} does not exist") from None

    @property
    def views(self) -> Mapping[str, TenantView]:
        return self._views

    def is_ancestor_or_self(self, ancestor: str, name: str) -> bool:
        return ancestor in self.view(name).chain

    def with_tenant(self, tenant: Tenant) -> TenancyTree:
        """A new tree with ``tenant`` added or replaced; raises if that breaks the tree."""
        return TenancyTree([*(t for t in self._tenants.values() if t.name != tenant.name), tenant])


def controller(name: str, rules: Matcher[str], *, above: bool = False) -> str:
    """The tenant that controls ``name`` (a normalised host name) under ``rules``.

    With ``above``, an exact rule for ``name`` itself is not counted: the question is then who
    controls the space a new rule for ``name`` would be carved from.
    """
    owner = None if above else rules.exact_owner(name)
    if owner is not None:
        return owner
    dot = name.find(".")
    while dot >= 0:
        suffix = name[dot + 1 :]
        # At equal depth the wildcard wins: it is what admits names below the suffix.
        owner = rules.wildcard_owner(suffix)
        if owner is None:
            owner = rules.exact_owner(suffix)
        if owner is not None:
            return owner
        dot = name.find(".", dot + 1)
    return PROVIDER


def check_may_own(
    rule: str, owner: str, actor: str, tree: TenancyTree, rules: Matcher[str]
) -> None:
    """Raise :class:`NotPermitted` unless ``actor`` may give rule ``rule`` to ``owner``.

    ``rule`` is a normalised rule text (``*.b.example`` or ``a.b.example``); ``rules`` maps
    every existing rule to its owner's name.
    """
    if not tree.is_ancestor_or_self(actor, owner):
        raise NotPermitted(f"tenant {actor!r} may not act for {owner!r}, which is not below it")
    wildcard = rule.startswith("*.")
    base = rule[2:] if wildcard else rule
    ctl = controller(base, rules, above=not wildcard)
    if not tree.is_ancestor_or_self(ctl, owner):
        raise NotPermitted(
            f"{base!r} is in the namespace of tenant {ctl!r}; {owner!r} is not {ctl!r} or below it"
        )


def check_may_remove(rule_owner: str, actor: str, tree: TenancyTree) -> None:
    if not tree.is_ancestor_or_self(actor, rule_owner):
        raise NotPermitted(
            f"the rule belongs to {rule_owner!r}; tenant {actor!r} may only remove its own "
            "rules or those of tenants below it"
        )
