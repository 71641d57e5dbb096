"""ACME: accounts, which certificates renew themselves, DNS-01 challenge values, the lease.

Revision ID: 0006
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "acme_accounts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("directory", sa.String(500), nullable=False),
        sa.Column("email", sa.String(254), nullable=False),
        sa.Column("key_pem", sa.Text, nullable=False),
        sa.Column("url", sa.String(500), nullable=False),
        sa.UniqueConstraint("directory", "email", name="uq_acme_accounts_directory"),
    )
    op.create_table(
        "acme_certificates",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("account_id", sa.Integer, sa.ForeignKey("acme_accounts.id"), nullable=False),
        sa.Column("domains", sa.JSON, nullable=False),
        sa.Column("key_type", sa.String(10), nullable=False),
        sa.Column("last_renewal", sa.DateTime(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("next_attempt", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.Text, nullable=True),
    )
    op.create_table(
        "acme_challenges",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("certificate", sa.String(100), nullable=False, index=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
    )
    op.create_table(
        "acme_lease",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("holder", sa.String(200), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("acme_lease")
    op.drop_table("acme_challenges")
    op.drop_table("acme_certificates")
    op.drop_table("acme_accounts")
