"""SQLAlchemy Core tables: the one description of what the store holds.

Alembic migrations in ``migrations/versions`` create and evolve these tables; this module is
what the repository queries against.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Table,
    Text,
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
)

zones = Table(
    "zones",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(255), nullable=False, unique=True),
)

# Installation-wide values: the email domain (never per site), its MX, and the like.
settings = Table(
    "settings",
    metadata,
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=False),
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
