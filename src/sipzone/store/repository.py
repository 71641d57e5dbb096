"""Every write to the store, one function per operation, and the reads that build snapshots.

Each write runs in one transaction that first bumps the global revision (which also
serialises writers), then validates against the current state, then changes rows and appends a
change-log row saying what, who and when.  A write that fails validation rolls back whole:
nothing changed, revision included.  The rules themselves live in ``sipzone.model`` (one
function per kind of value); this module calls them, so every interface gets the same ones.

Reads check what the services rely on, too: a row an older version or a hand edit left behind
(a VIP with a scope id, a name too long for its service names) is skipped with one log line,
never allowed to crash a server or poison a snapshot.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
import secrets
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sipzone.eventlog import EventLog
from sipzone.model.acme import (
    AcmeAccount,
    AcmePlan,
    AcmeState,
    check_answerable,
    parse_challenge,
)
from sipzone.model.certificates import Certificate, parse_cert_name, parse_certificate
from sipzone.model.debug import KINDS as DEBUG_KINDS
from sipzone.model.debug import DebugSwitch, is_switch_setting, setting_key, without_switches
from sipzone.model.errors import (
    BadAddress,
    Conflict,
    ImportRefused,
    InvalidName,
    InvalidValue,
    NotFound,
    NotPermitted,
    SipzoneError,
    UnknownTenant,
    UnsupportedDatabase,
)
from sipzone.model.health import VIEW_STALE, HealthCheck, UpstreamTargetState
from sipzone.model.mail import SETTING, parse_endpoints, stored_endpoints
from sipzone.model.matcher import Match, Matcher
from sipzone.model.names import (
    MAX_ZONE,
    DomainName,
    RuleName,
    WildcardName,
    check_stored_name,
    check_stored_rule,
    invalid_stored_rules,
    parse_domain,
    parse_rule,
    parse_zone,
)
from sipzone.model.snapshot import (
    DEFAULT_PORTS,
    NAMESERVERS_SETTING,
    Delta,
    NameServer,
    Site,
    Snapshot,
    check_order,
    check_port,
    check_site_host_fits,
    check_weight,
    nameservers_text,
    parse_nameservers,
    parse_network,
    parse_region,
    parse_site_name,
    parse_vip,
    rule_zone,
    zone_holding,
)
from sipzone.model.tenancy import (
    FIELD_PARSERS,
    PROVIDER,
    TenancyTree,
    Tenant,
    TenantView,
    check_may_grant,
    check_may_own,
    check_may_remove,
    check_new_tenant_name,
    needs_proof,
    parse_tenant_field,
    parse_tenant_name,
    parse_token_label,
)
from sipzone.model.trunks import Trunk, TrunkState, parse_trunk, parse_trunk_name
from sipzone.store.feed import notify_sql
from sipzone.store.schema import (
    acme_accounts,
    acme_certificates,
    acme_challenges,
    acme_lease,
    certificates,
    changelog,
    domains,
    grants,
    nodes,
    settings,
    site_views,
    sites,
    state,
    tenants,
    tokens,
    trunk_state,
    trunks,
    upstream_states,
    zones,
)
from sipzone.store.url import DEFAULT_URL, redacted, sqlite_path

__all__ = ["DEFAULT_URL", "Store"]  # DEFAULT_URL lives in store/url.py (no SQLAlchemy there)
# The databases sipzone runs on, by SQLAlchemy driver name (``postgresql://`` means psycopg).
SUPPORTED_DRIVERS = frozenset({"sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg"})
# Ops the change feed can apply incrementally; any other op rebuilds the snapshot whole.
RULE_OPS = frozenset({"domain.add", "domain.remove"})
# Ops that change nothing a snapshot holds (a pending claim is not served): the feed skips them.
INERT_OPS = frozenset({"domain.claim", "token.create", "token.revoke", "tenant.grant"})
INERT_OPS |= {"acme.account"}  # an ACME account key is in no snapshot
# Settings that change no answer (debug switches): a snapshot takes them over without a reload.
SWITCH_OPS = frozenset({"debug.set", "debug.off"})
# Ops that change nothing a zone publishes, so no zone's serial moves.  Health is one of them:
# zone transfers publish the sites as configured (drain counts, probes and `site health` do
# not; see sipzone.dns.xfr).  A rule op moves its own zone's serial (model.snapshot.rule_zone),
# an import those of the zones it added to; any other op moves every zone's.
ZONELESS_OPS = INERT_OPS | {
    "tenant.add", "tenant.update", "tenant.remove", "site.health", "site.check",
    "secret.create", "secret.rotate", "cert.add", "cert.remove", "cert.default",
    "trunk.add", "trunk.remove",
} | SWITCH_OPS  # fmt: skip
TOKEN_PREFIX = "sz_"  # API tokens read "sz_" + 43 characters of base64url (32 random octets)


class StoreNotInitialised(SipzoneError):
    """The store has no schema yet, or an older one: `sipzone init` creates or migrates it."""


class StoreMissing(StoreNotInitialised):
    """A SQLite store's file does not exist (only `sipzone init` creates one)."""


class StoreBusy(SipzoneError):
    """Another write held the store past the busy timeout (SQLite); nothing was written."""


class StoreRefused(SipzoneError):
    """The database answered a statement with an error of another kind."""


class StoreUnreachable(SipzoneError):
    """The database cannot be reached or refused us (server down, wrong address or password)."""


UNDEFINED_TABLE = "42P01"  # PostgreSQL's SQLSTATE for a missing table; SQLite says "no such table"
UNDEFINED_COLUMN = "42703"  # ... for a missing column (an older schema); "no such column"


def store_error(url: str, exc: BaseException) -> SipzoneError:
    """What a database error from ``url`` means for an operator, and what to do about it: a
    missing SQLite file, a store without the schema (`sipzone init`), or one that cannot be
    reached (no advice to run `init` then: it would fail the same way)."""
    shown = redacted(url)
    cause = getattr(exc, "orig", None) or exc
    text = " ".join(str(cause).split())
    path = sqlite_path(url)
    if path is not None and not os.path.exists(path):
        return StoreMissing(
            f"no store at {path!r} (the file does not exist); create one with "
            f"`sipzone init --db {shown}`, or give the right --db"
        )
    if "database is locked" in text:  # SQLite's busy timeout ran out
        return StoreBusy(
            "the store stayed busy with another write (an import?); nothing was written"
        )
    if getattr(cause, "sqlstate", None) == UNDEFINED_TABLE or "no such table" in text:
        return StoreNotInitialised(
            f"the store at {shown} is not initialised (run `sipzone init`): {text}"
        )
    if getattr(cause, "sqlstate", None) == UNDEFINED_COLUMN or "no such column" in text:
        return StoreNotInitialised(
            f"the store at {shown} has an older schema than this sipzone (run `sipzone db "
            f"upgrade`): {text}"
        )
    if isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return StoreUnreachable(
            f"cannot use the store at {shown}: {text}; check that the database runs and that "
            "the URL (host, port, user, password, database) is right"
        )
    return StoreRefused(f"the store at {shown} refused the request: {text}")


class _Present(Exception):
    """Raised inside a write to roll it back: what it would create exists already."""


@dataclass(frozen=True)
class Change:
    revision: int
    at: datetime
    actor: str
    op: str
    subject: str
    detail: dict[str, Any] | None


@dataclass(frozen=True)
class DomainRow:
    name: str
    owner: str
    wildcard: bool
    revision: int
    pending: bool = False  # claimed outside the provider's zones, control not proven yet
    challenge: str | None = None  # the TXT value that proves it (pending rows only)


@dataclass(frozen=True)
class TokenRow:
    id: int
    tenant: str
    label: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class AuditEntry:
    id: int
    revision: int
    at: datetime
    op: str
    subject: str
    tenant: str | None  # the tenant the change is about
    actor_tenant: str | None  # the tenant that made it
    principal: str | None  # token label or shell user
    origin: str | None  # client address, or "shell"
    before: Any
    after: Any


def token_digest(secret: str) -> str:
    """What the store keeps of a token: the hex SHA-256 of its text."""
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ImportReport:
    read: int
    added: int
    unchanged: int


def check_url(url: str) -> sa.URL:
    """The parsed store URL; :class:`UnsupportedDatabase` unless SQLite or PostgreSQL."""
    try:
        parsed = sa.make_url(url)
    except sa.exc.ArgumentError:
        parsed = None
    if parsed is None or parsed.drivername not in SUPPORTED_DRIVERS:
        shown = redacted(url)
        raise UnsupportedDatabase(
            f"store URL {shown!r} is not supported; use sqlite:///FILE or postgresql://USER@HOST/DB"
        )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str, application_name: str = "sipzone") -> Engine:
    """An engine for ``url``; SQLite gets WAL, a busy timeout and foreign keys on, and never
    creates a missing file (only :meth:`Store.init` does); PostgreSQL connections carry
    ``application_name`` (seen in ``pg_stat_activity``) unless the URL sets one."""
    parsed = check_url(url)
    options: dict[str, Any] = {}
    path = sqlite_path(url)
    if path is not None:
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=rw"
        options["creator"] = lambda: sqlite3.connect(uri, uri=True, check_same_thread=False)
    elif parsed.get_backend_name() == "postgresql" and "application_name" not in parsed.query:
        options["connect_args"] = {"application_name": application_name}
    engine = sa.create_engine(parsed, future=True, **options)
    if engine.dialect.name == "sqlite":

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


IMPORT_ERRORS_SHOWN = 20  # a refused import lists this many problems, then stops reading


def import_refusal(errors: list[str]) -> str:
    """The one-line message of a refused import: the first problems, '; ' between them."""
    more = f" (first {IMPORT_ERRORS_SHOWN} shown)" if len(errors) >= IMPORT_ERRORS_SHOWN else ""
    return f"import refused, nothing was added{more}: " + "; ".join(errors)


# Keys of a write's detail that go to the audit columns of its change-log row (see _write).
AUDIT_TENANT, AUDIT_BEFORE, AUDIT_AFTER = "audit:tenant", "audit:before", "audit:after"
AUDIT_OP = "audit:op"  # the op the change log records, when the write turned out another
ZONES_MOVED = "zones:moved"  # the zones an import added to (their serials move), not logged


# A site's fields as add_site and update_site take them, and the column each is stored in
# (ports: one column per transport).
_SITE_FIELDS = {
    "vips": "vips",
    "networks": "networks",
    "host": "host",
    "region": "region",
    "weight": "weight",
    "order": "position",
    "ports": "ports",
    "upstream": "upstream",
}


def _site_columns(
    *,
    vips: Iterable[str],
    networks: Iterable[str],
    host: str | None,
    region: str,
    weight: int,
    order: int | None,
    ports: dict[str, int],
    upstream: str | None,
) -> dict[str, Any]:
    """A site's fields checked and normalised as stored (each failure its own error)."""
    vip_list = [str(parse_vip(v)) for v in vips]
    if not vip_list:
        raise BadAddress("a site needs at least one virtual IP (--vip)")
    check_weight(weight)
    if order is not None:
        check_order(order)
    for transport, port in ports.items():
        check_port(transport, port)
    if not any(ports.values()):
        raise InvalidValue("a site must offer at least one transport (a port other than 0)")
    return {
        "vips": vip_list,
        "networks": [str(parse_network(n)) for n in networks],
        "host": parse_domain(host).text if host else None,
        "region": parse_region(region),
        "weight": weight,
        "order": order,
        "ports": ports,
        "upstream": parse_tenant_field("upstream", upstream),
    }


def _utc(at: datetime) -> datetime:
    """A stored time as UTC (SQLite hands it back without a zone)."""
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


MIGRATIONS = Path(__file__).parent / "migrations"


