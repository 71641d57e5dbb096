"""Site health: probe settings and drain per site, each node's view of each site, nodes.

Revision ID: 0005
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def site_columns() -> list[sa.Column[object]]:
    """The columns sites gain (fresh objects each time: a Column belongs to one table)."""
    return [
        sa.Column("check_interval", sa.Float, nullable=False, server_default="5"),
        sa.Column("check_timeout", sa.Float, nullable=False, server_default="2"),
        sa.Column("check_failures", sa.Integer, nullable=False, server_default="3"),
        sa.Column("check_successes", sa.Integer, nullable=False, server_default="2"),
        sa.Column("drained", sa.Boolean, nullable=False, server_default=sa.false()),
    ]


def upgrade() -> None:
    with op.batch_alter_table("sites") as batch:
        for column in site_columns():
            batch.add_column(column)
    op.create_table(
        "site_views",
        sa.Column("node", sa.String(100), primary_key=True),
        sa.Column("site", sa.String(100), primary_key=True),
        sa.Column("up", sa.Boolean, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.String(300), nullable=True),
    )
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("site", sa.String(100), nullable=True),
        sa.Column("addresses", sa.JSON, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("store_down_since", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("nodes")
    op.drop_table("site_views")
    with op.batch_alter_table("sites") as batch:
        for column in reversed(site_columns()):
            batch.drop_column(column.name)
