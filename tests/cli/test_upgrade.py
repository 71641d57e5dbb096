"""`sipzone db version` and `sipzone db upgrade` (issue 13): a store at any older schema this
sipzone knows is migrated to its own; one from a newer sipzone is left alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

from sipzone.store.repository import MIGRATIONS, Store, schema_head, schema_revisions
from sipzone.store.schema import metadata
from tests.cli.conftest import Run


def at_schema(url: str, revision: str) -> None:
    """The store's database migrated to ``revision`` only ("base": no schema at all)."""
    store = Store(url)
    path = url.removeprefix("sqlite:///")
    if url.startswith("sqlite:") and not Path(path).exists():
        Path(path).touch()
    if revision != "base":
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with store.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    store.close()


@pytest.mark.parametrize("start", ["base", *schema_revisions()[:-1]])
def test_db_upgrade_from_an_older_schema(sipzone: Run, any_url: str, start: str) -> None:
    at_schema(any_url, start)
    version = sipzone("db", "version", "--db", any_url, "--json")
    assert version.returncode == 1
    assert json.loads(version.stdout)["state"] == ("none" if start == "base" else "behind")
    upgraded = sipzone("db", "upgrade", "--db", any_url, "--json", check=True)
    assert json.loads(upgraded.stdout) == {
        "before": None if start == "base" else start,
        "after": schema_head(),
    }
    assert sipzone("db", "version", "--db", any_url).returncode == 0
    store = Store(any_url)
    with store.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
    store.add_domain("after.example.com")  # and it works as a store
    store.close()
    again = sipzone("db", "upgrade", "--db", any_url, check=True)
    assert "already at" in again.stdout


def test_a_schema_from_a_newer_sipzone_is_left_alone(sipzone: Run, sqlite_url: str) -> None:
    sipzone("init", check=True)
    store = Store(sqlite_url)
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = 'f00d'"))
    store.close()
    version = sipzone("db", "version", "--json")
    assert version.returncode == 1
    assert json.loads(version.stdout)["state"] == "ahead"
    refused = sipzone("db", "upgrade")
    assert refused.returncode == 2
    assert "upgrade sipzone" in refused.stderr


def test_db_upgrade_never_creates_a_store(sipzone: Run, tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    result = sipzone("db", "upgrade", "--db", f"sqlite:///{missing}")
    assert result.returncode == 2
    assert "sipzone init" in result.stderr
    assert not missing.exists()
