"""The web console at ``/``: server-rendered pages (Jinja2) over the same store calls as the
API, white-labelled by the Host header.

Theory of operation:

- Sign-in takes an API token (``sipzone token create``) and keeps it in an HttpOnly,
  SameSite=Strict cookie (Secure when served over https); every page authenticates it as the
  API authenticates a bearer token, with the same failed-auth limiter.
- Forms are CSRF-safe twice over: the session cookie is SameSite=Strict (no other site's page
  can make the browser send it), and every form carries the value of a second random cookie
  (double submit), checked on every POST together with the Origin header when one is sent.
- White label: the Host header names the portal.  When it is a name one of the tenant's rules
  admits (its SIP domain, a name under its wildcard), or else the host of its web URL (given by
  that one tenant only), every page (sign-in included) carries that tenant's brand, inherited
  down the chain, and nothing of any other tenant; only tokens of that tenant's subtree may sign
  in there.  Any other host shows the plain sipzone console.  Rules decide first, so no
  tenant's web URL can take a name another tenant's rule admits.
- Writes go through :func:`sipzone.api.app.acting_store`, so they land in the audit trail with
  the token, the address and "console" as the channel.
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import FastAPI, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from sipzone.api import views
from sipzone.api.app import client_address
from sipzone.api.auth import Caller, authenticate
from sipzone.model.errors import (
    InvalidName,
    NotAuthenticated,
    NotFound,
    SipzoneError,
    UnknownTenant,
)
from sipzone.model.names import parse_domain, to_unicode
from sipzone.model.tenancy import Brand, TenancyTree
from sipzone.store.repository import Store

SESSION_COOKIE = "sipzone_session"
CSRF_COOKIE = "sipzone_csrf"
PAGE = 50  # domains per console page

templates = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


@dataclass(frozen=True)
class Portal:
    """Whose portal a Host header names: a tenant and its inherited brand, or none."""

    tenant: str | None
    brand: Brand | None

    @property
    def title(self) -> str:
        return (self.brand.brand_name if self.brand else None) or "sipzone"


def portal_for(store: Store, host_header: str | None) -> Portal:
    """The tenant whose brand the Host header asks for (see the module docstring)."""
    host = (host_header or "").rsplit(":", 1)[0] if not (host_header or "").endswith("]") else ""
    try:
        name = parse_domain(host).text
    except InvalidName:
        return Portal(None, None)
    match, _revision = store.check(name)
    if match is not None:  # a rule decides first: no web URL can take another's name
        return Portal(match.owner.name, match.owner.brand)
    tree = store.tenants()
    claimants = [
        t.name for t in tree if t.web_url and (urlsplit(t.web_url).hostname or "").lower() == name
    ]
    if len(claimants) != 1:  # none, or a name two tenants both give: no one's brand
        return Portal(None, None)
    return Portal(claimants[0], tree.view(claimants[0]).brand)


def _store(request: Request) -> Store:
    store: Store = request.app.state.store
    return store


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _csrf(request: Request) -> str:
    value = request.cookies.get(CSRF_COOKIE)
    if value and len(value) == 43:
        return value
    cached: str | None = getattr(request.state, "csrf", None)
    if cached is None:
        cached = secrets.token_urlsafe(32)
        request.state.csrf = cached
    return cached


def _render(
    request: Request,
    template: str,
    portal: Portal,
    caller: Caller | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    csrf = _csrf(request)
    response = templates.TemplateResponse(
        request,
        template,
        {
            "portal": portal,
            "caller": caller,
            "csrf": csrf,
            "revision": _store(request).revision() if caller else None,
            "to_unicode": to_unicode,
            **context,
        },
        status_code=status,
    )
    if request.cookies.get(CSRF_COOKIE) != csrf:
        response.set_cookie(
            CSRF_COOKIE, csrf, httponly=True, samesite="strict", secure=_secure(request)
        )
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _check_form(request: Request, csrf: str) -> None:
    """Refuse a POST whose CSRF field does not match its cookie, or from another origin."""
    cookie = request.cookies.get(CSRF_COOKIE, "")
    if not cookie or not hmac.compare_digest(cookie.encode(), csrf.encode()):
        raise _Refused("the form is stale or came from another site; reload the page")
    origin = request.headers.get("origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.headers.get("host"):
        raise _Refused("the form came from another site")


class _Refused(Exception):
    """A console POST that failed its CSRF checks (never reaches the store)."""


def _signed_in(request: Request, portal: Portal) -> Caller | None:
    secret = request.cookies.get(SESSION_COOKIE)
    if not secret:
        return None
    app_state = request.app.state
    try:
        caller = authenticate(_store(request), app_state.limiter, secret, client_address(request))
    except SipzoneError:
        return None
    if not _belongs(caller, portal, _store(request).tenants()):
        return None
    request.state.caller = caller
    return caller


def _belongs(caller: Caller, portal: Portal, tree: TenancyTree) -> bool:
    """A branded portal admits the tokens of its tenant's subtree only."""
    return portal.tenant is None or portal.tenant in tree.view(caller.tenant).chain


def _session(request: Request) -> tuple[Portal, Caller | None]:
    """The portal the request's Host names, and who is signed in to it (None: nobody)."""
    portal = portal_for(_store(request), request.headers.get("host"))
    return portal, _signed_in(request, portal)


def _to_signin(request: Request) -> Response:
    return RedirectResponse("/signin", status_code=303)


