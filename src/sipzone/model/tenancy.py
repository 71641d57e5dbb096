"""The reseller chain and the namespace rule that keeps each tenant inside its own names.

The provider is the root; resellers, sub-resellers and customers hang below it.  Brand fields
and the upstream SIP URI inherit down the chain: a tenant that leaves one empty shows its
parent's.

Namespace rule: every name has a *controller*, the owner of the most specific rule covering it
(an exact rule for the name or for one of its parents, or a wildcard admitting it), or the
provider when none does.  A rule for ``N`` or ``*.N`` may be owned by tenant T only when the
controller of ``N`` is T or one of T's ancestors, so a reseller can never claim a name inside
another reseller's space.

Grants and proofs (who may claim a name nobody holds yet): a name no tenant's rule covers is
the provider's.  Inside the provider's own zones a tenant other than the provider creates rules
only within a namespace granted (``tenant grant``) to it, or to a tenant between it and the
owner, by an ancestor holding that namespace; the provider holds all its zones.  Outside them
such a claim is *pending* until the claimant proves control of the name in the DNS (see
``sipzone.api.proof``).  The provider's own writes need neither.

The value rules of a tenant live here too (its name, brand fields and upstream), so that every
interface that writes a tenant (CLI, API, store reads) applies the same ones.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from sipzone.model.errors import (
    BadEmail,
    BadSipURI,
    BadTenantName,
    BadText,
    BadURL,
    Conflict,
    InvalidName,
    InvalidValue,
    NotPermitted,
    TenantCaseTwin,
    TenantCycle,
    UnknownTenant,
)
from sipzone.model.matcher import Matcher
from sipzone.model.names import parse_domain

PROVIDER = "provider"
BRAND_FIELDS = ("brand_name", "support_email", "web_url", "logo_url")

# Lengths are what the store's columns hold (store/schema.py; a test keeps them in step).
MAX_TENANT_NAME = 100
MAX_BRAND_NAME = 200
MAX_EMAIL = 254  # RFC 5321 §4.5.3.1.3: the longest path
MAX_URL = 500
MAX_UPSTREAM = 500

# A tenant name travels in a SIP header (X-Sipzone-Tenant) and in URLs of the API to come:
# an RFC 3261 token subset, starting with a letter or digit.  Unique regardless of case.
_TENANT_NAME = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_TENANT_NAME - 1}}}\Z")
# A SIP or SIPS URI without spaces, controls, quotes or angle brackets (RFC 3261 §25.1).
_SIP_URI = re.compile(r"sips?:[\x21\x23-\x3b\x3d\x3f-\x7e]+\Z", re.IGNORECASE)
# RFC 5322 dot-atom local part.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*\Z")
# Characters no displayed text may hold: controls, line and paragraph separators, surrogates,
# private use, unassigned, and the bidi overrides and isolates that reorder what a reader sees.
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Co", "Cn", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)


def parse_tenant_name(text: str) -> str:
    """A tenant name as given (case kept); raises :class:`BadTenantName`."""
    if not _TENANT_NAME.match(text):
        raise BadTenantName(
            f"tenant name {text!r} must start with a letter or digit and hold only ASCII "
            f"letters, digits, '_', '.', '-' (at most {MAX_TENANT_NAME})"
        )
    return text


def check_new_tenant_name(name: str, existing: Iterable[str]) -> None:
    """Refuse ``name`` when a tenant of that name exists, in any case (``Acme`` vs ``acme``)."""
    key = name.casefold()
    for other in existing:
        if other.casefold() == key:
            if other == name:
                raise Conflict(f"tenant {name!r} exists already")
            raise TenantCaseTwin(
                f"tenant {name!r} differs from the existing {other!r} only in case; tenant "
                "names are unique regardless of case"
            )


def _check_text(what: str, value: str, limit: int) -> str:
    if len(value) > limit:
        raise BadText(f"{what} is {len(value)} characters; it holds at most {limit}")
    for char in value:
        if unicodedata.category(char) in _BAD_CATEGORIES or char in _BIDI_CONTROLS:
            raise BadText(
                f"{what} {value[:40]!r} has the control character U+{ord(char):04X}; it must "
                "be one line of printable text"
            )
    return value


def parse_brand_name(value: str) -> str:
    """A display name: one line of printable text, at most :data:`MAX_BRAND_NAME` characters."""
    return _check_text("brand name", value.strip(), MAX_BRAND_NAME)


MAX_TOKEN_LABEL = 100


def parse_token_label(value: str) -> str:
    """An API token's label: one line of printable text, at most :data:`MAX_TOKEN_LABEL`."""
    value = _check_text("token label", value.strip(), MAX_TOKEN_LABEL)
    if not value:
        raise BadText("token label is empty")
    return value


def parse_support_email(value: str) -> str:
    """A plain ``local@domain`` address (no display name, no comments)."""
    value = _check_text("support email", value.strip(), MAX_EMAIL)
    local, at, domain = value.rpartition("@")
    if not at or not _LOCAL_PART.match(local) or len(local) > 64:
        raise BadEmail(f"support email {value!r} is not an address such as support@example.com")
    try:
        parse_domain(domain)
    except InvalidName as exc:
        raise BadEmail(f"support email {value!r}: {exc}") from None
    return value


