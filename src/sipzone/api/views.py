"""The JSON shapes of sipzone's objects, one function per noun, shared by the CLI's ``--json``
output, the API and the web console (so the three never drift), and the few value parsers
the API and CLI share (cursors, ``--since``)."""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from sipzone.model.acme import AcmeState
from sipzone.model.certificates import Certificate
from sipzone.model.errors import BadCursor, InvalidValue
from sipzone.model.mail import SETTING
from sipzone.model.matcher import Match
from sipzone.model.names import to_unicode
from sipzone.model.snapshot import Site
from sipzone.model.tenancy import TenancyTree, TenantView
from sipzone.store.repository import AuditEntry, DomainRow, TokenRow


def tenant_json(tree: TenancyTree, name: str) -> dict[str, Any]:
    """A tenant with the brand and upstream it inherits (``tenant list --json``)."""
    tenant, view = tree.get(name), tree.view(name)
    return {
        "name": tenant.name,
        "parent": tenant.parent,
        "chain": list(view.chain),
        "brand_name": view.brand.brand_name,
        "support_email": view.brand.support_email,
        "web_url": view.brand.web_url,
        "logo_url": view.brand.logo_url,
        "upstream": view.upstream,
    }


def domain_json(row: DomainRow) -> dict[str, Any]:
    """A SIP domain rule (``domain list --json``); a pending claim says where its proof goes."""
    data: dict[str, Any] = {
        "name": row.name,
        "unicode": to_unicode(row.name),
        "owner": row.owner,
        "wildcard": row.wildcard,
        "revision": row.revision,
        "status": "pending" if row.pending else "active",
    }
    if row.pending and row.challenge:
        from sipzone.api.proof import challenge_name  # dnspython: not for every CLI listing

        data["challenge"] = {
            "name": challenge_name(row.name),
            "type": "TXT",
            "value": row.challenge,
        }
    return data


def check_json(name: str, match: Match[TenantView] | None, revision: int) -> dict[str, Any]:
    """Whether ``name`` is admitted, by which rule and owner (``check --json``)."""
    return {
        "name": name,
        "admitted": match is not None,
        "rule": match.rule if match else None,
        "wildcard": match.wildcard if match else None,
        "owner": match.owner.name if match else None,
        "chain": list(match.owner.chain) if match else None,
        "revision": revision,
    }


def site_json(site: Site) -> dict[str, Any]:
    """A site with every field (``site list --json``)."""
    return {
        "name": site.name,
        "region": site.region,
        "vips": [str(v) for v in site.vips],
        "networks": [str(n) for n in site.networks],
        "host": site.host,
        "ports": dict(site.ports),
        "weight": site.weight,
        "order": site.order,
        "upstream": site.upstream,
        "healthy": site.healthy,
    }


def email_json(settings: Mapping[str, str]) -> dict[str, Any]:
    """The email domain, its MX and its voicemail endpoints (``email-domain show --json``)."""
    return {
        "email_domain": settings.get("email_domain"),
        "mx": settings.get("email_mx"),
        **{s: (settings.get(key) or "").split() for s, key in SETTING.items()},
    }


def certificate_json(cert: Certificate, default: bool) -> dict[str, Any]:
    """A TLS certificate's metadata (``cert list --json``); never its key."""
    return {
        "name": cert.name,
        "default": default,
        "names": list(cert.names),
        "subject": cert.subject,
        "issuer": cert.issuer,
        "serial": f"{cert.serial:x}",
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
        "days_left": int(cert.days_left() // 1),
        "fingerprint_sha256": cert.fingerprint,
    }


def renewal_json(state: AcmeState | None) -> dict[str, Any]:
    """How a certificate is managed (``cert list --json``): ``managed`` is ``acme`` or
    ``manual``; ``renewal`` (ACME only) what it is ordered with and how renewals went."""
    if state is None:
        return {"managed": "manual", "renewal": None}
    when = {
        key: at.isoformat() if at else None
        for key, at in (("last", state.last_renewal), ("next_attempt", state.next_attempt))
    }
    return {
        "managed": "acme",
        "renewal": {
            "directory": state.plan.directory,
            "email": state.plan.email,
            "domains": list(state.plan.domains),
            "key_type": state.plan.key_type,
            "failures": state.failures,
            "last_error": state.last_error,
            **when,
        },
    }


def token_json(token: TokenRow) -> dict[str, Any]:
    """A token's metadata (never its text: the store does not have it)."""
    return {
        "id": token.id,
        "tenant": token.tenant,
        "label": token.label,
        "created_at": token.created_at.isoformat(),
        "expires_at": token.expires_at.isoformat() if token.expires_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """One change-log entry: when, what, who (tenant and credential), from where, before and
    after."""
    return {
        "id": entry.id,
        "revision": entry.revision,
        "at": entry.at.isoformat(),
        "op": entry.op,
        "subject": entry.subject,
        "tenant": entry.tenant,
        "actor_tenant": entry.actor_tenant,
        "principal": entry.principal,
        "origin": entry.origin,
        "before": entry.before,
        "after": entry.after,
    }


def encode_cursor(by: str, key: str | int) -> str:
    """An opaque cursor: where the next page starts, in which order."""
    raw = json.dumps({"by": by, "after": key}, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str, by: str) -> Any:
    """The key a cursor of order ``by`` holds; :class:`BadCursor` for anything else."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        data = json.loads(raw)
    except (binascii.Error, ValueError):
        data = None
    if not isinstance(data, dict) or data.get("by") != by or "after" not in data:
        raise BadCursor(
            f"cursor {text[:40]!r} is not one this listing handed out (with these filters)"
        )
    key = data["after"]
    if not isinstance(key, str | int) or isinstance(key, bool):
        raise BadCursor(f"cursor {text[:40]!r} is not one this listing handed out")
    return key


_RELATIVE = re.compile(r"(\d{1,6})([smhd])\Z")
_UNIT = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``30m``, ``12h``, ``7d`` (that long ago) or an ISO 8601 time (UTC unless it says)."""
    found = _RELATIVE.match(text.strip())
    if found:
        ago = timedelta(**{_UNIT[found.group(2)]: int(found.group(1))})
        return (now or datetime.now(UTC)) - ago
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidValue(
            f"since {text!r} is neither a time such as 2026-11-27T08:00 nor an age such as 12h"
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
