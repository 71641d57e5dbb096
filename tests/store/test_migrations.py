"""Alembic's migrations and the Core schema describe the same database."""

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sipzone.store.repository import Store
from sipzone.store.schema import metadata


def test_migrated_database_matches_the_schema(any_url: str) -> None:
    store = Store(any_url)
    store.init()
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    store.close()
    assert diff == []
    assert version == "0006"
