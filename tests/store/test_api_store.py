"""The store's side of the API: pending claims and proofs, grants, tokens, the audit columns,
keyset paging, and migration 0003 over a store holding rules (SQLite and PostgreSQL)."""

from __future__ import annotations

import sqlite3
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from sipzone.model.errors import Conflict, NotFound, NotPermitted
from sipzone.model.snapshot import Delta
from sipzone.store.repository import Store, token_digest
from sipzone.store.schema import domains, tokens
from sipzone.store.url import sqlite_path


def chain(store: Store) -> Store:
    store.add_nameserver("ns1.example.org")
    store.add_zone("example.net")
    store.add_tenant("resa")
    store.add_tenant("ca", "resa")
    store.grant_namespace("resa", "resa.example.net")
    return Store(store.url, actor="resa", principal="token 'x' (#1)", origin="192.0.2.7")


def test_pending_claim_is_not_served_until_proven(store: Store) -> None:
    resa = chain(store)
    before = store.load_snapshot()
    resa.add_domain("*.brand.example.org")
    row = store.domain("*.brand.example.org")
    assert row.pending and row.challenge
    after = store.advance(before)
    assert after.revision == before.revision + 1
    assert after.delta == Delta((), ())  # along the change log (no rebuild), nothing served
    assert after.matcher is before.matcher
    assert store.check("x.brand.example.org")[0] is None
    assert "*.brand.example.org" not in dict(store.domain_rules())
    assert store.load_snapshot().matcher.match("x.brand.example.org") is None
    # a wrong proof changes nothing; the right one admits it, along the change log
    assert resa.prove_domain("*.brand.example.org", ["nope"])[1] is None
    proven, rev = resa.prove_domain("*.brand.example.org", ["nope", row.challenge or ""])
    assert rev is not None and not proven.pending
    advanced = store.advance(after)
    assert advanced.delta is not None and advanced.delta.added == ("*.brand.example.org",)
    match = advanced.matcher.match("x.brand.example.org")
    assert match is not None and match.owner.name == "resa"
    # proven once is proven: nothing more to do
    assert resa.prove_domain("*.brand.example.org", [])[1] is None
    acme = Store(store.url, actor="ca")
    with pytest.raises(NotPermitted):  # not its claim to prove
        acme.prove_domain("*.brand.example.org", [row.challenge or ""])
    acme.close()
    resa.close()


def test_grants(store: Store) -> None:
    resa = chain(store)
    with pytest.raises(NotPermitted, match="outside the provider's zones"):
        store.grant_namespace("resa", "example.org")
    with pytest.raises(NotPermitted, match="only tenants above it"):
        resa.grant_namespace("resa", "more.resa.example.net")
    with pytest.raises(NotPermitted, match="holds no namespace"):
        resa.grant_namespace("ca", "example.net")
    with pytest.raises(Conflict):
        store.grant_namespace("resa", "resa.example.net")
    resa.grant_namespace("ca", "ca.resa.example.net")
    ca = Store(store.url, actor="ca")
    ca.add_domain("*.ca.resa.example.net")
    with pytest.raises(NotPermitted, match="no namespace granted"):
        ca.add_domain("x.resa.example.net")
    with pytest.raises(NotPermitted, match="namespace of tenant 'ca'"):
        resa.add_domain("x.ca.resa.example.net")  # inside ca's rule: for ca only
    resa.add_domain("x.ca.resa.example.net", "ca")
    assert store.list_grants() == [("ca", "ca.resa.example.net"), ("resa", "resa.example.net")]
    ca.close()
    resa.close()


def test_tokens(store: Store) -> None:
    chain(store)
    _row, secret = store.create_token("resa", "billing", expires_days=1)
    assert secret.startswith("sz_") and len(secret) == 46
    with store.engine.connect() as conn:
        digests = list(conn.execute(sa.select(tokens.c.digest)).scalars())
    assert digests == [token_digest(secret)]  # the hash, never the text
    found = store.authenticate(secret)
    assert found is not None and (found.tenant, found.label) == ("resa", "billing")
    assert store.authenticate(secret[:-1] + ("B" if secret.endswith("A") else "A")) is None
    assert store.authenticate("not-a-token") is None
    with store.engine.begin() as conn:  # the clock moves past its expiry
        past = datetime.now(UTC) - timedelta(seconds=1)
        conn.execute(tokens.update().values(expires_at=past))
    assert store.authenticate(secret) is None
    _row2, secret2 = store.create_token("ca")
    resa = Store(store.url, actor="resa")
    with pytest.raises(NotPermitted):
        resa.create_token("provider")
    resa.revoke_token(_row2.id)  # its customer's
    assert store.authenticate(secret2) is None
    with pytest.raises(Conflict):
        store.revoke_token(_row2.id)
    with pytest.raises(NotFound):
        store.revoke_token(999)
    assert [t.label for t in store.list_tokens()] == ["billing", "token"]
    resa.close()