def _parse_url(what: str, value: str) -> str:
    value = _check_text(what, value.strip(), MAX_URL)
    if any(c.isspace() for c in value):
        raise BadURL(f"{what} {value!r} has white space")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as exc:
        raise BadURL(f"{what} {value!r} is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise BadURL(f"{what} {value!r} is not an http(s) URL such as https://example.com/")
    if parts.username is not None or parts.password is not None:
        raise BadURL(f"{what} {value!r} carries a user name; give the URL without one")
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        try:
            parse_domain(parts.hostname)
        except InvalidName as exc:
            raise BadURL(f"{what} {value!r}: {exc}") from None
    return value


def parse_web_url(value: str) -> str:
    """The brand's web site: an http(s) URL without user name, at most :data:`MAX_URL`."""
    return _parse_url("web URL", value)


def parse_logo_url(value: str) -> str:
    """The brand's logo: an http(s) URL without user name, at most :data:`MAX_URL`."""
    return _parse_url("logo URL", value)


def parse_upstream(value: str) -> str:
    """The SIP URI of a core (``sip:core.example:5060;transport=tcp``)."""
    value = value.strip()
    if len(value) > MAX_UPSTREAM:
        raise BadSipURI(f"upstream is {len(value)} characters; it holds at most {MAX_UPSTREAM}")
    if not _SIP_URI.match(value):
        raise BadSipURI(f"upstream {value!r} is not a SIP URI such as sip:core.example:5060")
    return value


# One parser per optional tenant field, keyed by the field's name.
FIELD_PARSERS: Mapping[str, Callable[[str], str]] = {
    "brand_name": parse_brand_name,
    "support_email": parse_support_email,
    "web_url": parse_web_url,
    "logo_url": parse_logo_url,
    "upstream": parse_upstream,
}


def parse_tenant_field(name: str, value: str | None) -> str | None:
    """Validate one optional field; None or '' means "not set here" (inherit)."""
    parser = FIELD_PARSERS.get(name)
    if parser is None:
        raise InvalidValue(f"a tenant has no field {name!r}; fields: {', '.join(FIELD_PARSERS)}")
    if value is None or value.strip() == "":
        return None
    return parser(value)


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

    def subtree(self, name: str) -> list[str]:
        """``name`` and every tenant below it: what a token of ``name`` may see."""
        self.view(name)
        return [n for n, v in self._views.items() if name in v.chain]

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


def covers(namespace: str, name: str) -> bool:
    """Whether ``name`` is ``namespace`` or below it (on a label boundary)."""
    return name == namespace or name.endswith("." + namespace)


def zone_of(name: str, zones: Iterable[str]) -> str | None:
    """The provider's zone ``name`` lies in, or None."""
    return next((z for z in zones if covers(z, name)), None)


def needs_proof(
    rule: str,
    owner: str,
    actor: str,
    tree: TenancyTree,
    rules: Matcher[str],
    zones: Iterable[str],
    grants: Iterable[tuple[str, str]],
) -> bool:
    """Whether a new rule ``rule`` for ``owner`` waits for a proof of control (True), may be
    created at once (False), or is refused (:class:`NotPermitted`); see the module docstring.

    Call after :func:`check_may_own`; ``grants`` are ``(tenant, namespace)`` pairs.
    """
    if actor == PROVIDER:
        return False
    wildcard = rule.startswith("*.")
    base = rule[2:] if wildcard else rule
    ctl = controller(base, rules, above=not wildcard)
    if ctl != PROVIDER:
        # Inside a rule held by the owner's chain (check_may_own said so): its holder, or a
        # tenant above the holder, carves names out of it; a customer may not take them from
        # under its reseller's rule by itself.
        if not tree.is_ancestor_or_self(actor, ctl):
            raise NotPermitted(
                f"{base!r} is in the namespace of tenant {ctl!r}; only {ctl!r} or a tenant "
                "above it may add rules there"
            )
        return False
    zone = zone_of(base, zones)
    if zone is None:
        return True
    owner_chain = tree.view(owner).chain
    for holder, namespace in grants:
        if (
            covers(namespace, base)
            and holder in owner_chain
            and tree.is_ancestor_or_self(actor, holder)
        ):
            return False
    raise NotPermitted(
        f"{base!r} is in the provider's zone {zone!r} and no namespace granted to {owner!r} "
        f"or above it (up to {actor!r}) covers it; ask for one with `sipzone tenant grant "
        f"{owner} --namespace NAME`"
    )


def check_may_grant(
    tenant: str,
    namespace: str,
    actor: str,
    tree: TenancyTree,
    zones: Iterable[str],
    grants: Iterable[tuple[str, str]],
) -> None:
    """Raise unless ``actor`` may grant ``namespace`` (a normalised name) to ``tenant``: an
    ancestor of ``tenant`` holding the namespace, inside one of the provider's zones."""
    tree.view(tenant)
    if tenant == PROVIDER or actor == tenant or not tree.is_ancestor_or_self(actor, tenant):
        raise NotPermitted(
            f"tenant {actor!r} may not grant namespaces to {tenant!r}; only tenants above it may"
        )
    if zone_of(namespace, zones) is None:
        raise NotPermitted(
            f"namespace {namespace!r} is outside the provider's zones; outside them a tenant "
            "claims a name by proving control of it in the DNS instead"
        )
    if actor != PROVIDER and not any(
        holder == actor and covers(held, namespace) for holder, held in grants
    ):
        raise NotPermitted(f"tenant {actor!r} holds no namespace covering {namespace!r}")
