"""SQLAlchemy Core tables: the one description of what the store holds.

Alembic migrations in ``migrations/versions`` create and evolve these tables; this module is
what the repository queries against.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# One row (id = 1): the global revision every write bumps.  Updating it first in each write
# transaction also serialises writers (row lock on PostgreSQL, write lock on SQLite).
state = Table(
    "state",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("revision", BigInteger, nullable=False),
)

changelog = Table(
    "changelog",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("revision", BigInteger, nullable=False, index=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("actor", String(200), nullable=False),
    Column("op", String(40), nullable=False),
    Column("subject", String(300), nullable=False),
    Column("detail", JSON, nullable=True),
    # The audit trail (migration 0003): the tenant the change is about and the one that made
    # it, the credential (token label, or shell user) and the client address, and the object
    # before and after.  Old rows have NULL here.
    Column("tenant", String(100), nullable=True, index=True),
    Column("actor_tenant", String(100), nullable=True, index=True),
    Column("principal", String(200), nullable=True),
    Column("origin", String(200), nullable=True),
    Column("before", JSON, nullable=True),
    Column("after", JSON, nullable=True),
)

tenants = Table(
    "tenants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("parent_id", Integer, ForeignKey("tenants.id"), nullable=True),
    Column("brand_name", String(200)),
    Column("support_email", String(254)),
    Column("web_url", String(500)),
    Column("logo_url", String(500)),
    Column("upstream", String(500)),
)

domains = Table(
    "domains",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    Column("owner_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("wildcard", Boolean, nullable=False),
    Column("revision", BigInteger, nullable=False),
    # A claim outside the provider's zones waits for its proof of control (migration 0003):
    # pending rules are listed but neither admitted nor published.
    Column("pending", Boolean, nullable=False, server_default=sa.false()),
    Column("challenge", String(64), nullable=True),
    # The name reversed character by character: suffix search pages on its index.  Every
    # write fills it; a row a hand edit left without it is missing from suffix searches only.
    Column("rname", String(255), nullable=True, index=True),
    Index("ix_domains_owner_name", "owner_id", "name"),
    Index("ix_domains_owner_rname", "owner_id", "rname"),
)

sites = Table(
    "sites",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("region", String(100), nullable=False),
    Column("host", String(255)),
    Column("vips", JSON, nullable=False),
    Column("networks", JSON, nullable=False),
    Column("port_udp", Integer, nullable=False),
    Column("port_tcp", Integer, nullable=False),
    Column("port_tls", Integer, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("position", Integer, nullable=False),
    Column("upstream", String(500)),
    Column("healthy", Boolean, nullable=False),
    # Health checks and drain (migration 0005, sipzone.model.health).
    Column("check_interval", sa.Float, nullable=False, server_default="5"),
    Column("check_timeout", sa.Float, nullable=False, server_default="2"),
    Column("check_failures", Integer, nullable=False, server_default="3"),
    Column("check_successes", Integer, nullable=False, server_default="2"),
    Column("drained", Boolean, nullable=False, server_default=sa.false()),
)

zones = Table(
    "zones",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
    # The revision that last changed what the zone publishes: its SOA serial (migration 0008).
    Column("revision", BigInteger, nullable=False, server_default="0"),
)

# Installation-wide values: the email domain (never per site), its MX, and the like.
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
)

# API tokens (migration 0003): only the SHA-256 of the secret is kept.
tokens = Table(
    "tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False, index=True),
    Column("label", String(100), nullable=False),
    Column("digest", String(64), nullable=False, unique=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

# Namespaces inside the provider's zones that a tenant may create rules in (migration 0003).
grants = Table(
    "grants",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant_id", Integer, ForeignKey("tenants.id"), nullable=False),
    Column("namespace", String(255), nullable=False),
    Column("granted_by", String(100), nullable=False),
    UniqueConstraint("tenant_id", "namespace"),
)

# TLS certificates by name: the chain (PEM, leaf first, certificates only) and its private key
# (PEM).  The default one (``is_default``; none marked: the first added) answers handshakes
# without a server name or with one no certificate covers.
certificates = Table(
    "certificates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("chain_pem", Text, nullable=False),
    Column("key_pem", Text, nullable=False),
    Column("is_default", Boolean, nullable=False),
)

# Trunks to external SIP services (migration 0004): targets in failover order (JSON list of
# sip: URIs), the base FQDN our OPTIONS name in Contact, the OPTIONS interval, the profile.
trunks = Table(
    "trunks",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("targets", JSON, nullable=False),
    Column("base", String(255), nullable=False),
    Column("options_interval", Integer, nullable=False),
    Column("profile", String(20), nullable=False),
    Column("sbc_header", String(200), nullable=True),
)

# What the edges last saw of each trunk target (migration 0004), one row per node: written by
# the prober as observations, outside the revision (no snapshot, no change log), read by
# `trunk list`.
trunk_state = Table(
    "trunk_state",
    metadata,
    Column("trunk", String(100), primary_key=True),
    Column("target", String(500), primary_key=True),
    Column("node", String(255), primary_key=True),
    Column("up", Boolean, nullable=False),
    Column("last_response", String(100), nullable=False),
    Column("latency_ms", sa.Float, nullable=True),
    Column("checked_at", DateTime(timezone=True), nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("unavailable_until", DateTime(timezone=True), nullable=True),
)

# What each node saw of each site when it last wrote (migration 0005): status, not
# configuration, so writing it bumps no revision.  ``seen_at`` is the node's last refresh,
# ``changed_at`` its view's last transition; ``detail`` says why (the last failure).
site_views = Table(
    "site_views",
    metadata,
    Column("node", String(100), primary_key=True),
    Column("site", String(100), primary_key=True),
    Column("up", Boolean, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("detail", String(300), nullable=True),
)

# One row per node, refreshed by its heartbeat (migration 0005): what it serves and how it
# fares with the store.
nodes = Table(
    "nodes",
    metadata,
    Column("name", String(100), primary_key=True),
    Column("site", String(100), nullable=True),
    Column("addresses", JSON, nullable=False),
    Column("revision", BigInteger, nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("store_down_since", DateTime(timezone=True), nullable=True),
)

# What each node's edge located and probed of each upstream (migration 0007): one row per
# target, replaced whole by the node whenever a location or a probe's verdict changes;
# status, not configuration (no revision, not in a dump).
upstream_states = Table(
    "upstream_states",
    metadata,
    Column("node", String(100), primary_key=True),
    Column("upstream", String(500), primary_key=True),
    Column("target", String(300), primary_key=True),
    Column("priority", Integer, nullable=False),
    Column("weight", Integer, nullable=False),
    Column("up", Boolean, nullable=True),
    Column("in_use", Boolean, nullable=False),
    Column("changed_at", DateTime(timezone=True), nullable=False),
    Column("seen_at", DateTime(timezone=True), nullable=False),
    Column("detail", String(300), nullable=True),
)

# ACME (migration 0006).  An account per (directory, email): its key (PEM, never printed) and
# its URL at the CA.
acme_accounts = Table(
    "acme_accounts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("directory", String(500), nullable=False),
    Column("email", String(254), nullable=False),
    Column("key_pem", Text, nullable=False),
    Column("url", String(500), nullable=False),
    UniqueConstraint("directory", "email", name="uq_acme_accounts_directory"),
)

# The certificates (by name, as in ``certificates``) that renew themselves: what to order and
# how the last renewals went.  Renewal state changes no snapshot and bumps no revision.
acme_certificates = Table(
    "acme_certificates",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("account_id", Integer, ForeignKey("acme_accounts.id"), nullable=False),
    Column("domains", JSON, nullable=False),
    Column("key_type", String(10), nullable=False),
    Column("last_renewal", DateTime(timezone=True), nullable=True),
    Column("failures", Integer, nullable=False, server_default="0"),
    Column("next_attempt", DateTime(timezone=True), nullable=True),
    Column("last_error", Text, nullable=True),
)

# DNS-01 values published while an order runs: every node's DNS answers TXT at ``name``.
acme_challenges = Table(
    "acme_challenges",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("certificate", String(100), nullable=False, index=True),
    Column("name", String(255), nullable=False),
    Column("value", String(255), nullable=False),
)

# One row (id = 1) at most: the node renewing now, until when.
acme_lease = Table(
    "acme_lease",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("holder", String(200), nullable=False),
    Column("until", DateTime(timezone=True), nullable=False),
)