def test_audit_columns(store: Store) -> None:
    resa = chain(store)
    resa.add_domain("voip.resa.example.net", "ca")
    resa.remove_domain("voip.resa.example.net")
    resa.update_tenant("ca", brand_name="Cee")
    update, remove, add = store.audit(limit=3)
    assert (add.op, add.tenant, add.actor_tenant) == ("domain.add", "ca", "resa")
    assert (add.principal, add.origin) == ("token 'x' (#1)", "192.0.2.7")
    assert add.before is None and add.after["owner"] == "ca"
    assert remove.before == {
        "name": "voip.resa.example.net", "owner": "ca", "wildcard": False, "pending": False,
    }  # fmt: skip
    assert update.before == {"brand_name": None} and update.after == {"brand_name": "Cee"}
    # scoped to a subtree: ca's own entries and those about it
    scoped = store.audit(["ca"])
    assert {e.op for e in scoped} == {"tenant.add", "domain.add", "domain.remove", "tenant.update"}
    assert store.audit(since=datetime.now(UTC) + timedelta(minutes=1)) == []
    resa.close()


def test_keyset_pages(store: Store) -> None:
    store.add_tenant("resa")
    names = sorted(f"n{i:02d}.example.{'org' if i % 3 else 'net'}" for i in range(30))
    store.import_domains(
        [
            (
                i,
                __import__("sipzone.model.names").model.names.parse_rule(n),
                "resa" if i % 2 else None,
            )
            for i, n in enumerate(names)
        ]
    )
    seen, key = [], None
    while True:
        rows, key = store.page_domains(after=key, limit=4)
        seen += [r.name for r in rows]
        if key is None:
            break
    assert seen == names
    rows, _ = store.page_domains(["resa"], suffix=".net", limit=100)
    expected = [n for i, n in enumerate(names) if i % 2 and n.endswith(".net")]
    assert [r.name for r in rows] == sorted(expected, key=lambda n: n[::-1])


def test_migration_fills_reversed_names(any_url: str) -> None:
    path = sqlite_path(any_url)
    if path is not None:
        sqlite3.connect(path).close()  # a store file, empty (only `init` creates one)
    store = Store(any_url)
    cfg = Config()
    cfg.set_main_option(
        "script_location",
        str(Path(__import__("sipzone.store").store.__file__).parent / "migrations"),
    )
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO state (id, revision) VALUES (1, 1)"))
        conn.execute(sa.text("INSERT INTO tenants (id, name) VALUES (1, 'provider')"))
        conn.execute(
            sa.text(
                "INSERT INTO domains (name, owner_id, wildcard, revision) "
                "VALUES ('*.old.example.com', 1, true, 1)"
            )
        )
    store.init()
    with store.engine.connect() as conn:
        row = conn.execute(sa.select(domains.c.rname, domains.c.pending)).one()
    assert tuple(row) == ("moc.elpmaxe.dlo.*", False)
    assert [r.name for r in store.page_domains(suffix="example.com")[0]] == ["*.old.example.com"]
    store.close()


def test_paging_keeps_byte_order_on_a_database_that_sorts_otherwise() -> None:
    """A PostgreSQL whose collation ignores punctuation (ICU shifted, as glibc's en_US does)
    sorts names its own way; the cursors still walk every name once, in byte order."""
    from tests.conftest import PG_ADMIN, missing, pg_unreachable

    if reason := pg_unreachable():
        missing(reason)
    name = f"sipzone_test_icu_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(
            sa.text(
                f'CREATE DATABASE "{name}" TEMPLATE template0 LOCALE_PROVIDER icu '
                "ICU_LOCALE 'en-US-u-ka-shifted' LOCALE 'C.UTF-8'"
            )
        )
    try:
        store = Store(PG_ADMIN.rsplit("/", 1)[0] + "/" + name)
        store.init()
        names = [
            "*.a.example.com", "a.example.com", "a-b.example.com", "ab.example.com",
            "*.ab.example.com", "a0.example.com", "b.example.com", "*.b-c.example.com",
            "zz.example.com", "z-z.example.com", "*.z.example.com", "a-c.example.com",
        ]  # fmt: skip
        for text in names:
            store.add_domain(text)
        for suffix in (None, "example.com"):
            seen: list[str] = []
            key = None
            while True:
                rows, key = store.page_domains(suffix=suffix, after=key, limit=2)
                seen += [r.name for r in rows]
                if key is None:
                    break
            order = (lambda n: n[::-1]) if suffix else (lambda n: n)
            assert seen == sorted(names, key=order)
        store.close()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
