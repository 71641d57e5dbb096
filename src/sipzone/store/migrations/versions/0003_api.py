"""The API's tables: tokens, namespace grants, pending claims, the audit trail.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

BATCH = 20_000


def upgrade() -> None:
    with op.batch_alter_table("changelog") as batch:
        batch.add_column(sa.Column("tenant", sa.String(100), nullable=True))
        batch.add_column(sa.Column("actor_tenant", sa.String(100), nullable=True))
        batch.add_column(sa.Column("principal", sa.String(200), nullable=True))
        batch.add_column(sa.Column("origin", sa.String(200), nullable=True))
        batch.add_column(sa.Column("before", sa.JSON, nullable=True))
        batch.add_column(sa.Column("after", sa.JSON, nullable=True))
        batch.create_index("ix_changelog_tenant", ["tenant"])
        batch.create_index("ix_changelog_actor_tenant", ["actor_tenant"])
    with op.batch_alter_table("domains") as batch:
        batch.add_column(
            sa.Column("pending", sa.Boolean, nullable=False, server_default=sa.false())
        )
        batch.add_column(sa.Column("challenge", sa.String(64), nullable=True))
        batch.add_column(sa.Column("rname", sa.String(255), nullable=True))
    # Fill the reversed names in batches (SQLite has no reverse()).
    conn = op.get_bind()
    domains = sa.table(
        "domains", sa.column("id", sa.Integer), sa.column("name"), sa.column("rname")
    )
    last = 0
    while True:
        rows = conn.execute(
            sa.select(domains.c.id, domains.c.name)
            .where(domains.c.id > last)
            .order_by(domains.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        conn.execute(
            domains.update().where(domains.c.id == sa.bindparam("b_id")),
            [{"b_id": rid, "rname": name[::-1]} for rid, name in rows],
        )
        last = rows[-1][0]
    with op.batch_alter_table("domains") as batch:
        batch.create_index("ix_domains_rname", ["rname"])
        batch.create_index("ix_domains_owner_name", ["owner_id", "name"])
        batch.create_index("ix_domains_owner_rname", ["owner_id", "rname"])
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("label", sa.String(100), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_tokens_tenant_id", "tokens", ["tenant_id"])
    op.create_table(
        "grants",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("tenant_id", sa.Integer, sa.ForeignKey("tenants.id"), nullable=False),
        sa.Column("namespace", sa.String(255), nullable=False),
        sa.Column("granted_by", sa.String(100), nullable=False),
        sa.UniqueConstraint("tenant_id", "namespace", name="uq_grants_tenant_id"),
    )


def downgrade() -> None:
    op.drop_table("grants")
    op.drop_table("tokens")
    with op.batch_alter_table("domains") as batch:
        for index in ("ix_domains_owner_rname", "ix_domains_owner_name", "ix_domains_rname"):
            batch.drop_index(index)
        for column in ("rname", "challenge", "pending"):
            batch.drop_column(column)
    with op.batch_alter_table("changelog") as batch:
        batch.drop_index("ix_changelog_actor_tenant")
        batch.drop_index("ix_changelog_tenant")
        for column in ("after", "before", "origin", "principal", "actor_tenant", "tenant"):
            batch.drop_column(column)
