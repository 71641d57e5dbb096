"""Alembic's migrations and the Core schema describe the same database."""

import sqlite3

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sipzone.store.repository import Store
from sipzone.store.schema import metadata
from sipzone.store.url import sqlite_path


def test_migrated_database_matches_the_schema(any_url: str) -> None:
    store = Store(any_url)
    store.init()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    store.close()
    assert diff == []
    assert version == "0007"


def test_sites_from_before_health_checks_get_the_defaults(any_url: str) -> None:
    """Migration 0005 on a store at 0003 with a site: the site keeps serving, probed with the
    default settings, not drained; the new tables start empty."""
    from alembic import command
    from alembic.config import Config

    from sipzone.model.health import DEFAULT_CHECK
    from sipzone.store import repository

    path = sqlite_path(any_url)
    if path is not None:
        sqlite3.connect(path).close()  # a store file, empty (only `init` creates one)
    store = Store(any_url)
    cfg = Config()
    cfg.set_main_option(
        "script_location", str(repository.Path(repository.__file__).parent / "migrations")
    )
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0003")
    with store.engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO state (id, revision) VALUES (1, 1)"))
        conn.execute(
            sa.text(
                "INSERT INTO sites (name, region, vips, networks, port_udp, port_tcp, port_tls, "
                "weight, position, healthy) VALUES ('eu1', 'eu', '[\"192.0.2.1\"]', '[]', 5060, "
                "5060, 0, 100, 0, true)"
            )
        )
    store.init()
    [site] = store.list_sites()
    assert (site.name, site.check, site.drained, site.healthy) == (
        "eu1",
        DEFAULT_CHECK,
        False,
        True,
    )
    assert store.site_views() == [] and store.list_nodes() == []
    store.close()