def install(app: FastAPI) -> None:
    """Add the console's pages to ``app``."""
    from sipzone.api.app import acting_store

    def acting(request: Request, caller: Caller) -> Store:
        store = acting_store(request, caller)
        store.via, store.principal = "console", f"{caller.principal} in the console"
        return store

    @app.get("/signin", include_in_schema=False)
    def signin_page(request: Request) -> Response:
        return _render(
            request, "signin.html", portal_for(_store(request), request.headers.get("host")), None
        )

    @app.post("/signin", include_in_schema=False)
    def signin(request: Request, token: str = Form(""), csrf: str = Form("")) -> Response:
        portal = portal_for(_store(request), request.headers.get("host"))
        try:
            _check_form(request, csrf)
            caller = authenticate(
                _store(request), app.state.limiter, token.strip(), client_address(request)
            )
            if not _belongs(caller, portal, _store(request).tenants()):
                raise NotAuthenticated("this token does not belong to this portal")
        except (SipzoneError, _Refused) as exc:
            status = 429 if "too many" in str(exc) else 401
            return _render(request, "signin.html", portal, None, status, error=str(exc))
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(
            SESSION_COOKIE, token.strip(), httponly=True, samesite="strict",
            secure=_secure(request),
        )  # fmt: skip
        return response

    @app.post("/signout", include_in_schema=False)
    def signout(request: Request, csrf: str = Form("")) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        try:
            _check_form(request, csrf)
        except _Refused:
            return response
        response.delete_cookie(SESSION_COOKIE)
        return response

    @app.get("/", include_in_schema=False)
    def domains_page(
        request: Request,
        prefix: str = "",
        suffix: str = "",
        cursor: str = "",
        done: str = "",
    ) -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        return _domains(request, portal, caller, prefix, suffix, cursor, done=done)

    def _domains(
        request: Request,
        portal: Portal,
        caller: Caller,
        prefix: str = "",
        suffix: str = "",
        cursor: str = "",
        status: int = 200,
        **context: Any,
    ) -> Response:
        from sipzone.api.routes import _search_text, decode_str_cursor

        store = _store(request)
        by = "rname" if suffix else "name"
        rows: list[Any] = []
        following = None
        try:
            owners = caller.owners
            found, key = store.page_domains(
                owners,
                prefix=_search_text(prefix),
                suffix=_search_text(suffix),
                after=decode_str_cursor(cursor or None, by),
                limit=PAGE,
            )
            rows = [views.domain_json(r) for r in found]
            if key is not None:
                query = {"prefix": prefix, "suffix": suffix, "cursor": views.encode_cursor(by, key)}
                following = "/?" + urlencode({k: v for k, v in query.items() if v})
        except SipzoneError as exc:
            context["error"] = caller.hide(str(exc))
            status = 422
        tree = store.tenants()
        owners_list = [t.name for t in tree if caller.sees(t.name)]
        return _render(
            request, "domains.html", portal, caller, status,
            rows=rows, following=following, prefix=prefix, suffix=suffix,
            owners=sorted(owners_list), **context,
        )  # fmt: skip

    @app.post("/domains/add", include_in_schema=False)
    def add_domain(
        request: Request, name: str = Form(""), owner: str = Form(""), csrf: str = Form("")
    ) -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        try:
            _check_form(request, csrf)
            owner = owner or caller.tenant
            if not caller.sees(owner):
                raise UnknownTenant(f"tenant {owner!r} does not exist")
            rule, _rev = acting(request, caller).add_domain(name, owner)
        except (SipzoneError, _Refused) as exc:
            return _domains(
                request, portal, caller, status=422, error=caller.hide(str(exc), {name, owner})
            )
        return RedirectResponse("/?" + urlencode({"done": f"{rule.text} added"}), status_code=303)

    @app.post("/domains/remove", include_in_schema=False)
    def remove_domain(request: Request, name: str = Form(""), csrf: str = Form("")) -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        try:
            _check_form(request, csrf)
            row = _store(request).domain(name)
            if not caller.sees(row.owner):
                raise NotFound(f"{row.name!r} is not a SIP domain here")
            rule, _rev = acting(request, caller).remove_domain(row.name)
        except (SipzoneError, _Refused) as exc:
            return _domains(
                request, portal, caller, status=422, error=caller.hide(str(exc), {name})
            )
        return RedirectResponse("/?" + urlencode({"done": f"{rule.text} removed"}), status_code=303)

    @app.get("/check", include_in_schema=False)
    def check_page(request: Request, name: str = "") -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        result = None
        error = None
        if name:
            try:
                key = parse_domain(name).text
                match, revision = _store(request).check(key)
                result = views.check_json(key, match, revision)
                if match is not None and not caller.sees(match.owner.name):
                    result.update(rule=None, owner=None, chain=None)
            except SipzoneError as exc:
                error = str(exc)
        return _render(request, "check.html", portal, caller, 200 if error is None else 422,
                       name=name, result=result, error=error)  # fmt: skip

    @app.get("/sites", include_in_schema=False)
    def sites_page(request: Request) -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        sites = [views.site_json(s) for s in _store(request).list_sites()]
        return _render(request, "sites.html", portal, caller, sites=sites)

    @app.get("/audit", include_in_schema=False)
    def audit_page(request: Request, cursor: str = "") -> Response:
        portal, caller = _session(request)
        if caller is None:
            return _to_signin(request)
        scope = caller.owners
        before = None
        if cursor:
            try:
                key = views.decode_cursor(cursor, "id")
                before = key if isinstance(key, int) else None
            except SipzoneError:
                before = None
        entries = _store(request).audit(scope, before_id=before, limit=PAGE)
        following = None
        if len(entries) == PAGE:
            following = "/audit?" + urlencode({"cursor": views.encode_cursor("id", entries[-1].id)})
        rows = [views.audit_json(e) for e in entries]
        return _render(request, "audit.html", portal, caller, entries=rows, following=following)
