"""Trunks to external SIP services (Microsoft Teams Direct Routing) and their probed state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "trunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("targets", sa.JSON, nullable=False),
        sa.Column("base", sa.String(255), nullable=False),
        sa.Column("options_interval", sa.Integer, nullable=False),
        sa.Column("profile", sa.String(20), nullable=False),
        sa.Column("sbc_header", sa.String(200), nullable=True),
    )
    op.create_table(
        "trunk_state",
        sa.Column("trunk", sa.String(100), primary_key=True),
        sa.Column("target", sa.String(500), primary_key=True),
        sa.Column("node", sa.String(255), primary_key=True),
        sa.Column("up", sa.Boolean, nullable=False),
        sa.Column("last_response", sa.String(100), nullable=False),
        sa.Column("latency_ms", sa.Float, nullable=True),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("unavailable_until", sa.DateTime(timezone=True), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("trunk_state")
    op.drop_table("trunks")
