"""`sipzone dump` and `sipzone restore`: the whole store as one JSON document, and back.

Theory of operation:

- A dump is read in one transaction, so it is one revision of the store: tenants (parents
  before children, their own fields, nothing inherited), SIP domains with their owners (a
  claim still waiting for its proof stays pending, with its challenge), namespace grants,
  sites, zones, installation settings, TLS certificates, and the store's revision and schema
  version.  Secrets are left out unless ``--with-secrets`` asks for them: settings whose key
  holds ``secret`` (the SIP branch keys), the certificates' chains and keys (without them a
  dump lists each certificate's names, serial and expiry only, and a restore skips them), and
  the API tokens (their digests).  A dump with secrets must be kept as the store is.
- The document is written with sorted keys, two-space indents and a final newline, and every
  list in a fixed order, so the same store always gives the same bytes: dump, restore into
  another database, dump again, and the two files are identical (tests/store/test_backup.py).
- A restore goes into an empty store (``sipzone init`` and nothing else) in one transaction,
  every value checked by the same rules as the commands that write it; a dump that breaks one
  restores nothing.  The restored store's revision is the dump's (or the next one, if the
  empty store has gone further), so SOA serials never go back for the secondaries.  Without
  secrets in the dump, the store keeps the keys ``init`` made.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from sipzone.model.certificates import parse_certificate
from sipzone.model.errors import InvalidValue, SipzoneError
from sipzone.store.repository import Store
from sipzone.store.schema import (
    certificates,
    domains,
    grants,
    settings,
    sites,
    state,
    tenants,
    tokens,
    trunks,
    zones,
)

FORMAT = "sipzone-dump"
VERSION = 1
TENANT_FIELDS = ("brand_name", "support_email", "web_url", "logo_url", "upstream")
PORTS = ("udp", "tcp", "tls")


class BadDump(InvalidValue):
    """A file that is not a sipzone dump this version can restore."""


def is_secret(key: str) -> bool:
    """Whether the setting ``key`` holds a secret (never printed, dumped only on request)."""
    return "secret" in key


def dump(store: Store, with_secrets: bool = False) -> dict[str, Any]:
    """The store at one revision as a dump document (see the module's docstring)."""
    schema = store.schema_version()
    with store.engine.connect() as conn, conn.begin():
        revision = int(conn.execute(sa.select(state.c.revision)).scalar_one())
        parent = tenants.alias("parent")
        rows = conn.execute(
            sa.select(tenants, parent.c.name.label("parent_name")).outerjoin(
                parent, tenants.c.parent_id == parent.c.id
            )
        ).mappings()
        by_name = {
            str(r["name"]): {
                "name": r["name"],
                "parent": r["parent_name"],
                **{f: r[f] for f in TENANT_FIELDS},
            }
            for r in rows
        }
        owners = dict(conn.execute(sa.select(tenants.c.id, tenants.c.name)).all())
        domain_rows = conn.execute(
            sa.select(
                domains.c.name, domains.c.owner_id, domains.c.pending, domains.c.challenge
            ).order_by(domains.c.name)
        ).all()
        grant_list = sorted(
            ({"tenant": owners[t], "namespace": n, "granted_by": b} for t, n, b in
             conn.execute(sa.select(grants.c.tenant_id, grants.c.namespace, grants.c.granted_by))),
            key=lambda g: (g["tenant"], g["namespace"]),
        )  # fmt: skip
        certificate_list = [
            _certificate(store, row, with_secrets)
            for row in conn.execute(
                sa.select(certificates).order_by(certificates.c.name)
            ).mappings()
        ]
        token_list = (
            [
                {
                    "tenant": owners[r["tenant_id"]],
                    "label": r["label"],
                    "digest": r["digest"],
                    "created_at": _when(r["created_at"]),
                    "expires_at": _when(r["expires_at"]),
                    "revoked_at": _when(r["revoked_at"]),
                }
                for r in conn.execute(sa.select(tokens).order_by(tokens.c.digest)).mappings()
            ]
            if with_secrets
            else []
        )
        site_rows = conn.execute(sa.select(sites).order_by(sites.c.position, sites.c.name))
        site_list = [
            {
                "name": r["name"],
                "region": r["region"],
                "host": r["host"],
                "vips": list(r["vips"]),
                "networks": list(r["networks"]),
                "ports": {t: int(r[f"port_{t}"]) for t in PORTS},
                "weight": int(r["weight"]),
                "order": int(r["position"]),
                "upstream": r["upstream"],
                "healthy": bool(r["healthy"]),
            }
            for r in site_rows.mappings()
        ]
        trunk_list = [
            {
                "name": r["name"],
                "targets": list(r["targets"]),
                "base": r["base"],
                "options_interval": int(r["options_interval"]),
                "profile": r["profile"],
                "sbc_header": r["sbc_header"],
            }
            for r in conn.execute(sa.select(trunks).order_by(trunks.c.name)).mappings()
        ]
        zone_list = list(conn.execute(sa.select(zones.c.name).order_by(zones.c.name)).scalars())
        setting_map = {
            str(k): str(v)
            for k, v in conn.execute(sa.select(settings.c.key, settings.c.value)).all()
            if with_secrets or not is_secret(str(k))
        }
    return {
        "format": FORMAT,
        "version": VERSION,
        "schema": schema,
        "revision": revision,
        "secrets": with_secrets,
        "tenants": _parents_first(by_name),
        "domains": [_domain(n, owners[o], pending, challenge) for n, o, pending, challenge in
                    domain_rows],
        "grants": grant_list,
        "sites": site_list,
        "zones": zone_list,
        "settings": setting_map,
        "certificates": certificate_list,
        "tokens": token_list,
        "trunks": trunk_list,
    }  # fmt: skip


def _domain(name: str, owner: str, pending: bool, challenge: str | None) -> dict[str, Any]:
    if not pending:
        return {"name": name, "owner": owner}
    return {"name": name, "owner": owner, "pending": True, "challenge": challenge}


def _certificate(store: Store, row: Any, with_secrets: bool) -> dict[str, Any]:
    """A stored certificate as a dump holds it: what it covers always, its PEMs as secrets."""
    entry: dict[str, Any] = {"name": row["name"], "default": bool(row["is_default"])}
    try:
        cert = parse_certificate(row["name"], row["chain_pem"], row["key_pem"])
    except SipzoneError:
        cert = None  # a row that no longer parses: named, and its PEMs kept with secrets
    if cert is not None:
        entry.update(
            names=list(cert.names),
            serial=f"{cert.serial:x}",
            not_after=cert.not_after.isoformat(),
        )
    if with_secrets:
        entry.update(chain_pem=row["chain_pem"], key_pem=row["key_pem"])
    return entry


def _when(at: datetime | None) -> str | None:
    if at is None:
        return None
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).isoformat()