def schema_head() -> str:
    """The schema revision this sipzone's migrations end at."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def schema_revisions() -> list[str]:
    """Every schema revision this sipzone knows, oldest first."""
    from alembic.script import ScriptDirectory

    walk = ScriptDirectory(str(MIGRATIONS)).walk_revisions()
    return [r.revision for r in walk][::-1]


class _Unchanged(Exception):
    """Raised inside a write that found nothing to change, to roll back its revision."""


class Store:
    """The repository over one database URL."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        actor: str = PROVIDER,
        via: str = "cli",
        *,
        principal: str | None = None,
        origin: str | None = None,
    ) -> None:
        self.url = url
        self.engine = make_engine(url, f"sipzone {via.split(':')[0]}"[:63])
        self.actor = actor
        self.via = via
        self.principal = principal  # who, for the audit trail: token label or shell user
        self.origin = origin  # from where: client address, or "shell"
        # Bad rows met while reading: one line per row and minute (a server reads often).
        self.read_log = EventLog(logging.getLogger("sipzone.store"))

    def close(self) -> None:
        self.engine.dispose()

    def acting(
        self, actor: str, via: str, *, principal: str | None = None, origin: str | None = None
    ) -> Store:
        """This store (same engine and pool) acting as ``actor``: one per API request."""
        other = copy.copy(self)
        other.actor, other.via, other.principal, other.origin = actor, via, principal, origin
        return other

    # ------------------------------------------------------------------ schema

    def init(self) -> int:
        """Create or migrate the schema to head; seed the revision row and the provider."""
        from alembic import command
        from alembic.config import Config

        path = sqlite_path(self.url)
        if path is not None and not os.path.exists(path):
            sqlite3.connect(path).close()  # the one place a store file is created
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
        with self.engine.begin() as conn:
            if conn.execute(sa.select(state.c.revision)).first() is None:
                conn.execute(state.insert().values(id=1, revision=0))
            provider = sa.select(tenants.c.id).where(tenants.c.name == PROVIDER)
            if conn.execute(provider).first() is None:
                conn.execute(tenants.insert().values(name=PROVIDER, parent_id=None))
        return self.revision()

    def upgrade(self) -> tuple[str | None, str]:
        """Migrate an existing store's schema to this sipzone's (never creates a store);
        returns the schema revisions before and after."""
        before = self.schema_version()
        if before is not None and before not in schema_revisions():
            raise StoreNotInitialised(
                f"the store's schema {before!r} is newer than this sipzone knows "
                f"(its newest is {schema_head()!r}); upgrade sipzone, not the store"
            )
        self.init()
        return before, schema_head()

    def _not_initialised(self, cause: object = None) -> SipzoneError:
        if isinstance(cause, BaseException):
            return store_error(self.url, cause)
        return StoreNotInitialised(
            f"the store at {redacted(self.url)} is not initialised (run `sipzone init`)"
        )

    def revision(self) -> int:
        try:
            with self.engine.connect() as conn:
                return self._revision(conn)
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            raise self._not_initialised(exc) from None

    def _revision(self, conn: Connection) -> int:
        rev = conn.execute(sa.select(state.c.revision).where(state.c.id == 1)).scalar()
        if rev is None:
            raise self._not_initialised()
        return int(rev)

    # ------------------------------------------------------------------ the write path

    @contextlib.contextmanager
    def _write(
        self,
        op: str,
        subject: str,
        detail: dict[str, Any] | None = None,
        at_least: int = 0,
    ) -> Iterator[tuple[Connection, int]]:
        """One transaction: bump the revision (to ``at_least`` if that is higher), let the
        caller validate and write, log it."""
        with contextlib.ExitStack() as transaction:
            try:
                conn = transaction.enter_context(self.engine.begin())
                bumped: Any = state.c.revision + 1
                if at_least:
                    bumped = sa.case((bumped < at_least, at_least), else_=bumped)
                rev = conn.execute(
                    state.update()
                    .where(state.c.id == 1)
                    .values(revision=bumped)
                    .returning(state.c.revision)
                ).scalar()
            except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
                raise self._not_initialised(exc) from None
            if rev is None:
                raise self._not_initialised()
            info = detail if detail is not None else {}  # the caller may add to it
            # ... and may say, under these keys, what the audit trail keeps in its own columns:
            # the tenant the change is about, and the object before and after.
            if conn.dialect.name == "postgresql":
                conn.execute(notify_sql(), {"revision": rev})
            yield conn, int(rev)
            op = info.pop(AUDIT_OP, op)
            self._move_serials(conn, rev, op, subject, info.pop(ZONES_MOVED, ()))
            about = info.pop(AUDIT_TENANT, None)
            before = info.pop(AUDIT_BEFORE, None)
            after = info.pop(AUDIT_AFTER, None)
            conn.execute(
                changelog.insert().values(
                    revision=rev,
                    at=datetime.now(UTC),
                    actor=f"{self.actor} ({self.via})",
                    op=op,
                    subject=subject,
                    detail=info or None,
                    tenant=about,
                    actor_tenant=self.actor,
                    principal=self.principal or self.via,
                    origin=self.origin,
                    before=before,
                    after=after,
                )
            )

    def _move_serials(
        self, conn: Connection, rev: int, op: str, subject: str, imported: Iterable[str]
    ) -> None:
        """Set the revision (the SOA serial) of the zones whose records ``op`` changes
        (``imported``: the zones an import added to)."""
        if op in ZONELESS_OPS:
            return
        query = zones.update().values(revision=rev)
        if op in RULE_OPS:
            zone = rule_zone(subject, self._zones(conn))
            if zone is None:
                return
            query = query.where(zones.c.name == zone)
        elif op == "domain.import":
            query = query.where(zones.c.name.in_(list(imported)))
        conn.execute(query)

    def _zone_revisions(self, conn: Connection) -> dict[str, int]:
        return {str(n): int(r) for n, r in conn.execute(sa.select(zones.c.name, zones.c.revision))}

    def _provider_only(self, does: str) -> None:
        """Raise :class:`NotPermitted` unless the provider acts: only it ``does`` this
        (sites, zones and installation settings belong to the whole installation)."""
        if self.actor != PROVIDER:
            raise NotPermitted(f"only the provider {does}; tenant {self.actor!r} may not")

    def _tree(self, conn: Connection) -> TenancyTree:
        return TenancyTree(self._tenant_rows(conn))

    def _tenant_rows(self, conn: Connection) -> list[Tenant]:
        parent = tenants.alias("parent")
        rows = conn.execute(
            sa.select(
                tenants.c.name,
                parent.c.name,
                tenants.c.brand_name,
                tenants.c.support_email,
                tenants.c.web_url,
                tenants.c.logo_url,
                tenants.c.upstream,
            ).outerjoin(parent, tenants.c.parent_id == parent.c.id)
        ).all()
        return [self._stored_tenant(*row) for row in rows]

    def _stored_tenant(self, name: str, parent: str | None, *values: str | None) -> Tenant:
        """A tenant row as read; a field that breaks today's rules is dropped (inherited)."""
        fields: dict[str, str | None] = {}
        for field_name, value in zip(FIELD_PARSERS, values, strict=True):
            try:
                fields[field_name] = parse_tenant_field(field_name, value)
            except InvalidValue as exc:
                self.read_log.warning(
                    f"tenant {name} {field_name}",
                    "store: tenant %r: stored %s ignored: %s",
                    name,
                    field_name,
                    exc,
                )
                fields[field_name] = None
        return Tenant(name, parent, **fields)

    def _tenant_id(self, conn: Connection, name: str) -> int:
        tid = conn.execute(sa.select(tenants.c.id).where(tenants.c.name == name)).scalar()
        if tid is None:
            raise UnknownTenant(f"tenant {name!r} does not exist")
        return int(tid)

    def _rules_near(self, conn: Connection, name: str) -> Matcher[str]:
        """The rules that can decide who controls ``name``: for it and each of its parents."""
        candidates = [name]
        dot = name.find(".")
        while dot >= 0:
            suffix = name[dot + 1 :]
            candidates += [suffix, "*." + suffix]
            dot = name.find(".", dot + 1)
        candidates.append("*." + name)
        rows = conn.execute(
            sa.select(domains.c.name, tenants.c.name)
            .join(tenants, domains.c.owner_id == tenants.c.id)
            .where(domains.c.name.in_(candidates), domains.c.pending == sa.false())
        ).all()
        return Matcher.from_rules((r[0], r[1]) for r in rows)

    # ------------------------------------------------------------------ tenants

    def add_tenant(
        self,
        name: str,
        parent: str = PROVIDER,
        *,
        brand_name: str | None = None,
        support_email: str | None = None,
        web_url: str | None = None,
        logo_url: str | None = None,
        upstream: str | None = None,
    ) -> int:
        name = parse_tenant_name(name)
        given = {
            "brand_name": brand_name,
            "support_email": support_email,
            "web_url": web_url,
            "logo_url": logo_url,
            "upstream": upstream,
        }
        values = {k: parse_tenant_field(k, v) for k, v in given.items()}
        after = {"name": name, "parent": parent, **values}
        detail = {"parent": parent, AUDIT_TENANT: name, AUDIT_AFTER: after}
        with self._write("tenant.add", name, detail) as (conn, rev):
            tree = self._tree(conn)
            check_new_tenant_name(name, (t.name for t in tree))
            tree.get(parent)
            if not tree.is_ancestor_or_self(self.actor, parent):
                raise NotPermitted(f"tenant {self.actor!r} may not add tenants under {parent!r}")
            conn.execute(
                tenants.insert().values(
                    name=name, parent_id=self._tenant_id(conn, parent), **values
                )
            )
            return rev

    def update_tenant(self, name: str, **fields: str | None) -> int:
        """Change some of a tenant's optional fields; None or '' clears one (inherit)."""
        values = {k: parse_tenant_field(k, v) for k, v in fields.items()}
        detail: dict[str, Any] = {**values, AUDIT_TENANT: name, AUDIT_AFTER: dict(values)}
        with self._write("tenant.update", name, detail) as (conn, rev):
            tree = self._tree(conn)
            old = tree.get(name)
            if not tree.is_ancestor_or_self(self.actor, name):
                raise NotPermitted(f"tenant {self.actor!r} may not change {name!r}")
            detail[AUDIT_BEFORE] = {k: getattr(old, k) for k in values}
            conn.execute(tenants.update().where(tenants.c.name == name).values(**values))
            return rev

    def remove_tenant(self, name: str) -> int:
        """Remove a tenant that owns nothing: no SIP domain and no tenant below it (those go
        first, so that nothing is ever left without an owner).  The provider stays."""
        with self._write("tenant.remove", name) as (conn, rev):
            tree = self._tree(conn)
            tree.get(name)
            if name == PROVIDER:
                raise NotPermitted("the provider is the root of every tenant and stays")
            if name == self.actor or not tree.is_ancestor_or_self(self.actor, name):
                raise NotPermitted(f"tenant {self.actor!r} may not remove {name!r}")
            tid = self._tenant_id(conn, name)
            below = (
                conn.execute(
                    sa.select(tenants.c.name)
                    .where(tenants.c.parent_id == tid)
                    .order_by(tenants.c.name)
                )
                .scalars()
                .all()
            )
            owned = conn.execute(
                sa.select(sa.func.count()).select_from(domains).where(domains.c.owner_id == tid)
            ).scalar_one()
            if below or owned:
                held = [f"{owned} SIP domain(s)"] if owned else []
                if below:
                    held.append(
                        "tenant(s) " + ", ".join(below[:5]) + (" ..." if len(below) > 5 else "")
                    )
                raise Conflict(
                    f"tenant {name!r} still owns {' and '.join(held)}; remove or move them first"
                )
            conn.execute(tenants.delete().where(tenants.c.id == tid))
            return rev

    def tenants(self) -> TenancyTree:
        with self.engine.connect() as conn:
            return self._tree(conn)

    # ------------------------------------------------------------------ domains

    def add_domain(self, text: str, owner: str | None = None) -> tuple[RuleName, int]:
        """Add a rule for ``owner`` (default: the actor).  A claim a tenant other than the
        provider makes outside the provider's zones is stored *pending* (see
        :meth:`domain`, :meth:`prove_domain`): logged as ``domain.claim``, not served."""
        return self._add_domain(parse_rule(text), owner or self.actor, exist_ok=False)

    def ensure_domain(self, text: str, owner: str | None = None) -> tuple[RuleName, int, bool]:
        """:meth:`add_domain`, except that the same rule with the same owner is no conflict:
        then nothing is written.  Returns the rule, the revision and whether it was added."""
        rule, owner = parse_rule(text), owner or self.actor
        try:
            return (*self._add_domain(rule, owner, exist_ok=True), True)
        except _Present:
            return rule, self.revision(), False

    def _add_domain(self, rule: RuleName, owner: str, exist_ok: bool) -> tuple[RuleName, int]:
        row = {"name": rule.text, "owner": owner, "wildcard": rule.is_wildcard}
        detail: dict[str, Any] = {"owner": owner, AUDIT_TENANT: owner, AUDIT_AFTER: row}
        with self._write("domain.add", rule.text, detail) as (conn, rev):
            tree = self._tree(conn)
            tree.get(owner)
            existing = conn.execute(
                sa.select(tenants.c.name)
                .join(domains, domains.c.owner_id == tenants.c.id)
                .where(domains.c.name == rule.text)
            ).scalar()
            if existing == owner and exist_ok:
                raise _Present  # rolls the revision back: nothing changed
            if existing is not None:
                raise Conflict(f"{rule.text!r} exists already (owner {existing!r})")
            base = rule.base.text if isinstance(rule, WildcardName) else rule.text
            near = self._rules_near(conn, base)
            check_may_own(rule.text, owner, self.actor, tree, near)
            pending = needs_proof(
                rule.text, owner, self.actor, tree, near, self._zones(conn), self._grants(conn)
            )
            challenge = secrets.token_urlsafe(24) if pending else None
            row["pending"] = pending
            conn.execute(
                domains.insert().values(
                    name=rule.text,
                    owner_id=self._tenant_id(conn, owner),
                    wildcard=rule.is_wildcard,
                    revision=rev,
                    pending=pending,
                    challenge=challenge,
                    rname=rule.text[::-1],
                )
            )
            if pending:
                detail[AUDIT_OP] = "domain.claim"  # not served yet: the feed skips it
            return rule, rev

    def remove_domain(self, text: str) -> tuple[RuleName, int]:
        rule = parse_rule(text)
        detail: dict[str, Any] = {}
        with self._write("domain.remove", rule.text, detail) as (conn, rev):
            found = conn.execute(
                sa.select(tenants.c.name, domains.c.wildcard, domains.c.pending)
                .join(domains, domains.c.owner_id == tenants.c.id)
                .where(domains.c.name == rule.text)
            ).first()
            if found is None:
                raise NotFound(f"{rule.text!r} is not a SIP domain here")
            owner = str(found[0])
            check_may_remove(owner, self.actor, self._tree(conn))
            detail[AUDIT_TENANT] = owner
            detail[AUDIT_BEFORE] = {
                "name": rule.text, "owner": owner, "wildcard": bool(found[1]),
                "pending": bool(found[2]),
            }  # fmt: skip
            conn.execute(domains.delete().where(domains.c.name == rule.text))
            return rule, rev

    def list_domains(self, owner: str | None = None) -> list[DomainRow]:
        query = _DOMAIN_ROWS.order_by(domains.c.name)
        with self.engine.connect() as conn:
            if owner is not None:
                self._tenant_id(conn, owner)
                query = query.where(tenants.c.name == owner)
            return [_domain_row(r) for r in conn.execute(query)]

    def domain_rules(
        self, conn: Connection | None = None, *, pending: bool = False
    ) -> list[tuple[str, str]]:
        """Every rule as ``(rule text, owner name)``: what a snapshot's matcher is built from;
        pending claims only with ``pending``."""
        with contextlib.ExitStack() as stack:
            if conn is None:
                conn = stack.enter_context(self.engine.connect())
            owners = dict(conn.execute(sa.select(tenants.c.id, tenants.c.name)).all())
            query = sa.select(domains.c.name, domains.c.owner_id)
            if not pending:
                query = query.where(domains.c.pending == sa.false())
            return [(name, owners[oid]) for name, oid in conn.execute(query)]

    def import_domains(
        self,
        entries: Sequence[tuple[int, RuleName, str | None]],
        default_owner: str | None = None,
        batch: int = 20_000,
        progress: Any = None,
    ) -> ImportReport:
        """Add many rules in one transaction and one revision: all of them or none.

        Validation (owner, conflicts, the namespace rule with the file's own wildcards in view)
        runs inside the transaction that writes, after it has serialised against every other
        writer, so it sees exactly the state the rows land in: a rule added by someone else
        a moment earlier is a conflict reported with its line, never a silent skip.  A refusal
        lists up to :data:`IMPORT_ERRORS_SHOWN` lines.  Rules already present with the same
        owner are left alone, so an import can be re-run; one that adds nothing leaves the
        revision as it was.

        ``entries`` are ``(line number, parsed rule, owner or None)``; rows are inserted
        ``batch`` per statement; ``progress(n)`` is called as lines are done.
        """
        default_owner = default_owner or self.actor
        detail: dict[str, Any] = {"lines": len(entries)}
        subject = entries[0][1].text if entries else "(empty)"
        pending: dict[str, tuple[str, bool]] = {}
        unchanged = 0
        try:
            with self._write("domain.import", subject, detail) as (conn, rev):
                tree = self._tree(conn)
                owner_ids = dict(conn.execute(sa.select(tenants.c.name, tenants.c.id)).all())
                current = dict(self.domain_rules(conn, pending=True))
                errors: list[str] = []

                def refuse(lineno: int, exc: SipzoneError) -> None:
                    errors.append(f"line {lineno}: {exc}")
                    if len(errors) >= IMPORT_ERRORS_SHOWN:
                        raise ImportRefused(import_refusal(errors))

                for lineno, rule, owner in entries:
                    owner = owner or default_owner
                    if owner not in tree:
                        refuse(lineno, UnknownTenant(f"tenant {owner!r} does not exist"))
                        continue
                    have = current.get(rule.text) or pending.get(rule.text, (None,))[0]
                    if have is None:
                        pending[rule.text] = (owner, rule.is_wildcard)
                    elif have != owner:
                        refuse(lineno, Conflict(f"{rule.text!r} exists already (owner {have!r})"))
                    elif rule.text in current:
                        unchanged += 1
                # The namespace check sees the file whole: a wildcard on line 900 decides who
                # may own a name on line 3, whatever the order.
                rules = Matcher.from_rules(
                    [*self.domain_rules(conn), *((n, o) for n, (o, _) in pending.items())]
                )
                zones, held = self._zones(conn), self._grants(conn)
                for lineno, rule, _owner in entries:
                    if rule.text not in pending:
                        continue
                    try:
                        owner = pending[rule.text][0]
                        check_may_own(rule.text, owner, self.actor, tree, rules)
                        if needs_proof(rule.text, owner, self.actor, tree, rules, zones, held):
                            raise NotPermitted(
                                f"{rule.text!r} is outside the provider's zones: claim it with "
                                "`domain add` and prove control of it in the DNS"
                            )
                    except SipzoneError as exc:
                        refuse(lineno, exc)
                if errors:
                    raise ImportRefused(import_refusal(errors))
                items = list(pending.items())
                if progress is not None:
                    progress(len(entries) - len(items))  # lines with nothing to write are done
                if not items:
                    raise _Unchanged
                for start in range(0, len(items), batch):
                    chunk = items[start : start + batch]
                    conn.execute(
                        domains.insert(),
                        [
                            {
                                "name": n,
                                "owner_id": owner_ids[o],
                                "wildcard": w,
                                "revision": rev,
                                "rname": n[::-1],
                            }
                            for n, (o, w) in chunk
                        ],
                    )
                    if progress is not None:
                        progress(len(chunk))
                touched = {z for n, _ in items if (z := rule_zone(n, zones)) is not None}
                detail.update({"added": len(items), "last": items[-1][0], ZONES_MOVED: touched})
        except _Unchanged:
            pass
        return ImportReport(read=len(entries), added=len(pending), unchanged=unchanged)

    # ------------------------------------------------------------------ sites, zones, email

    def add_site(
        self,
        name: str,
        *,
        vips: Iterable[str],
        region: str,
        networks: Iterable[str] = (),
        host: str | None = None,
        weight: int = 100,
        order: int | None = None,
        ports: dict[str, int] | None = None,
        upstream: str | None = None,
        check: HealthCheck | None = None,
    ) -> int:
        name = parse_site_name(name)
        check = HealthCheck.checked(base=check)
        merged = {**DEFAULT_PORTS, **(ports or {})}
        values = _site_columns(
            vips=vips, networks=networks, host=host, region=region, weight=weight,
            order=order, ports=merged, upstream=upstream,
        )  # fmt: skip
        vip_list, nets, host_name = values["vips"], values["networks"], values["host"]
        region, upstream = values["region"], values["upstream"]
        with self._write("site.add", name) as (conn, rev):
            self._provider_only("manages sites")
            if conn.execute(sa.select(sites.c.id).where(sites.c.name == name)).first():
                raise Conflict(f"site {name!r} exists already")
            check_site_host_fits(name, host_name, conn.execute(sa.select(zones.c.name)).scalars())
            if order is None:
                count = sa.select(sa.func.count()).select_from(sites)
                order = int(conn.execute(count).scalar_one())
            conn.execute(
                sites.insert().values(
                    name=name,
                    region=region,
                    host=host_name,
                    vips=vip_list,
                    networks=nets,
                    port_udp=merged["udp"],
                    port_tcp=merged["tcp"],
                    port_tls=merged["tls"],
                    weight=weight,
                    position=order,
                    upstream=upstream,
                    healthy=True,
                    **_check_columns(check),
                )
            )
            self._check_glue(conn, self._nameservers(conn), self._zones(conn))
            return rev

    def update_site(self, name: str, **fields: Any) -> int:
        """Change some of a site's fields (those given: vips, networks, host, region, weight,
        order, ports as {transport: port}, upstream; host or upstream '' clears it), checked
        as :meth:`add_site` checks them.  Provider only."""
        unknown = set(fields) - set(_SITE_FIELDS)
        if unknown:
            raise InvalidValue(f"a site has no field {sorted(unknown)[0]!r}")
        with self._write("site.update", name, {"fields": sorted(fields)}) as (conn, rev):
            self._provider_only("manages sites")
            row = conn.execute(sa.select(sites).where(sites.c.name == name)).mappings().first()
            if row is None:
                raise NotFound(f"site {name!r} does not exist")
            ports = {t: int(row[f"port_{t}"]) for t in DEFAULT_PORTS}
            ports.update(fields.get("ports") or {})
            given = {**fields, "ports": ports}
            for key in ("host", "upstream"):
                if given.get(key) == "":
                    given[key] = None
            values = _site_columns(
                **{k: given[k] if k in given else row[column] for k, column in _SITE_FIELDS.items()}
            )
            check_site_host_fits(
                name, values["host"], conn.execute(sa.select(zones.c.name)).scalars()
            )
            changes = {_SITE_FIELDS[k]: values[k] for k in _SITE_FIELDS if k != "ports"}
            changes.update({f"port_{t}": p for t, p in values["ports"].items()})
            conn.execute(sites.update().where(sites.c.id == row["id"]).values(**changes))
            self._check_glue(conn, self._nameservers(conn), self._zones(conn))
            return rev

    def remove_site(self, name: str) -> int:
        with self._write("site.remove", name) as (conn, rev):
            self._provider_only("manages sites")
            if conn.execute(sites.delete().where(sites.c.name == name)).rowcount == 0:
                raise NotFound(f"site {name!r} does not exist")
            self._check_glue(conn, self._nameservers(conn), self._zones(conn))
            return rev

    def set_site_health(self, name: str, healthy: bool) -> int:
        with self._write("site.health", name, {"healthy": healthy}) as (conn, rev):
            self._provider_only("manages sites")
            res = conn.execute(sites.update().where(sites.c.name == name).values(healthy=healthy))
            if res.rowcount == 0:
                raise NotFound(f"site {name!r} does not exist")
            return rev

    def list_sites(self) -> list[Site]:
        with self.engine.connect() as conn:
            return self._sites(conn)

    def _sites(self, conn: Connection, zone_names: Sequence[str] | None = None) -> list[Site]:
        """The sites as stored, less what breaks today's rules (logged): a bad VIP or client
        network is left out, a site with a bad host, port, weight or no VIP left is skipped."""
        if zone_names is None:
            zone_names = self._zones(conn)
        rows = conn.execute(sa.select(sites).order_by(sites.c.position, sites.c.name)).mappings()
        out: list[Site] = []
        for row in rows:
            try:
                out.append(self._stored_site(row, zone_names))
            except (SipzoneError, TypeError, ValueError) as exc:
                name = row["name"]
                self.read_log.warning(f"site {name}", "store: site %r skipped: %s", name, exc)
        return out

    def _stored_site(self, row: sa.RowMapping, zone_names: Sequence[str]) -> Site:
        name = str(row["name"])

        def each(kind: str, values: Iterable[object], parse: Any) -> tuple[Any, ...]:
            kept = []
            for value in values:
                try:
                    kept.append(parse(str(value)))
                except InvalidValue as exc:
                    self.read_log.warning(
                        f"site {name} {kind} {value}",
                        "store: site %r: stored %s left out: %s",
                        name,
                        kind,
                        exc,
                    )
            return tuple(kept)

        vips = each("virtual IP", row["vips"], parse_vip)
        if not vips:
            raise BadAddress("no usable virtual IP")
        host = row["host"]
        if host is not None:
            check_stored_name(host)
        check_site_host_fits(name, host, zone_names)
        ports = {"udp": row["port_udp"], "tcp": row["port_tcp"], "tls": row["port_tls"]}
        for transport, port in ports.items():
            check_port(transport, int(port))
        upstream = row["upstream"]
        try:
            upstream = parse_tenant_field("upstream", upstream)
        except InvalidValue as exc:
            self.read_log.warning(
                f"site {name} upstream", "store: site %r: upstream ignored: %s", name, exc
            )
            upstream = None
        return Site(
            name=name,
            region=str(row["region"]),
            vips=vips,
            host=host,
            ports=ports,
            networks=each("client network", row["networks"], parse_network),
            weight=check_weight(int(row["weight"])),
            order=int(row["position"]),
            upstream=upstream,
            healthy=bool(row["healthy"]),
            check=self._stored_check(name, row),
            drained=bool(row["drained"]),
        )

    def _zones(self, conn: Connection) -> list[str]:
        """The zones as stored, less any name the DNS could not serve (logged)."""
        out = []
        for name in conn.execute(sa.select(zones.c.name).order_by(zones.c.name)).scalars():
            try:
                check_stored_name(name, MAX_ZONE)
            except InvalidName as exc:
                self.read_log.warning(f"zone {name}", "store: zone %r skipped: %s", name, exc)
                continue
            out.append(name)
        return out

    def add_zone(self, text: str) -> tuple[DomainName, int]:
        zone = parse_zone(text)
        with self._write("zone.add", zone.text) as (conn, rev):
            self._provider_only("manages zones")
            if conn.execute(sa.select(zones.c.id).where(zones.c.name == zone.text)).first():
                raise Conflict(f"zone {zone.text!r} exists already")
            hostless = sa.select(sites.c.name).where(sites.c.host.is_(None))
            for site_name in conn.execute(hostless).scalars():
                check_site_host_fits(site_name, None, [zone.text])
            # With no name server stored yet the zone lists the old NS (see Records) and the
            # CLI says so; with some, an in-zone one must have its addresses.
            zone_names = [*self._zones(conn), zone.text]
            self._check_glue(conn, self._nameservers(conn), zone_names)
            conn.execute(zones.insert().values(name=zone.text))
            return zone, rev

    # The name servers every zone lists as NS (the hosts that answer its DNS queries): one
    # installation setting, since every node serves every zone from the same snapshot.

    def add_nameserver(self, text: str, addresses: Iterable[str] = ()) -> int:
        name = parse_domain(text).text
        addrs = tuple(dict.fromkeys(parse_vip(a, "name server address") for a in addresses))
        detail = {"addresses": [str(a) for a in addrs]}
        with self._write("nameserver.add", name, detail) as (conn, rev):
            self._provider_only("manages name servers")
            servers = self._nameservers(conn)
            if any(s.name == name for s in servers):
                raise Conflict(f"name server {name!r} exists already")
            servers = (*servers, NameServer(name, addrs))
            self._check_glue(conn, servers, self._zones(conn))
            self._set_nameservers(conn, servers)
            return rev

    def remove_nameserver(self, text: str) -> int:
        name = parse_domain(text).text
        with self._write("nameserver.remove", name) as (conn, rev):
            self._provider_only("manages name servers")
            servers = self._nameservers(conn)
            kept = tuple(s for s in servers if s.name != name)
            if len(kept) == len(servers):
                raise NotFound(f"name server {name!r} does not exist")
            if not kept and self._zones(conn):
                raise InvalidValue(
                    f"{name!r} is the last name server and the zones need one: add another first"
                )
            self._set_nameservers(conn, kept)
            return rev

    def nameservers(self) -> tuple[NameServer, ...]:
        with self.engine.connect() as conn:
            return self._nameservers(conn)

    def _nameservers(self, conn: Connection) -> tuple[NameServer, ...]:
        """The stored name servers; a value that no longer parses is logged and left out."""
        select = sa.select(settings.c.value).where(settings.c.key == NAMESERVERS_SETTING)
        text = conn.execute(select).scalar()
        if not text:
            return ()
        try:
            return parse_nameservers(text)
        except (InvalidValue, ValueError) as exc:
            self.read_log.warning("setting nameservers", "store: nameservers ignored: %s", exc)
            return ()

    @staticmethod
    def _set_nameservers(conn: Connection, servers: Sequence[NameServer]) -> None:
        conn.execute(settings.delete().where(settings.c.key == NAMESERVERS_SETTING))
        if servers:
            value = nameservers_text(servers)
            conn.execute(settings.insert().values(key=NAMESERVERS_SETTING, value=value))

    @staticmethod
    def _check_glue(
        conn: Connection, servers: Sequence[NameServer], zone_names: Sequence[str]
    ) -> None:
        """A name server inside one of the zones must have addresses there: its own, or those of
        the site whose SIP host it is (never both, which would be two address sets).  Checked
        on every write that changes names, zones or site hosts."""
        rows = conn.execute(sa.select(sites.c.name, sites.c.host)).all()
        for server in servers:
            zone = zone_holding(server.name, zone_names)
            if zone is None:
                continue
            site = next((n for n, h in rows if (h or f"{n}.{zone}") == server.name), None)
            if site is not None and server.addresses:
                raise Conflict(
                    f"name server {server.name!r} would be site {site!r}'s SIP host too, whose "
                    "addresses are the site's virtual IPs: a name server that is a site's host "
                    "has no --address of its own"
                )
            if site is None and not server.addresses:
                raise InvalidValue(
                    f"name server {server.name!r} is in zone {zone!r} and would have no address "
                    "there for resolvers to reach it: it needs --address IP (or to be a site's "
                    "SIP host)"
                )

    def remove_zone(self, text: str) -> int:
        zone = parse_domain(text)
        with self._write("zone.remove", zone.text) as (conn, rev):
            self._provider_only("manages zones")
            if conn.execute(zones.delete().where(zones.c.name == zone.text)).rowcount == 0:
                raise NotFound(f"zone {zone.text!r} does not exist")
            return rev

    def list_zones(self) -> list[str]:
        with self.engine.connect() as conn:
            return list(conn.execute(sa.select(zones.c.name).order_by(zones.c.name)).scalars())

    def set_email_domain(
        self,
        text: str,
        mx: str | None = None,
        imap: Sequence[str] = (),
        submission: Sequence[str] = (),
    ) -> tuple[DomainName, int]:
        """The installation's one email domain, its MX and its voicemail store's IMAP and
        submission endpoints (``[SITE=][HOST:]PORT``, see :mod:`sipzone.model.mail`): a second
        call replaces the first whole."""
        name = parse_domain(text)
        mx_name = parse_domain(mx).text if mx else None
        endpoints = {
            "imap": parse_endpoints("imap", imap),
            "submission": parse_endpoints("submission", submission),
        }
        detail = {"mx": mx_name, **{s: [e.text for e in eps] for s, eps in endpoints.items()}}
        with self._write("email.set", name.text, detail) as (conn, rev):
            self._provider_only("sets the email domain")
            known = set(conn.execute(sa.select(sites.c.name)).scalars())
            for service, eps in endpoints.items():
                for endpoint in eps:
                    if endpoint.site is not None and endpoint.site not in known:
                        raise NotFound(
                            f"--{service} {endpoint.text!r}: site {endpoint.site!r} does not exist"
                        )
            values = [("email_domain", name.text), ("email_mx", mx_name)]
            values += [
                (SETTING[s], " ".join(e.text for e in eps) or None) for s, eps in endpoints.items()
            ]
            for key, value in values:
                conn.execute(settings.delete().where(settings.c.key == key))
                if value is not None:
                    conn.execute(settings.insert().values(key=key, value=value))
            return name, rev

    def settings(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(settings.c.key, settings.c.value)).all())

    # Debug switches (sipzone.model.debug): settings, so every node follows them through the
    # change feed; provider only, as they log any tenant's traffic.

    def set_debug(self, switch: DebugSwitch) -> int:
        """Turn ``switch`` on (replacing the one of its kind); returns the revision."""
        key, value = switch.setting()
        with self._write("debug.set", switch.kind, {"switch": switch.describe()}) as (conn, rev):
            self._provider_only("switches debug logging")
            conn.execute(settings.delete().where(settings.c.key == key))
            conn.execute(settings.insert().values(key=key, value=value))
            return rev

    def debug_off(self, kinds: Sequence[str] = DEBUG_KINDS) -> int:
        """Turn the debug switches of ``kinds`` off; returns the revision."""
        keys = [setting_key(kind) for kind in kinds]
        with self._write("debug.off", ",".join(kinds)) as (conn, rev):
            self._provider_only("switches debug logging")
            conn.execute(settings.delete().where(settings.c.key.in_(keys)))
            return rev

    # A secret setting (the SIP branch key) is 32 random octets in hex.  Its value never enters
    # the change log, and no command prints it.

    def ensure_secret(self, key: str) -> bool:
        """Create the secret setting ``key`` unless it exists; True when it was created."""
        if key in self.settings():
            return False  # the common case: no write, no new revision
        try:
            with self._write("secret.create", key) as (conn, _rev):
                if conn.execute(sa.select(settings.c.key).where(settings.c.key == key)).first():
                    raise _Present  # another process created it meanwhile: roll back
                conn.execute(settings.insert().values(key=key, value=secrets.token_bytes(32).hex()))
        except _Present:
            return False
        return True

    def rotate_secret(self, key: str, previous_key: str) -> int:
        """A new value for the secret setting ``key``; the old one moves to ``previous_key``
        (still accepted for what it signed), the one before it is gone.  Provider only."""
        with self._write("secret.rotate", key) as (conn, rev):
            self._provider_only("rotates installation secrets")
            current = conn.execute(
                sa.select(settings.c.value).where(settings.c.key == key)
            ).scalar()
            conn.execute(settings.delete().where(settings.c.key.in_((key, previous_key))))
            conn.execute(settings.insert().values(key=key, value=secrets.token_bytes(32).hex()))
            if current is not None:
                conn.execute(settings.insert().values(key=previous_key, value=current))
            return rev

    # ------------------------------------------------------------------ TLS certificates
    # The key is stored beside its chain and goes into snapshots (every node serves it); it
    # never enters the change log, and nothing here prints or logs it.

    def add_certificate(
        self, name: str, chain: str | bytes, key: str | bytes, acme: AcmePlan | None = None
    ) -> tuple[Certificate, int, bool]:
        """Store certificate ``name`` (validated now: see ``model/certificates.py``); an
        existing ``name`` is replaced in place, keeping its default mark.  Returns the
        certificate, the revision and whether it replaced one.  ``acme`` (what the certificate
        was ordered with) makes it renew itself; None makes it one managed by hand."""
        cert = parse_certificate(name, chain, key, now=datetime.now(UTC))
        detail: dict[str, Any] = {
            "names": list(cert.names),
            "serial": f"{cert.serial:x}",
            "not_after": cert.not_after.isoformat(),
        }
        with self._write("cert.add", cert.name, detail) as (conn, rev):
            self._provider_only("manages TLS certificates")
            values = {"chain_pem": cert.chain_pem, "key_pem": cert.key_pem}
            where = certificates.c.name == cert.name
            replaced = conn.execute(certificates.update().where(where).values(**values)).rowcount
            if not replaced:
                conn.execute(
                    certificates.insert().values(name=cert.name, is_default=False, **values)
                )
            detail["replaced"] = bool(replaced)
            self._set_acme_plan(conn, cert.name, acme)
            return cert, rev, bool(replaced)

    def remove_certificate(self, name: str) -> int:
        """Remove certificate ``name``; when it was the default, the first added is next."""
        name = parse_cert_name(name)
        with self._write("cert.remove", name) as (conn, rev):
            self._provider_only("manages TLS certificates")
            if conn.execute(certificates.delete().where(certificates.c.name == name)).rowcount == 0:
                raise NotFound(f"certificate {name!r} does not exist")
            self._set_acme_plan(conn, name, None)
            return rev

    def set_default_certificate(self, name: str) -> int:
        """Make ``name`` the certificate for handshakes no other certificate's names match."""
        name = parse_cert_name(name)
        with self._write("cert.default", name) as (conn, rev):
            self._provider_only("manages TLS certificates")
            if not conn.execute(
                sa.select(certificates.c.id).where(certificates.c.name == name)
            ).first():
                raise NotFound(f"certificate {name!r} does not exist")
            conn.execute(certificates.update().values(is_default=certificates.c.name == name))
            return rev

    def list_certificates(self) -> list[Certificate]:
        """The stored certificates, the default first (see :meth:`_certificates`)."""
        with self.engine.connect() as conn:
            return self._certificates(conn)

    def _certificates(self, conn: Connection) -> list[Certificate]:
        """The certificates as stored, the default one first (the one marked, else the first
        added), then in the order added; a row that no longer parses or whose key does not
        match is skipped, an expired one kept (both logged)."""
        rows = conn.execute(
            sa.select(certificates).order_by(certificates.c.is_default.desc(), certificates.c.id)
        ).mappings()
        out = []
        now = datetime.now(UTC)
        for row in rows:
            name = str(row["name"])
            try:
                cert = parse_certificate(name, row["chain_pem"], row["key_pem"])
            except SipzoneError as exc:
                self.read_log.warning(
                    f"certificate {name}", "store: certificate %r skipped: %s", name, exc
                )
                continue
            if cert.not_after < now:
                self.read_log.warning(
                    f"certificate {name} expired",
                    "store: certificate %r expired at %s; still served until replaced",
                    name,
                    cert.not_after.isoformat(),
                )
            out.append(cert)
        return out

    # ------------------------------------------------------------------ trunks

    def add_trunk(
        self,
        name: str,
        targets: list[str] | tuple[str, ...],
        base: str,
        options_interval: int | None = None,
        profile: str = "sip",
        sbc_header: str | None = None,
    ) -> tuple[Trunk, int, bool]:
        """Store trunk ``name`` (validated: ``model/trunks.py``); an existing ``name`` is
        replaced.  Returns the trunk, the revision and whether it replaced one."""
        if options_interval is None:
            trunk = parse_trunk(name, targets, base, profile=profile, sbc_header=sbc_header)
        else:
            trunk = parse_trunk(name, targets, base, options_interval, profile, sbc_header)
        values = {
            "targets": list(trunk.targets),
            "base": trunk.base,
            "options_interval": trunk.options_interval,
            "profile": trunk.profile,
            "sbc_header": trunk.sbc_header,
        }
        detail: dict[str, Any] = dict(values)
        with self._write("trunk.add", trunk.name, detail) as (conn, rev):
            self._provider_only("manages trunks")
            where = trunks.c.name == trunk.name
            replaced = conn.execute(trunks.update().where(where).values(**values)).rowcount
            if not replaced:
                conn.execute(trunks.insert().values(name=trunk.name, **values))
            detail["replaced"] = bool(replaced)
            return trunk, rev, bool(replaced)

    def remove_trunk(self, name: str) -> int:
        """Remove trunk ``name`` and what the edges saw of it."""
        name = parse_trunk_name(name)
        with self._write("trunk.remove", name) as (conn, rev):
            self._provider_only("manages trunks")
            if conn.execute(trunks.delete().where(trunks.c.name == name)).rowcount == 0:
                raise NotFound(f"trunk {name!r} does not exist")
            conn.execute(trunk_state.delete().where(trunk_state.c.trunk == name))
            return rev

    def list_trunks(self) -> list[Trunk]:
        """The stored trunks, by name."""
        with self.engine.connect() as conn:
            return self._trunks(conn)

    def _trunks(self, conn: Connection) -> list[Trunk]:
        """The trunks as stored; a row that no longer passes the checks is skipped (logged)."""
        out = []
        for row in conn.execute(sa.select(trunks).order_by(trunks.c.name)).mappings():
            name = str(row["name"])
            try:
                out.append(
                    parse_trunk(
                        name,
                        list(row["targets"]),
                        row["base"],
                        row["options_interval"],
                        row["profile"],
                        row["sbc_header"],
                    )
                )
            except (SipzoneError, TypeError) as exc:
                self.read_log.warning(f"trunk {name}", "store: trunk %r skipped: %s", name, exc)
        return out

    def record_trunk_states(self, node: str, observed: Sequence[TrunkState]) -> None:
        """What node ``node`` saw of trunk targets, replacing what it saw before.  These are
        observations, not configuration: no revision, no change log, no snapshot."""
        with self.engine.begin() as conn:
            for seen in observed:
                key = (
                    (trunk_state.c.trunk == seen.trunk)
                    & (trunk_state.c.target == seen.target)
                    & (trunk_state.c.node == node)
                )
                conn.execute(trunk_state.delete().where(key))
                conn.execute(
                    trunk_state.insert().values(
                        trunk=seen.trunk,
                        target=seen.target,
                        node=node,
                        up=seen.up,
                        last_response=seen.last_response[:100],
                        latency_ms=seen.latency_ms,
                        checked_at=seen.checked_at,
                        changed_at=seen.changed_at,
                        unavailable_until=seen.unavailable_until,
                    )
                )

    def trunk_states(self) -> list[tuple[str, TrunkState]]:
        """What the edges last saw of each trunk target: (node, state), by trunk and target."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(trunk_state).order_by(
                    trunk_state.c.trunk, trunk_state.c.target, trunk_state.c.node
                )
            ).mappings()
            return [
                (
                    str(r["node"]),
                    TrunkState(
                        r["trunk"],
                        r["target"],
                        bool(r["up"]),
                        r["last_response"],
                        r["latency_ms"],
                        _aware(r["checked_at"]),
                        _aware(r["changed_at"]),
                        _aware(r["unavailable_until"]) if r["unavailable_until"] else None,
                    ),
                )
                for r in rows
            ]

    # ------------------------------------------------------------------ ACME
    # An account's key is kept like a certificate's: never in the change log, never printed.
    # Challenge values go into snapshots (every node's DNS answers them, secondaries get
    # NOTIFY); renewal state and the lease are in no snapshot and bump no revision.

    def acme_account(self, directory: str, email: str) -> AcmeAccount | None:
        """The account registered at ``directory`` for ``email``, or None."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(acme_accounts.c.key_pem, acme_accounts.c.url).where(
                    acme_accounts.c.directory == directory, acme_accounts.c.email == email
                )
            ).first()
        return None if row is None else AcmeAccount(directory, email, str(row[0]), str(row[1]))

    def save_acme_account(self, account: AcmeAccount) -> int:
        """Keep ``account`` (registered at its CA), replacing one for the same directory and
        email."""
        with self._write("acme.account", account.email, {"directory": account.directory}) as (
            conn,
            rev,
        ):
            self._provider_only("manages TLS certificates")
            where = sa.and_(
                acme_accounts.c.directory == account.directory,
                acme_accounts.c.email == account.email,
            )
            values = {"key_pem": account.key_pem, "url": account.url}
            if not conn.execute(acme_accounts.update().where(where).values(**values)).rowcount:
                conn.execute(
                    acme_accounts.insert().values(
                        directory=account.directory, email=account.email, **values
                    )
                )
            return rev

    def _set_acme_plan(self, conn: Connection, name: str, plan: AcmePlan | None) -> None:
        """Make certificate ``name`` renew itself with ``plan``, or (None) be managed by hand."""
        conn.execute(acme_certificates.delete().where(acme_certificates.c.name == name))
        if plan is None:
            return
        account = conn.execute(
            sa.select(acme_accounts.c.id).where(
                acme_accounts.c.directory == plan.directory, acme_accounts.c.email == plan.email
            )
        ).scalar()
        if account is None:
            raise NotFound(f"no ACME account for {plan.email} at {plan.directory}")
        conn.execute(
            acme_certificates.insert().values(
                name=name,
                account_id=account,
                domains=list(plan.domains),
                key_type=plan.key_type,
                last_renewal=datetime.now(UTC),
                failures=0,
            )
        )

    def acme_certificates(self) -> list[AcmeState]:
        """The certificates that renew themselves: what they are ordered with, how renewals
        went."""
        a, c = acme_accounts, acme_certificates
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(c, a.c.directory, a.c.email).join(a, a.c.id == c.c.account_id)
            ).mappings()
            return [
                AcmeState(
                    AcmePlan(r["directory"], r["email"], tuple(r["domains"]), r["key_type"]),
                    name=r["name"],
                    last_renewal=_aware(r["last_renewal"]) if r["last_renewal"] else None,
                    failures=int(r["failures"]),
                    next_attempt=_aware(r["next_attempt"]) if r["next_attempt"] else None,
                    last_error=r["last_error"],
                )
                for r in rows
            ]

    # ------------------------------------------------------------------ restore

    def restore(self, document: Mapping[str, Any], secret: Callable[[str], bool]) -> int:
        """Fill an empty store from a dump (sipzone.store.backup) in one transaction, every
        value checked as the commands check it; returns the revision, the dump's own unless
        this store has gone past it.  ``secret(key)`` says which settings are secrets (kept
        as they are here unless the dump carries them).  Provider only."""
        detail = {"revision": document["revision"], "domains": len(document["domains"])}
        at_least = int(document["revision"])
        with self._write("store.restore", "dump", detail, at_least=at_least) as (conn, rev):
            self._provider_only("restores the store")
            self._check_empty(conn, secret)
            self._restore_tenants(conn, document["tenants"])
            tree = self._tree(conn)
            rules: dict[str, tuple[str, bool, str | None]] = {}  # owner, wildcard, challenge
            for entry in document["domains"]:
                rule, owner = parse_rule(str(entry["name"])), str(entry["owner"])
                tree.get(owner)
                if rule.text in rules:
                    raise Conflict(f"the dump holds {rule.text!r} twice")
                challenge = entry.get("challenge") if entry.get("pending") else None
                if entry.get("pending") and not (isinstance(challenge, str) and challenge):
                    raise InvalidValue(f"{rule.text!r}: a pending claim needs its challenge")
                rules[rule.text] = (owner, rule.is_wildcard, challenge)
            matcher = Matcher.from_rules((n, o) for n, (o, _, _) in rules.items())
            for name, (owner, _, _) in rules.items():
                check_may_own(name, owner, PROVIDER, tree, matcher)
            ids = dict(conn.execute(sa.select(tenants.c.name, tenants.c.id)).all())
            rows = [
                {
                    "name": n, "owner_id": ids[o], "wildcard": w, "revision": rev,
                    "rname": n[::-1], "pending": c is not None, "challenge": c,
                }
                for n, (o, w, c) in rules.items()
            ]  # fmt: skip
            for start in range(0, len(rows), 20_000):
                conn.execute(domains.insert(), rows[start : start + 20_000])
            zone_names = [parse_zone(str(z)).text for z in document["zones"]]
            if zone_names:
                conn.execute(zones.insert(), [{"name": z} for z in zone_names])
            for site in document["sites"]:
                self._restore_site(conn, site, zone_names)
            for trunk in document.get("trunks", []):
                self._restore_trunk(conn, trunk)
            for key, value in document["settings"].items():
                if not isinstance(value, str) or not isinstance(key, str):
                    raise InvalidValue(f"setting {key!r}: not a string")
                conn.execute(settings.delete().where(settings.c.key == key))
                conn.execute(settings.insert().values(key=key, value=value))
            self._restore_grants_tokens(conn, document, ids)
            for entry in document.get("certificates", []):
                if "key_pem" not in entry:
                    continue  # a dump without secrets names it only: `cert add` it again
                cert = parse_certificate(str(entry["name"]), entry["chain_pem"], entry["key_pem"])
                conn.execute(
                    certificates.insert().values(
                        name=cert.name, chain_pem=cert.chain_pem, key_pem=cert.key_pem,
                        is_default=bool(entry.get("default")),
                    )
                )  # fmt: skip
            return rev

    def _restore_grants_tokens(
        self, conn: Connection, document: Mapping[str, Any], ids: Mapping[str, int]
    ) -> None:
        """A dump's namespace grants and (with secrets) API tokens, their tenants restored."""
        for entry in document.get("grants", []):
            tenant = str(entry["tenant"])
            if tenant not in ids:
                raise UnknownTenant(f"grant: tenant {tenant!r} is not in the dump")
            conn.execute(
                grants.insert().values(
                    tenant_id=ids[tenant],
                    namespace=parse_domain(str(entry["namespace"])).text,
                    granted_by=str(entry.get("granted_by") or PROVIDER),
                )
            )
        for entry in document.get("tokens", []):
            tenant, digest = str(entry["tenant"]), str(entry["digest"])
            if tenant not in ids:
                raise UnknownTenant(f"token: tenant {tenant!r} is not in the dump")
            if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise InvalidValue("token: its digest is not a SHA-256 in hex")
            times = {
                k: datetime.fromisoformat(str(entry[k])) if entry.get(k) else None
                for k in ("created_at", "expires_at", "revoked_at")
            }
            if times["created_at"] is None:
                raise InvalidValue("token: it has no creation time")
            conn.execute(
                tokens.insert().values(
                    tenant_id=ids[tenant],
                    label=parse_token_label(str(entry["label"])),
                    digest=digest,
                    **times,
                )
            )

    def _check_empty(self, conn: Connection, secret: Callable[[str], bool]) -> None:
        held = {
            "tenants": conn.execute(sa.select(sa.func.count()).select_from(tenants)).scalar_one()
            - 1,
            "SIP domains": conn.execute(
                sa.select(sa.func.count()).select_from(domains)
            ).scalar_one(),
            "sites": conn.execute(sa.select(sa.func.count()).select_from(sites)).scalar_one(),
            "zones": conn.execute(sa.select(sa.func.count()).select_from(zones)).scalar_one(),
            "settings": sum(
                1 for k in conn.execute(sa.select(settings.c.key)).scalars() if not secret(k)
            ),
            "certificates": conn.execute(
                sa.select(sa.func.count()).select_from(certificates)
            ).scalar_one(),
            "API tokens": conn.execute(sa.select(sa.func.count()).select_from(tokens)).scalar_one(),
            "trunks": conn.execute(sa.select(sa.func.count()).select_from(trunks)).scalar_one(),
        }
        found = [f"{n} {what}" for what, n in held.items() if n]
        if found:
            raise Conflict(
                f"a restore needs an empty store, and this one holds {', '.join(found)}; "
                "restore into a new one (`sipzone init --db NEW`)"
            )

    def _restore_tenants(self, conn: Connection, entries: Sequence[Mapping[str, Any]]) -> None:
        """Tenants in the dump's order (each after its parent); the provider's own fields."""
        names: list[str] = [PROVIDER]
        for entry in entries:
            name = str(entry["name"])
            values = {f: parse_tenant_field(f, entry.get(f)) for f in FIELD_PARSERS}
            if name == PROVIDER:
                if entry.get("parent") is not None:
                    raise InvalidValue("the provider has no parent")
                conn.execute(tenants.update().where(tenants.c.name == PROVIDER).values(**values))
                continue
            name = parse_tenant_name(name)
            check_new_tenant_name(name, names)
            parent = entry.get("parent")
            if parent not in names:
                raise UnknownTenant(
                    f"tenant {name!r}: parent {parent!r} does not come before it in the dump"
                )
            conn.execute(
                tenants.insert().values(
                    name=name, parent_id=self._tenant_id(conn, str(parent)), **values
                )
            )
            names.append(name)

    def _restore_site(
        self, conn: Connection, site: Mapping[str, Any], zone_names: list[str]
    ) -> None:
        name = parse_site_name(str(site["name"]))
        ports = {t: int(site["ports"][t]) for t in DEFAULT_PORTS}
        values = _site_columns(
            vips=site["vips"], networks=site["networks"], host=site.get("host"),
            region=str(site["region"]), weight=int(site["weight"]), order=int(site["order"]),
            ports=ports, upstream=site.get("upstream"),
        )  # fmt: skip
        check_site_host_fits(name, values["host"], zone_names)
        if conn.execute(sa.select(sites.c.id).where(sites.c.name == name)).first():
            raise Conflict(f"the dump holds site {name!r} twice")
        conn.execute(
            sites.insert().values(
                name=name, region=values["region"], host=values["host"], vips=values["vips"],
                networks=values["networks"], weight=values["weight"], position=values["order"],
                upstream=values["upstream"], healthy=bool(site["healthy"]),
                **{f"port_{t}": p for t, p in ports.items()},
            )
        )  # fmt: skip

    def _restore_trunk(self, conn: Connection, entry: Any) -> None:
        """One trunk of a dump, checked as ``trunk add`` checks it."""
        fields = ("name", "targets", "base", "options_interval", "profile")
        if not isinstance(entry, Mapping) or any(f not in entry for f in fields):
            raise InvalidValue(f"trunk: an entry needs {', '.join(fields)}")
        targets, interval = entry["targets"], entry["options_interval"]
        if not isinstance(targets, list) or not all(isinstance(t, str) for t in targets):
            raise InvalidValue(f"trunk {str(entry['name'])[:100]!r}: targets must be URIs")
        if not isinstance(interval, int) or isinstance(interval, bool):
            raise InvalidValue(f"trunk {str(entry['name'])[:100]!r}: options_interval: a number")
        sbc = entry.get("sbc_header")
        trunk = parse_trunk(
            str(entry["name"]), targets, str(entry["base"]), interval, str(entry["profile"]),
            None if sbc is None else str(sbc),
        )  # fmt: skip
        if conn.execute(sa.select(trunks.c.id).where(trunks.c.name == trunk.name)).first():
            raise Conflict(f"the dump holds trunk {trunk.name!r} twice")
        conn.execute(
            trunks.insert().values(
                name=trunk.name, targets=list(trunk.targets), base=trunk.base,
                options_interval=trunk.options_interval, profile=trunk.profile,
                sbc_header=trunk.sbc_header,
            )
        )  # fmt: skip

    # ------------------------------------------------------------------ status

    def schema_version(self) -> str | None:
        """The Alembic revision the store's schema is at (None: no schema yet)."""
        try:
            with self.engine.connect() as conn:
                return conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        except (sa.exc.OperationalError, sa.exc.ProgrammingError) as exc:
            error = store_error(self.url, exc)
            if isinstance(error, StoreNotInitialised) and not isinstance(error, StoreMissing):
                return None
            raise error from None

    def status(self) -> dict[str, Any]:
        """What the store holds, in one transaction: revision, counts, the last change."""
        with self.engine.connect() as conn, conn.begin():
            rev = self._revision(conn)

            def count(table: sa.Table, *where: Any) -> int:
                query = sa.select(sa.func.count()).select_from(table)
                return int(conn.execute(query.where(*where)).scalar_one())

            last = conn.execute(
                sa.select(changelog.c.revision, changelog.c.at, changelog.c.actor, changelog.c.op)
                .order_by(changelog.c.revision.desc())
                .limit(1)
            ).first()
            return {
                "revision": rev,
                "tenants": count(tenants),
                "domains": count(domains, domains.c.wildcard.is_(False)),
                "wildcards": count(domains, domains.c.wildcard.is_(True)),
                "sites": list(
                    conn.execute(
                        sa.select(sites.c.name).order_by(sites.c.position, sites.c.name)
                    ).scalars()
                ),
                "zones": count(zones),
                "last_change": None
                if last is None
                else {
                    "revision": int(last.revision),
                    "at": _utc(last.at).isoformat(),
                    "actor": last.actor,
                    "op": last.op,
                },
            }

    def record_renewal(
        self, name: str, error: str | None = None, next_attempt: datetime | None = None
    ) -> None:
        """Note a renewal of ``name``: done (``error`` None), or failed and retried at
        ``next_attempt``."""
        c = acme_certificates
        values: dict[str, Any] = (
            {"last_renewal": datetime.now(UTC), "failures": 0, "next_attempt": None}
            if error is None
            else {"failures": c.c.failures + 1, "next_attempt": next_attempt}
        )
        with self.engine.begin() as conn:
            conn.execute(c.update().where(c.c.name == name).values(last_error=error, **values))

    def publish_challenges(self, certificate: str, records: Sequence[tuple[str, str]]) -> int:
        """Publish DNS-01 ``(name, value)`` records for the order of ``certificate``; each name
        must be in one of sipzone's zones (else its DNS cannot answer it)."""
        parsed = [parse_challenge(name, value) for name, value in records]
        detail = {"names": sorted({name for name, _ in parsed})}
        with self._write("acme.challenge", certificate, detail) as (conn, rev):
            self._provider_only("manages TLS certificates")
            zone_names = self._zones(conn)
            for name, value in parsed:
                check_answerable(name, zone_names)
                conn.execute(
                    acme_challenges.insert().values(certificate=certificate, name=name, value=value)
                )
            return rev

    def clear_challenges(self, certificate: str) -> int | None:
        """Withdraw the DNS-01 records of ``certificate``'s order; the revision, or None when
        there were none (nothing written)."""
        where = acme_challenges.c.certificate == certificate
        with self.engine.connect() as conn:
            if conn.execute(sa.select(acme_challenges.c.id).where(where)).first() is None:
                return None
        with self._write("acme.clear", certificate) as (conn, rev):
            conn.execute(acme_challenges.delete().where(where))
            return rev

    def _challenges(self, conn: Connection) -> tuple[tuple[str, tuple[str, ...]], ...]:
        found: dict[str, dict[str, None]] = {}
        rows = conn.execute(
            sa.select(acme_challenges.c.name, acme_challenges.c.value).order_by(
                acme_challenges.c.id
            )
        )
        for name, value in rows:
            found.setdefault(str(name), {})[str(value)] = None
        return tuple((name, tuple(values)) for name, values in found.items())

    def take_lease(self, holder: str, seconds: float) -> bool:
        """Hold the renewal lease for ``seconds`` (taken when free, expired or ours already);
        True when ``holder`` has it."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=seconds)
        lease = acme_lease
        with self.engine.begin() as conn:
            taken = conn.execute(
                lease.update()
                .where(lease.c.id == 1, sa.or_(lease.c.holder == holder, lease.c.until < now))
                .values(holder=holder, until=until)
            ).rowcount
            if taken:
                return True
            if conn.execute(sa.select(lease.c.id)).first() is not None:
                return False
        try:
            with self.engine.begin() as conn:
                conn.execute(lease.insert().values(id=1, holder=holder, until=until))
        except sa.exc.IntegrityError:  # another node took it meanwhile
            return False
        return True

    def release_lease(self, holder: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(acme_lease.delete().where(acme_lease.c.holder == holder))

    # ------------------------------------------------------------------ snapshots and feed

    def changes_since(self, revision: int, limit: int = 10_000) -> list[Change]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(changelog)
                .where(changelog.c.revision > revision)
                .order_by(changelog.c.revision)
                .limit(limit)
            ).mappings()
            return [
                Change(r["revision"], r["at"], r["actor"], r["op"], r["subject"], r["detail"])
                for r in rows
            ]

    def check(self, name: str) -> tuple[Match[TenantView] | None, int]:
        """Which rule admits ``name`` (a normalised host name), at which revision.

        Reads only the rules that could match (the name itself and a wildcard per parent), so
        it costs the same with ten rules or a million.
        """
        with self.engine.connect() as conn, conn.begin():
            rev = self._revision(conn)
            views = self._tree(conn).views
            near = self._rules_near(conn, name)
            matcher = Matcher.from_rules((text, views[owner]) for text, owner in near.rules())
            return matcher.match(name), rev

    def load_snapshot(self) -> Snapshot:
        """The whole state at one revision, read in one transaction; rows that break the rules
        the services rely on are skipped, one log line each (see the module's docstring)."""
        with self.engine.connect() as conn, conn.begin():
            rev = self._revision(conn)
            tree = self._tree(conn)
            settings_map = dict(conn.execute(sa.select(settings.c.key, settings.c.value)).all())
            checks: list[tuple[str, Callable[[str], object]]] = [
                ("email_domain", check_stored_name),
                ("email_mx", check_stored_name),
            ]
            checks += [(key, partial(stored_endpoints, s)) for s, key in SETTING.items()]
            for key, check in checks:
                value = settings_map.get(key)
                try:
                    if value is not None:
                        check(value)
                except (InvalidName, InvalidValue, Conflict) as exc:
                    self.read_log.warning(f"setting {key}", "store: %s ignored: %s", key, exc)
                    del settings_map[key]
            zone_names = self._zones(conn)
            return Snapshot.build(
                rev,
                tree,
                self._valid_rules(self.domain_rules(conn)),
                sites=tuple(self._sites(conn, zone_names)),
                zones=tuple(zone_names),
                email_domain=settings_map.get("email_domain"),
                settings=settings_map,
                certificates=tuple(self._certificates(conn)),
                trunks=tuple(self._trunks(conn)),
                challenges=self._challenges(conn),
                zone_revisions=self._zone_revisions(conn),
                nameservers=self._nameservers(conn),
            )

    def _valid_rules(self, rules: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``rules`` less those no longer valid, logged as one line with the count."""
        bad = invalid_stored_rules([text for text, _ in rules])
        if not bad:
            return rules
        self.read_log.warning(
            "rules",
            "store: %d stored SIP domain rule(s) skipped as invalid, such as %r: %s",
            len(bad),
            bad[0][0],
            bad[0][1],
        )
        skip = {text for text, _ in bad}
        return [rule for rule in rules if rule[0] not in skip]

    def advance(self, snapshot: Snapshot) -> Snapshot:
        """The snapshot at the store's current revision, built from ``snapshot`` by applying the
        change log when only rules changed, or loaded whole otherwise."""
        changes = self.changes_since(snapshot.revision)
        if not changes:
            return snapshot
        if any(c.op not in RULE_OPS | INERT_OPS | SWITCH_OPS for c in changes) or (
            len(changes) >= 10_000
        ):
            return self.load_snapshot()
        views = snapshot.tenants.views
        added: dict[str, str] = {}
        removed: set[str] = set()
        switched = snapshot.settings  # with the debug switches as they are now, if one moved
        serials = dict(snapshot.zone_revisions)  # as _move_serials set them
        for change in changes:
            if change.op in SWITCH_OPS and switched is snapshot.settings:
                now = {k: v for k, v in self.settings().items() if is_switch_setting(k)}
                switched = MappingProxyType({**without_switches(snapshot.settings), **now})
            if change.op in INERT_OPS | SWITCH_OPS:
                continue
            zone = rule_zone(change.subject, snapshot.zones)
            if zone is not None:
                serials[zone] = change.revision
            if change.op == "domain.add":
                owner = (change.detail or {}).get("owner")
                try:
                    check_stored_rule(change.subject)
                    if owner not in views:
                        raise UnknownTenant(f"owner {owner!r} is not in the snapshot")
                except SipzoneError as exc:
                    self.read_log.warning(
                        f"change {change.subject}",
                        "store: change %d (domain.add %r) skipped: %s",
                        change.revision,
                        change.subject,
                        exc,
                    )
                    continue
                added[change.subject] = str(owner)
                removed.discard(change.subject)
            else:
                added.pop(change.subject, None)
                removed.add(change.subject)
        if added or removed:
            matcher = snapshot.matcher.with_changes(
                added=((n, views[o]) for n, o in added.items()), removed=removed
            )
        else:  # only inert changes (a claim, a token): no copy of a million rules
            matcher = snapshot.matcher
        return replace(
            snapshot,
            revision=changes[-1].revision,
            matcher=matcher,
            settings=switched,
            delta=Delta(tuple(added), tuple(sorted(removed))),
            zone_revisions=MappingProxyType(serials),
        )

    # ------------------------------------------------------------------ API: grants, claims

    def _grants(self, conn: Connection) -> list[tuple[str, str]]:
        return [
            (str(t), str(n))
            for t, n in conn.execute(
                sa.select(tenants.c.name, grants.c.namespace).join(
                    tenants, grants.c.tenant_id == tenants.c.id
                )
            )
        ]

    def list_grants(self) -> list[tuple[str, str]]:
        """Every namespace grant as ``(tenant, namespace)``, sorted."""
        with self.engine.connect() as conn:
            return sorted(self._grants(conn))

    def grant_namespace(self, tenant: str, text: str) -> tuple[DomainName, int]:
        """Let ``tenant`` create rules within ``text`` (inside the provider's zones)."""
        namespace = parse_domain(text)
        after = {"tenant": tenant, "namespace": namespace.text}
        detail = {AUDIT_TENANT: tenant, AUDIT_AFTER: after}
        with self._write("tenant.grant", namespace.text, detail) as (conn, rev):
            tree = self._tree(conn)
            held = self._grants(conn)
            check_may_grant(tenant, namespace.text, self.actor, tree, self._zones(conn), held)
            if (tenant, namespace.text) in held:
                raise Conflict(f"tenant {tenant!r} holds {namespace.text!r} already")
            conn.execute(
                grants.insert().values(
                    tenant_id=self._tenant_id(conn, tenant),
                    namespace=namespace.text,
                    granted_by=self.actor,
                )
            )
            return namespace, rev

    def domain(self, text: str) -> DomainRow:
        """One rule by its text (as typed: IDN or A-label, ``*.BASE``); :class:`NotFound`."""
        rule = parse_rule(text)
        with self.engine.connect() as conn:
            row = conn.execute(_DOMAIN_ROWS.where(domains.c.name == rule.text)).first()
        if row is None:
            raise NotFound(f"{rule.text!r} is not a SIP domain here")
        return _domain_row(row)

    def prove_domain(self, text: str, seen: Iterable[str]) -> tuple[DomainRow, int | None]:
        """Admit the pending claim ``text`` when ``seen`` (the TXT strings found at its
        challenge name) holds its challenge: logged as ``domain.add``, so the feed serves it.
        Returns the row as it is now and the revision of the change (None: nothing changed)."""
        rule = parse_rule(text)
        values = set(seen)
        detail: dict[str, Any] = {}
        try:
            with self._write("domain.add", rule.text, detail) as (conn, rev):
                row = conn.execute(_DOMAIN_ROWS.where(domains.c.name == rule.text)).first()
                if row is None:
                    raise NotFound(f"{rule.text!r} is not a SIP domain here")
                found = _domain_row(row)
                check_may_remove(found.owner, self.actor, self._tree(conn))
                if not found.pending or found.challenge not in values:
                    raise _Unchanged
                conn.execute(
                    domains.update()
                    .where(domains.c.name == rule.text)
                    .values(pending=False, challenge=None, revision=rev)
                )
                detail.update(owner=found.owner)
                detail[AUDIT_TENANT] = found.owner
                detail[AUDIT_BEFORE] = {"name": found.name, "pending": True}
                detail[AUDIT_AFTER] = {"name": found.name, "pending": False, "proven": True}
                return replace(found, pending=False, challenge=None, revision=rev), rev
        except _Unchanged:
            return found, None

    def page_domains(
        self,
        owners: Sequence[str] | None = None,
        *,
        wildcard: bool | None = None,
        prefix: str | None = None,
        suffix: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> tuple[list[DomainRow], str | None]:
        """One page of rules after the key ``after``, and the key to pass for the next page
        (None at the end).  Keyset paging on an index, so a deep page costs what the first
        does: by name, or with ``suffix`` by the reversed name (the key is then a reversed
        name).  ``owners`` (None: all) are walked each on the (owner, name) index and merged;
        ``prefix`` and ``suffix`` are plain string bounds on the stored (A-label) text."""
        column: Any = domains.c.rname if suffix is not None else domains.c.name
        if not self._orders_bytewise():
            column = column.collate("C")  # correct, but no index: see _orders_bytewise
        start = suffix[::-1] if suffix is not None else prefix
        query = _DOMAIN_ROWS.order_by(column).limit(limit + 1)
        if wildcard is not None:
            query = query.where(domains.c.wildcard == wildcard)
        if start:
            query = query.where(column >= start, column < _after_prefix(start))
        if prefix is not None and suffix is not None:
            query = query.where(domains.c.name.startswith(prefix, autoescape=True))
        if after is not None:
            query = query.where(column > after)
        with self.engine.connect() as conn, conn.begin():
            if owners is None:
                rows = [_domain_row(r) for r in conn.execute(query)]
            else:
                ids = conn.execute(
                    sa.select(tenants.c.id).where(tenants.c.name.in_(list(owners)))
                ).scalars()
                rows = []
                for oid in ids:  # one index range each; a subtree has few tenants
                    rows += [
                        _domain_row(r) for r in conn.execute(query.where(domains.c.owner_id == oid))
                    ]

        def key(row: DomainRow) -> str:
            return row.name[::-1] if suffix is not None else row.name

        rows.sort(key=key)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, key(rows[-1])

    def _orders_bytewise(self) -> bool:
        """Whether the database orders text by bytes, as the cursors (and Python) do: SQLite
        always; PostgreSQL when the database's collation is C or POSIX (``createdb
        --locale=C.UTF-8``).  Otherwise paging compares with COLLATE "C", which no index
        serves: logged once, as a deep page then costs a scan."""
        if self.engine.dialect.name != "postgresql":
            return True
        cached = getattr(self.engine, "_sipzone_bytewise", None)
        if cached is None:
            query = (
                "SELECT datcollate, datlocprovider FROM pg_database "
                "WHERE datname = current_database()"
            )
            with self.engine.connect() as conn:
                collation, provider = conn.execute(sa.text(query)).one()
            # libc's C or POSIX, or PostgreSQL's builtin provider: byte order; ICU never
            cached = provider == "b" or (
                provider == "c" and str(collation).split(".")[0] in ("C", "POSIX")
            )
            collation = f"{collation} (provider {provider!r})"
            if not cached:
                self.read_log.warning(
                    "collation",
                    "store: the database's collation is %s; domain paging compares with "
                    'COLLATE "C" and no index serves it (create the database with '
                    "--locale=C.UTF-8 for fast deep pages)",
                    collation,
                )
            setattr(self.engine, "_sipzone_bytewise", cached)  # noqa: B010 -- per engine
        return bool(cached)

    # ------------------------------------------------------------------ API: tokens

    def create_token(
        self, tenant: str, label: str | None = None, expires_days: int | None = None
    ) -> tuple[TokenRow, str]:
        """A new API token for ``tenant``: its row and its text, which is never shown again
        (the store keeps only its SHA-256)."""
        label = parse_token_label(label or "token")
        if expires_days is not None and not 1 <= expires_days <= 3650:
            raise InvalidValue(f"--expires {expires_days} must be 1 to 3650 days")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + timedelta(days=expires_days) if expires_days else None
        after: dict[str, Any] = {"tenant": tenant, "label": label, "expires_at": _iso(expires)}
        detail = {AUDIT_TENANT: tenant, AUDIT_AFTER: after}
        with self._write("token.create", label, detail) as (conn, _rev):
            tree = self._tree(conn)
            tree.get(tenant)
            if not tree.is_ancestor_or_self(self.actor, tenant):
                raise NotPermitted(f"tenant {self.actor!r} may not make tokens for {tenant!r}")
            tid = conn.execute(
                tokens.insert()
                .values(
                    tenant_id=self._tenant_id(conn, tenant),
                    label=label,
                    digest=token_digest(secret),
                    created_at=now,
                    expires_at=expires,
                )
                .returning(tokens.c.id)
            ).scalar_one()
            after["id"] = int(tid)
        return TokenRow(int(tid), tenant, label, now, expires, None), secret

    def list_tokens(self, tenant: str | None = None) -> list[TokenRow]:
        query = _TOKEN_ROWS.order_by(tokens.c.id)
        if tenant is not None:
            query = query.where(tenants.c.name == tenant)
        with self.engine.connect() as conn:
            return [_token_row(r) for r in conn.execute(query)]

    def revoke_token(self, token_id: int) -> int:
        detail: dict[str, Any] = {}
        with self._write("token.revoke", str(token_id), detail) as (conn, rev):
            row = conn.execute(_TOKEN_ROWS.where(tokens.c.id == token_id)).first()
            if row is None:
                raise NotFound(f"token {token_id} does not exist")
            found = _token_row(row)
            if not self._tree(conn).is_ancestor_or_self(self.actor, found.tenant):
                raise NotPermitted(
                    f"tenant {self.actor!r} may not revoke tokens of {found.tenant!r}"
                )
            if found.revoked_at is not None:
                raise Conflict(f"token {token_id} is revoked already")
            conn.execute(
                tokens.update().where(tokens.c.id == token_id).values(revoked_at=datetime.now(UTC))
            )
            detail[AUDIT_TENANT] = found.tenant
            detail[AUDIT_BEFORE] = {"id": token_id, "label": found.label, "revoked": False}
            detail[AUDIT_AFTER] = {"id": token_id, "label": found.label, "revoked": True}
            return rev

    def authenticate(self, secret: str) -> TokenRow | None:
        """The live token whose text is ``secret`` (not revoked, not expired), else None."""
        if not secret.startswith(TOKEN_PREFIX) or len(secret) > 200:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(_TOKEN_ROWS.where(tokens.c.digest == token_digest(secret))).first()
        if row is None:
            return None
        found = _token_row(row)
        if found.revoked_at is not None:
            return None
        if found.expires_at is not None and _aware(found.expires_at) <= datetime.now(UTC):
            return None
        return found

    # ------------------------------------------------------------------ audit

    def audit(
        self,
        tenants_in: Sequence[str] | None = None,
        *,
        since: datetime | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        """Change-log entries, newest first: all, or those about or made by ``tenants_in``;
        ``before_id`` pages back."""
        query = sa.select(changelog).order_by(changelog.c.id.desc()).limit(limit)
        if tenants_in is not None:
            names = list(tenants_in)
            query = query.where(
                sa.or_(changelog.c.tenant.in_(names), changelog.c.actor_tenant.in_(names))
            )
        if since is not None:
            query = query.where(changelog.c.at >= since)
        if before_id is not None:
            query = query.where(changelog.c.id < before_id)
        with self.engine.connect() as conn:
            return [
                AuditEntry(
                    id=r["id"],
                    revision=r["revision"],
                    at=_aware(r["at"]),
                    op=r["op"],
                    subject=r["subject"],
                    tenant=r["tenant"],
                    actor_tenant=r["actor_tenant"],
                    principal=r["principal"],
                    origin=r["origin"],
                    before=r["before"],
                    after=r["after"],
                )
                for r in conn.execute(query).mappings()
            ]

    # ------------------------------------------------------------------ site health, nodes
    # Probe settings and drain are configuration (revision, change log, audit); what nodes
    # observe is status (sipzone.model.health): written without a revision, so a probe's news
    # never rebuilds anyone's snapshot.

    def set_site_check(
        self,
        name: str,
        *,
        interval: float | None = None,
        timeout: float | None = None,
        failures: int | None = None,
        successes: int | None = None,
    ) -> tuple[HealthCheck, int]:
        """Change some of a site's health-check settings; the others stay."""
        with self._write("site.check", name) as (conn, rev):
            self._provider_only("manages sites")
            row = conn.execute(sa.select(sites).where(sites.c.name == name)).mappings().first()
            if row is None:
                raise NotFound(f"site {name!r} does not exist")
            check = HealthCheck.checked(
                interval, timeout, failures, successes, base=self._stored_check(name, row)
            )
            conn.execute(sites.update().where(sites.c.name == name).values(**_check_columns(check)))
            return check, rev

    def set_site_drained(self, name: str, drained: bool) -> int:
        """Drain a site (out of every answer, whatever the probes say) or undrain it."""
        op = "site.drain" if drained else "site.undrain"
        with self._write(op, name) as (conn, rev):
            self._provider_only("manages sites")
            res = conn.execute(sites.update().where(sites.c.name == name).values(drained=drained))
            if res.rowcount == 0:
                raise NotFound(f"site {name!r} does not exist")
            return rev

    def _stored_check(self, name: str, row: sa.RowMapping) -> HealthCheck:
        try:
            return HealthCheck.checked(
                row["check_interval"],
                row["check_timeout"],
                row["check_failures"],
                row["check_successes"],
            )
        except (SipzoneError, TypeError, ValueError) as exc:
            self.read_log.warning(
                f"site {name} check", "store: site %r: health check defaults used: %s", name, exc
            )
            return HealthCheck()

    def write_views(self, node: str, views: Iterable[SiteView], beat: NodeBeat) -> None:
        """Replace ``node``'s views of the sites and refresh its heartbeat, in one
        transaction (no revision: see above).  A SQLite file that is gone raises
        FileNotFoundError: a write must not create an empty store where one was removed."""
        url = sa.make_url(self.url)
        file = url.database if url.get_backend_name() == "sqlite" else None
        if file not in (None, "", ":memory:") and not Path(str(file)).exists():
            raise FileNotFoundError(f"the store file {file} is gone")
        now = datetime.now(UTC)
        with self.engine.begin() as conn:
            conn.execute(site_views.delete().where(site_views.c.node == node))
            rows = [
                {
                    "node": node,
                    "site": v.site,
                    "up": v.up,
                    "changed_at": v.changed_at,
                    "seen_at": now,
                    "detail": (v.detail or "")[:300] or None,
                }
                for v in views
            ]
            if rows:
                conn.execute(site_views.insert(), rows)
            conn.execute(nodes.delete().where(nodes.c.name == node))
            conn.execute(
                nodes.insert().values(
                    name=node,
                    site=beat.site,
                    addresses=list(beat.addresses),
                    revision=beat.revision,
                    started_at=beat.started_at,
                    seen_at=now,
                    store_down_since=beat.store_down_since,
                )
            )

    def site_views(self, fresh_within: float | None = VIEW_STALE) -> list[SiteView]:
        """Every node's view of every site, only those refreshed within ``fresh_within``
        seconds (None: all), oldest node name first."""
        query = sa.select(site_views).order_by(site_views.c.site, site_views.c.node)
        if fresh_within is not None:
            since = datetime.now(UTC) - timedelta(seconds=fresh_within)
            query = query.where(site_views.c.seen_at >= since)
        with self.engine.connect() as conn:
            return [
                SiteView(
                    r["site"],
                    bool(r["up"]),
                    _aware(r["changed_at"]),
                    r["detail"],
                    r["node"],
                    _aware(r["seen_at"]),
                )
                for r in conn.execute(query).mappings()
            ]

    def record_upstream_states(self, node: str, states: Iterable[UpstreamTargetState]) -> None:
        """Replace what ``node`` located and probed of its upstreams (status: no revision)."""
        now = datetime.now(UTC)
        rows = [
            {
                "node": node,
                "upstream": state.upstream[:500],
                "target": state.target[:300],
                "priority": state.priority,
                "weight": state.weight,
                "up": state.up,
                "in_use": state.in_use,
                "changed_at": state.changed_at,
                "seen_at": now,
                "detail": (state.detail or "")[:300] or None,
            }
            for state in states
        ]
        with self.engine.begin() as conn:
            conn.execute(upstream_states.delete().where(upstream_states.c.node == node))
            if rows:
                conn.execute(upstream_states.insert(), rows)

    def upstream_states(self) -> list[tuple[str, UpstreamTargetState]]:
        """(node, state) of every upstream target every node last reported, in failover order."""
        table = upstream_states.c
        query = sa.select(upstream_states).order_by(
            table.node, table.upstream, table.priority, table.weight.desc(), table.target
        )
        with self.engine.connect() as conn:
            return [
                (
                    str(r["node"]),
                    UpstreamTargetState(
                        r["upstream"],
                        r["target"],
                        int(r["priority"]),
                        int(r["weight"]),
                        None if r["up"] is None else bool(r["up"]),
                        bool(r["in_use"]),
                        _aware(r["changed_at"]),
                        r["detail"],
                    ),
                )
                for r in conn.execute(query).mappings()
            ]

    def list_nodes(self) -> list[NodeRow]:
        """Every node that ever wrote a heartbeat, by name, with the store's revision."""
        with self.engine.connect() as conn:
            revision = self._revision(conn)
            rows = conn.execute(sa.select(nodes).order_by(nodes.c.name)).mappings()
            return [
                NodeRow(
                    site=r["site"],
                    addresses=tuple(r["addresses"] or ()),
                    revision=int(r["revision"]),
                    started_at=_aware(r["started_at"]),
                    store_down_since=_aware(r["store_down_since"])
                    if r["store_down_since"]
                    else None,
                    name=r["name"],
                    seen_at=_aware(r["seen_at"]),
                    store_revision=revision,
                )
                for r in rows
            ]


_DOMAIN_ROWS = sa.select(
    domains.c.name,
    tenants.c.name,
    domains.c.wildcard,
    domains.c.revision,
    domains.c.pending,
    domains.c.challenge,
).join(tenants, domains.c.owner_id == tenants.c.id)

_TOKEN_ROWS = sa.select(
    tokens.c.id,
    tenants.c.name,
    tokens.c.label,
    tokens.c.created_at,
    tokens.c.expires_at,
    tokens.c.revoked_at,
).join(tenants, tokens.c.tenant_id == tenants.c.id)


@dataclass(frozen=True, slots=True)
class SiteView:
    """One node's view of one site: up or down since ``changed_at``, and why."""

    site: str
    up: bool
    changed_at: datetime
    detail: str | None = None
    node: str = ""  # filled when read back
    seen_at: datetime | None = None  # when the node last wrote it (read back)


@dataclass(frozen=True, slots=True)
class NodeBeat:
    """What a node says of itself with every heartbeat."""

    site: str | None
    addresses: tuple[str, ...]
    revision: int
    started_at: datetime
    store_down_since: datetime | None = None


@dataclass(frozen=True, slots=True)
class NodeRow(NodeBeat):
    """A node's last heartbeat as stored; ``store_revision`` is the store's revision now."""

    name: str = ""
    seen_at: datetime | None = None
    store_revision: int = 0

    def age(self, now: datetime) -> float:
        """Seconds since the node's last heartbeat (or its start) at ``now``."""
        return (now - (self.seen_at or self.started_at)).total_seconds()

    def alive(self, now: datetime) -> bool:
        """Whether the node still beats: its last heartbeat is at most VIEW_STALE seconds old."""
        return self.age(now) <= VIEW_STALE


def _check_columns(check: HealthCheck) -> dict[str, float | int]:
    return {
        "check_interval": check.interval,
        "check_timeout": check.timeout,
        "check_failures": check.failures,
        "check_successes": check.successes,
    }


def _domain_row(r: Sequence[Any]) -> DomainRow:
    return DomainRow(r[0], r[1], bool(r[2]), int(r[3]), bool(r[4]), r[5])


def _token_row(r: Sequence[Any]) -> TokenRow:
    return TokenRow(
        int(r[0]), str(r[1]), str(r[2]), _aware(r[3]),
        _aware(r[4]) if r[4] else None, _aware(r[5]) if r[5] else None,
    )  # fmt: skip


def _aware(at: datetime) -> datetime:
    """SQLite gives back naive datetimes for what was stored as UTC."""
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _iso(at: datetime | None) -> str | None:
    return at.isoformat() if at is not None else None


def _after_prefix(prefix: str) -> str:
    """The least string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)
