"""Upstream states: what each node located (RFC 3263) and probed of each upstream.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upstream_states",
        sa.Column("node", sa.String(100), primary_key=True),
        sa.Column("upstream", sa.String(500), primary_key=True),
        sa.Column("target", sa.String(300), primary_key=True),
        sa.Column("priority", sa.Integer, nullable=False),
        sa.Column("weight", sa.Integer, nullable=False),
        sa.Column("up", sa.Boolean, nullable=True),
        sa.Column("in_use", sa.Boolean, nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.String(300), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("upstream_states")
