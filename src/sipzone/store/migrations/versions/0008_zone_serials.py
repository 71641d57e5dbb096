"""A serial per zone: the revision that last changed what each zone publishes.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.add_column(sa.Column("revision", sa.BigInteger, nullable=False, server_default="0"))
    # Every zone's serial was the store's revision until now: start there, so no serial goes
    # back for the secondaries.
    op.execute("UPDATE zones SET revision = (SELECT revision FROM state WHERE id = 1)")


def downgrade() -> None:
    with op.batch_alter_table("zones") as batch:
        batch.drop_column("revision")