def _parents_first(by_name: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Tenants ordered by their chain from the root (each after its parent), names breaking
    ties: a fixed order a restore can insert in."""

    def chain(name: str) -> list[str]:
        out: list[str] = []
        at: str | None = name
        while at is not None and at not in out:
            out.append(at)
            at = by_name[at]["parent"] if at in by_name else None
        return out[::-1]

    return [by_name[n] for n in sorted(by_name, key=chain)]


def to_text(document: dict[str, Any]) -> str:
    """The dump's bytes as text: always the same for the same document."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def parse(text: str) -> dict[str, Any]:
    """A dump read back, its shape checked (the values are checked as they are restored)."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadDump(f"not a sipzone dump: not JSON ({exc})") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise BadDump('not a sipzone dump (no "format": "sipzone-dump")')
    if document.get("version") != VERSION:
        raise BadDump(
            f"dump version {document.get('version')!r}; this sipzone restores version {VERSION}"
        )
    shapes = {
        "revision": int, "tenants": list, "domains": list, "sites": list, "zones": list,
        "settings": dict,
    }  # fmt: skip
    for key, kind in shapes.items():
        if not isinstance(document.get(key), kind):
            raise BadDump(f"not a sipzone dump: {key!r} should be a {kind.__name__}")
    for key in ("grants", "certificates", "tokens", "trunks"):  # not in older dumps
        if not isinstance(document.setdefault(key, []), list):
            raise BadDump(f"not a sipzone dump: {key!r} should be a list")
    return document
