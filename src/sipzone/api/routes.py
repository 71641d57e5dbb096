"""The ``/api/v1`` resources.  Reads filter by the caller's subtree; writes go through the
store acting as the caller, so the repository's rules (namespace, grants, proofs, provider-only
objects) decide, exactly as for the CLI."""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from sipzone.api import views
from sipzone.api.app import acting_store, current_caller
from sipzone.api.auth import Caller
from sipzone.api.proof import challenge_name, txt_strings
from sipzone.model.errors import BadCursor, InvalidValue, NotFound, NotPermitted, UnknownTenant
from sipzone.model.names import parse_domain, parse_rule
from sipzone.model.tenancy import PROVIDER
from sipzone.model.trunks import DEFAULT_INTERVAL, trunk_json
from sipzone.store.repository import DomainRow, Store

router = APIRouter()
CallerDep = Annotated[Caller, Depends(current_caller)]
MAX_PAGE = 1000

NamePath = Annotated[
    str,
    Path(
        max_length=300,
        description="As typed: IDN or A-label; a wildcard URL-encoded (%2A.teams.example.com).",
    ),
]
TenantPath = Annotated[str, Path(max_length=100)]
TenantQuery = Annotated[str | None, Query(max_length=100)]
Cursor = Annotated[str | None, Query(max_length=2000, description="`next` of the page before.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]


class Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DomainIn(Input):
    name: str = Field(max_length=300, examples=["*.teams.example.net"])
    owner: str | None = Field(None, max_length=100, description="Default: the caller's tenant.")


class TenantPatch(Input):
    """A tenant's optional fields (brand and upstream); "" inherits from the parent."""

    brand_name: str | None = Field(None, max_length=1000)
    support_email: str | None = Field(None, max_length=1000)
    web_url: str | None = Field(None, max_length=1000)
    logo_url: str | None = Field(None, max_length=1000)
    upstream: str | None = Field(None, max_length=1000)


class TenantIn(TenantPatch):
    name: str = Field(max_length=100)
    parent: str | None = Field(None, max_length=100, description="Default: the caller's tenant.")


class GrantIn(Input):
    namespace: str = Field(max_length=300)


class Ports(Input):
    udp: int = 5060
    tcp: int = 5060
    tls: int = 0


class SiteIn(Input):
    name: str = Field(max_length=100)
    vips: list[str] = Field(max_length=64)
    region: str = Field(max_length=200)
    networks: list[str] = Field(default_factory=list, max_length=1024)
    host: str | None = Field(None, max_length=300)
    weight: int = 100
    order: int | None = None
    ports: Ports = Field(default_factory=Ports)
    upstream: str | None = Field(None, max_length=1000)


class TrunkIn(Input):
    """A trunk as ``sipzone trunk add`` takes it; checked by the same rules."""

    targets: list[Annotated[str, Field(max_length=1000)]] = Field(
        max_length=64, examples=[["sip:sip.pstnhub.microsoft.com:5061;transport=tls"]]
    )
    base: str = Field(max_length=300, examples=["teams.example.com"])
    options_interval: int = DEFAULT_INTERVAL
    profile: str = Field("sip", max_length=20, examples=["teams"])
    sbc_header: str | None = Field(None, max_length=1000, description="X-MS-SBC value.")


class HealthIn(Input):
    healthy: bool


class ZoneIn(Input):
    name: str = Field(max_length=300)


class EmailIn(Input):
    name: str = Field(max_length=300)
    mx: str | None = Field(None, max_length=300)
    imap: list[str] = Field([], max_length=100)  # [SITE=][HOST:]PORT, as `email-domain set`
    submission: list[str] = Field([], max_length=100)


class Written(BaseModel):
    revision: int


class DomainPage(BaseModel):
    items: list[dict[str, Any]]
    next: str | None = Field(description="Cursor of the next page; null on the last.")


class AuditPage(BaseModel):
    items: list[dict[str, Any]]
    next: str | None


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _tenant_visible(caller: Caller, name: str) -> str:
    """``name`` (a tenant given in a body or query) if the caller sees it or has it in its
    chain, else the same error as for no such tenant (no oracle for others' names)."""
    if not caller.sees(name) and name not in caller.chain:
        raise UnknownTenant(f"tenant {name!r} does not exist")
    return name


def _said(request: Request, *values: str | None) -> None:
    """Note names the caller sent in the body: error messages may repeat them to it."""
    request.state.said = {v for v in values if v}


def _tenant_at(request: Request, caller: Caller, name: str) -> str:
    """``name`` (a tenant in the path) if it exists and the caller sees it, else 404."""
    if not caller.sees(name) or name not in _store(request).tenants():
        raise NotFound(f"tenant {name!r} does not exist")
    return name


def _visible_domain(store: Store, caller: Caller, name: str) -> DomainRow:
    row = store.domain(name)
    if not caller.sees(row.owner):
        raise NotFound(f"{row.name!r} is not a SIP domain here")
    return row


# ---------------------------------------------------------------------------- tenants


@router.get("/tenants", tags=["tenants"])
def list_tenants(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """The tenants the caller sees: its subtree (everyone for the provider)."""
    tree = _store(request).tenants()
    names = [t.name for t in tree if caller.sees(t.name)]
    names.sort(key=lambda n: tree.view(n).chain[::-1])
    return [views.tenant_json(tree, n) for n in names]


@router.post("/tenants", status_code=201, tags=["tenants"])
def add_tenant(request: Request, caller: CallerDep, body: TenantIn) -> dict[str, Any]:
    """Add a tenant below the caller (or below a tenant of its subtree)."""
    _said(request, body.name, body.parent)
    parent = _tenant_visible(caller, body.parent or caller.tenant)
    fields = body.model_dump(exclude={"name", "parent"})
    rev = acting_store(request, caller).add_tenant(body.name, parent, **fields)
    return {**views.tenant_json(_store(request).tenants(), body.name), "revision": rev}


@router.get("/tenants/{name}", tags=["tenants"])
def get_tenant(request: Request, caller: CallerDep, name: TenantPath) -> dict[str, Any]:
    return views.tenant_json(_store(request).tenants(), _tenant_at(request, caller, name))


@router.patch("/tenants/{name}", tags=["tenants"])
def change_tenant(
    request: Request, caller: CallerDep, name: TenantPath, body: TenantPatch
) -> dict[str, Any]:
    """Change brand fields or upstream; an empty string inherits from the parent."""
    _tenant_at(request, caller, name)
    fields = body.model_dump(exclude_unset=True)
    if not fields:
        raise InvalidValue("nothing to change: give at least one field")
    rev = acting_store(request, caller).update_tenant(name, **fields)
    return {**views.tenant_json(_store(request).tenants(), name), "revision": rev}


@router.get("/tenants/{name}/grants", tags=["tenants"])
def list_grants(request: Request, caller: CallerDep, name: TenantPath) -> list[str]:
    """The namespaces (inside the provider's zones) the tenant may create rules in."""
    _tenant_at(request, caller, name)
    return [ns for tenant, ns in _store(request).list_grants() if tenant == name]


@router.post("/tenants/{name}/grants", status_code=201, tags=["tenants"])
def grant(request: Request, caller: CallerDep, name: TenantPath, body: GrantIn) -> Written:
    """Grant a namespace the caller holds to a tenant below it."""
    _tenant_at(request, caller, name)
    _ns, rev = acting_store(request, caller).grant_namespace(name, body.namespace)
    return Written(revision=rev)


# ---------------------------------------------------------------------------- domains


@router.get("/domains", tags=["domains"])
def list_domains(
    request: Request,
    caller: CallerDep,
    owner: TenantQuery = None,
    wildcard: bool | None = None,
    prefix: Annotated[str | None, Query(max_length=300, description="Name starts with.")] = None,
    suffix: Annotated[str | None, Query(max_length=300, description="Name ends with.")] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> DomainPage:
    """One page of the rules the caller sees, by name (with ``suffix``: by reversed name)."""
    store = _store(request)
    owners: list[str] | None
    if owner is not None:
        _tenant_visible(caller, owner)
        store.tenants().get(owner)  # 422 for no such tenant, as for one the caller cannot see
        owners = [owner]
    else:
        owners = caller.owners
    by = "rname" if suffix is not None else "name"
    after = decode_str_cursor(cursor, by)
    rows, key = store.page_domains(
        owners,
        wildcard=wildcard,
        prefix=_search_text(prefix),
        suffix=_search_text(suffix),
        after=after,
        limit=limit,
    )
    return DomainPage(
        items=[views.domain_json(r) for r in rows],
        next=views.encode_cursor(by, key) if key is not None else None,
    )


def decode_str_cursor(cursor: str | None, by: str) -> str | None:
    if cursor is None:
        return None
    key = views.decode_cursor(cursor, by)
    return str(key)


def _search_text(text: str | None) -> str | None:
    """A prefix or suffix as stored: lower case, each whole IDN label as its A-label."""
    if text is None or text == "":
        return None
    labels = text.lower().split(".")
    # A non-ASCII label is taken whole (its A-label is no prefix of a longer one's).
    return ".".join(
        label if label.isascii() else parse_domain(label + ".example").text.split(".")[0]
        for label in labels
    )


@router.post(
    "/domains",
    tags=["domains"],
    status_code=201,
    responses={200: {"description": "Present already"}, 202: {"description": "Pending"}},
)
def add_domain(
    request: Request, response: Response, caller: CallerDep, body: DomainIn
) -> dict[str, Any]:
    """Add an exact or wildcard rule: 201 added, 200 present already with this owner
    (a pending claim is checked again), 202 pending until the TXT proof is seen, 409
    held by another owner."""
    store = _store(request)
    _said(request, body.owner)
    owner = _tenant_visible(caller, body.owner or caller.tenant)
    rule = parse_rule(body.name)
    existing = None
    with contextlib.suppress(NotFound):
        existing = store.domain(rule.text)
    if existing is not None and existing.owner == owner and caller.sees(owner):
        row = _prove(request, caller, existing) if existing.pending else existing
        response.status_code = 202 if row.pending else 200
        return views.domain_json(row)
    acting_store(request, caller).add_domain(rule.text, owner)
    row = store.domain(rule.text)
    if row.pending:
        response.status_code = 202
    return views.domain_json(row)


def _prove(request: Request, caller: Caller, row: DomainRow) -> DomainRow:
    resolver = request.app.state.config.proof_resolver
    seen = txt_strings(challenge_name(row.name), resolver)
    proven, _rev = acting_store(request, caller).prove_domain(row.name, seen)
    return proven


@router.get("/domains/{name}", tags=["domains"])
def get_domain(request: Request, caller: CallerDep, name: NamePath) -> dict[str, Any]:
    return views.domain_json(_visible_domain(_store(request), caller, name))


@router.delete("/domains/{name}", tags=["domains"])
def remove_domain(request: Request, caller: CallerDep, name: NamePath) -> Written:
    """Remove a rule of the caller's subtree; the edge and DNS stop serving it at once."""
    row = _visible_domain(_store(request), caller, name)
    _rule, rev = acting_store(request, caller).remove_domain(row.name)
    return Written(revision=rev)


@router.post("/domains/{name}/verify", tags=["domains"])
def verify_domain(request: Request, caller: CallerDep, name: NamePath) -> dict[str, Any]:
    """Look up the TXT proof of a pending claim now; active once it holds the challenge."""
    row = _visible_domain(_store(request), caller, name)
    return views.domain_json(_prove(request, caller, row) if row.pending else row)


@router.get("/check/{name}", tags=["domains"])
def check(request: Request, caller: CallerDep, name: NamePath) -> dict[str, Any]:
    """Is ``name`` admitted, by which rule and owner (``sipzone check --json``)?  The rule and
    owner of a name outside the caller's subtree are not shown, only that it is admitted."""
    key = parse_domain(name).text
    match, revision = _store(request).check(key)
    data = views.check_json(key, match, revision)
    if match is not None and not caller.sees(match.owner.name):
        data.update(rule=None, wildcard=None, owner=None, chain=None)
    return data


# ---------------------------------------------------------------------------- sites, zones


@router.get("/sites", tags=["installation"])
def list_sites(request: Request, _caller: CallerDep) -> list[dict[str, Any]]:
    return [views.site_json(s) for s in _store(request).list_sites()]


@router.get("/sites/{name}", tags=["installation"])
def get_site(request: Request, _caller: CallerDep, name: TenantPath) -> dict[str, Any]:
    for site in _store(request).list_sites():
        if site.name == name:
            return views.site_json(site)
    raise NotFound(f"site {name!r} does not exist")


@router.post("/sites", status_code=201, tags=["installation"])
def add_site(request: Request, caller: CallerDep, body: SiteIn) -> Written:
    """Add a site (provider only)."""
    rev = acting_store(request, caller).add_site(
        body.name,
        vips=body.vips,
        region=body.region,
        networks=body.networks,
        host=body.host,
        weight=body.weight,
        order=body.order,
        ports=body.ports.model_dump(),
        upstream=body.upstream,
    )
    return Written(revision=rev)


@router.delete("/sites/{name}", tags=["installation"])
def remove_site(request: Request, caller: CallerDep, name: TenantPath) -> Written:
    return Written(revision=acting_store(request, caller).remove_site(name))


@router.put("/sites/{name}/health", tags=["installation"])
def site_health(request: Request, caller: CallerDep, name: TenantPath, body: HealthIn) -> Written:
    """Mark a site up or down (provider only)."""
    return Written(revision=acting_store(request, caller).set_site_health(name, body.healthy))


def _provider_reads(caller: Caller, what: str) -> None:
    """Only the provider reads ``what`` (installation objects naming its nodes and peers)."""
    if caller.tenant != PROVIDER:
        raise NotPermitted(f"only the provider reads {what}; tenant {caller.tenant!r} may not")


@router.get("/certificates", tags=["installation"])
def list_certificates(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """TLS certificates' metadata, the default first (provider only; never a key)."""
    _provider_reads(caller, "certificates")
    certs = _store(request).list_certificates()
    return [views.certificate_json(c, i == 0) for i, c in enumerate(certs)]


@router.get("/trunks", tags=["installation"])
def list_trunks(request: Request, caller: CallerDep) -> list[dict[str, Any]]:
    """Trunks with each target's state as the edges last saw it, per node (up/down, last
    response, round-trip time): ``trunk list --json``.  Provider only."""
    _provider_reads(caller, "trunks")
    store = _store(request)
    seen = store.trunk_states()
    return [trunk_json(t, seen) for t in store.list_trunks()]


@router.get("/trunks/{name}", tags=["installation"])
def get_trunk(request: Request, caller: CallerDep, name: TenantPath) -> dict[str, Any]:
    _provider_reads(caller, "trunks")
    store = _store(request)
    for trunk in store.list_trunks():
        if trunk.name == name:
            return trunk_json(trunk, store.trunk_states())
    raise NotFound(f"trunk {name!r} does not exist")


@router.put(
    "/trunks/{name}",
    status_code=201,
    responses={200: {"description": "Replaced a trunk of that name."}},
    tags=["installation"],
)
def put_trunk(
    request: Request, response: Response, caller: CallerDep, name: TenantPath, body: TrunkIn
) -> Written:
    """Store trunk ``name``, or replace it (provider only): running edges keep its targets
    alive with OPTIONS once they see the change."""
    _trunk, rev, replaced = acting_store(request, caller).add_trunk(
        name, body.targets, body.base, body.options_interval, body.profile, body.sbc_header
    )
    if replaced:
        response.status_code = 200
    return Written(revision=rev)


@router.delete("/trunks/{name}", tags=["installation"])
def remove_trunk(request: Request, caller: CallerDep, name: TenantPath) -> Written:
    """Remove a trunk (provider only); edges stop sending it OPTIONS and calls."""
    return Written(revision=acting_store(request, caller).remove_trunk(name))


@router.get("/zones", tags=["installation"])
def list_zones(request: Request, _caller: CallerDep) -> list[str]:
    return _store(request).list_zones()


@router.post("/zones", status_code=201, tags=["installation"])
def add_zone(request: Request, caller: CallerDep, body: ZoneIn) -> Written:
    _zone, rev = acting_store(request, caller).add_zone(body.name)
    return Written(revision=rev)


@router.delete("/zones/{name}", tags=["installation"])
def remove_zone(request: Request, caller: CallerDep, name: NamePath) -> Written:
    return Written(revision=acting_store(request, caller).remove_zone(name))


@router.get("/email-domain", tags=["installation"])
def email_domain(request: Request, _caller: CallerDep) -> dict[str, Any]:
    return views.email_json(_store(request).settings())


@router.put("/email-domain", tags=["installation"])
def set_email_domain(request: Request, caller: CallerDep, body: EmailIn) -> Written:
    _name, rev = acting_store(request, caller).set_email_domain(
        body.name, body.mx, body.imap, body.submission
    )
    return Written(revision=rev)


# ---------------------------------------------------------------------------- status, audit


@router.get("/status", tags=["status"])
def status(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The store's revision, the one this node serves, and the node."""
    holder = request.app.state.holder
    return {
        "revision": _store(request).revision(),
        "served_revision": holder.current.revision if holder is not None else None,
        "node": request.app.state.node if caller.tenant == PROVIDER else None,
        "tenant": caller.tenant,
    }


@router.get("/audit", tags=["status"])
def audit(
    request: Request,
    caller: CallerDep,
    tenant: TenantQuery = None,
    since: Annotated[str | None, Query(max_length=100, examples=["12h"])] = None,
    cursor: Cursor = None,
    limit: Limit = 100,
) -> AuditPage:
    """Change-log entries about the caller's subtree (or ``tenant``'s), newest first."""
    store = _store(request)
    scope: list[str] | None
    if tenant is not None:
        _tenant_visible(caller, tenant)
        scope = store.tenants().subtree(tenant)
    else:
        scope = caller.owners
    before = views.decode_cursor(cursor, "id") if cursor else None
    if before is not None and not isinstance(before, int):
        raise BadCursor(f"cursor {str(cursor)[:40]!r} is not one this listing handed out")
    entries = store.audit(
        scope,
        since=views.parse_since(since) if since else None,
        before_id=before,
        limit=limit,
    )
    following = views.encode_cursor("id", entries[-1].id) if len(entries) == limit else None
    return AuditPage(items=[views.audit_json(e) for e in entries], next=following)
