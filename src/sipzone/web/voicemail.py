"""The voicemail pages at ``https://<email domain>/``: a subscriber signs in with mailbox and
password and hears, marks as heard and deletes their voice messages.

Theory of operation:

- The API's process serves them: a request whose Host is the email domain goes to this app
  (:class:`MailHost`), any other to the console and the API.  Both answer the mail clients'
  autoconfig (:mod:`sipzone.web.mailconfig`).
- sipzone stores no subscriber password and keeps no session on the server.  The IMAP server
  of the site this node runs at checks mailbox and password at sign-in and again on every
  request (:mod:`sipzone.web.mailbox`).  What the browser holds between requests is the
  credential sealed with AES-GCM under a key derived from the store's SIP branch secret (the
  email domain is authenticated with it; ``sip rotate-secret`` signs everyone out), in an
  HttpOnly, SameSite=Strict cookie (Secure over https).  Why not a server-side session: with
  ``--workers N`` and several nodes behind one name, the next request of a browser may reach
  any worker of any node, and a session in one worker's memory would sign it out at random,
  while a shared one would put credentials in the store.  What this costs: a copy of the
  cookie stolen before sign-out works until it expires, so it expires after
  :data:`IDLE` seconds without a page view and :data:`LONGEST` after sign-in, and a changed
  password ends it at once.
- Mark as heard and delete are POST forms with the console's double-submit CSRF check; a
  UID is an integer path parameter, never text reaching IMAP.
- Failed sign-ins count in the API's failed-auth limiter (per address, /64 for IPv6): the
  client that guesses passwords gets 429 before its guesses reach the IMAP server.  A refused
  sign-in shows the same words whatever was wrong, and nothing of the mailbox.
- The page carries the brand of the tenant whose SIP domain the mailbox's domain is (a
  subscriber signing in as ``1001@voip.acme.example``), like the console's portal by Host.
- A recording streams with its Content-Type and single-range support (media elements seek
  with Range requests).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fastapi import FastAPI, Form, Request
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, Response

from sipzone.api.app import client_address
from sipzone.api.auth import limit_key
from sipzone.model.errors import SipzoneError, TooManyAttempts
from sipzone.model.mail import SETTING, endpoint_for, stored_endpoints
from sipzone.model.snapshot import Snapshot
from sipzone.sip import BRANCH_SECRET
from sipzone.web import Portal, _check_form, _Refused, _render, portal_for
from sipzone.web.mailbox import (
    Endpoint,
    Mailbox,
    MailboxError,
    StoreUnavailable,
    WrongCredentials,
    byte_range,
    parse_mailbox,
)
from sipzone.web.mailconfig import router as mailconfig_router

COOKIE = "sipzone_voicemail"
SESSION_LABEL = b"sipzone voicemail session"
IDLE = 30 * 60  # seconds a session lives without a page view ...
LONGEST = 8 * 3600  # ... and at most after sign-in
REFUSED = "wrong mailbox or password"
UID = PathParam(ge=1, le=2**32 - 1)


@dataclass(frozen=True)
class Session:
    """Who is signed in: what the cookie seals (never logged: the password is not in repr)."""

    mailbox: str
    password: str = field(repr=False)
    signed_in: float = 0.0


def _key(snapshot: Snapshot) -> bytes:
    """The sealing key: derived (HKDF) from the store's SIP branch secret, which every node
    shares already, under a label of its own, so neither key tells anything of the other."""
    secret = snapshot.settings.get(BRANCH_SECRET)
    if not secret:
        raise StoreUnavailable("the store has no installation secret yet (sipzone init)")
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=SESSION_LABEL)
    return hkdf.derive(bytes.fromhex(secret))


def seal(snapshot: Snapshot, session: Session, now: float) -> str:
    """The cookie value for ``session``, last used ``now``."""
    payload = json.dumps(
        {"m": session.mailbox, "p": session.password, "s": session.signed_in, "u": now}
    ).encode()
    nonce = os.urandom(12)
    sealed = AESGCM(_key(snapshot)).encrypt(nonce, payload, _aad(snapshot))
    return base64.urlsafe_b64encode(nonce + sealed).decode()


def unseal(snapshot: Snapshot, value: str, now: float) -> Session | None:
    """The session a cookie holds; None when it is not ours, altered, or expired."""
    try:
        raw = base64.urlsafe_b64decode(value.encode())
        payload = AESGCM(_key(snapshot)).decrypt(raw[:12], raw[12:], _aad(snapshot))
        data = json.loads(payload)
        session = Session(str(data["m"]), str(data["p"]), float(data["s"]))
        used = float(data["u"])
    except (ValueError, KeyError, TypeError, InvalidTag, binascii.Error, MailboxError):
        return None
    if now - used > IDLE or now - session.signed_in > LONGEST or used > now + 60:
        return None
    return session


def _aad(snapshot: Snapshot) -> bytes:
    return b"sipzone voicemail\0" + (snapshot.email_domain or "").encode()


def _host(scope: dict[str, Any]) -> str:
    for name, value in scope.get("headers") or ():
        if name == b"host":
            host = str(value.decode("latin-1")).lower()
            return host if host.endswith("]") else host.rsplit(":", 1)[0]
    return ""


class MailHost:
    """ASGI middleware: requests for the email domain go to the voicemail app."""

    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        voicemail: FastAPI,
        snapshot: Callable[[], Snapshot],
    ) -> None:
        self.app = app
        self.voicemail = voicemail
        self.snapshot = snapshot

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        email = self.snapshot().email_domain
        if scope["type"] == "http" and email and _host(scope) == email:
            await self.voicemail(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def imap_endpoint(snapshot: Snapshot, site: str | None) -> Endpoint:
    """Where this node's subscribers sign in: the IMAP endpoint of its site (``serve --site``;
    with none given, the first site that has one).  A site's own host is reached on its
    virtual IPs, its certificate checked against that host name."""
    endpoints = stored_endpoints("imap", snapshot.settings.get(SETTING["imap"]))
    email = snapshot.email_domain or ""
    zone = snapshot.zone_of(email) or email
    for candidate in sorted(snapshot.sites, key=lambda s: s.name != site):
        endpoint = endpoint_for(endpoints, candidate.name)
        if endpoint is None:
            continue
        if endpoint.host:
            return Endpoint(endpoint.host, endpoint.port)
        return Endpoint(candidate.host_in(zone), endpoint.port, tuple(map(str, candidate.vips)))
    raise StoreUnavailable(
        "no voicemail store is configured (sipzone email-domain set NAME --imap HOST:PORT)"
    )


def create_voicemail_app(parent: FastAPI) -> FastAPI:
    """The voicemail app, sharing ``parent``'s store, snapshot, limiter and configuration."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    for name in ("store", "holder", "limiter", "config"):
        setattr(app.state, name, getattr(parent.state, name))
    config = parent.state.config
    context = ssl.create_default_context(cafile=config.mail_ca)
    app.include_router(mailconfig_router)

    def snapshot() -> Snapshot:
        current: Snapshot = app.state.holder.current
        return current

    def session_of(request: Request) -> Session | None:
        value = request.cookies.get(COOKIE)
        return unseal(snapshot(), value, time.time()) if value else None

    def mailbox(request: Request, session: Session) -> Mailbox:
        endpoint = imap_endpoint(snapshot(), config.site)
        return Mailbox.open(
            endpoint, context, session.mailbox, session.password, client_address(request)
        )

    def brand(session: Session | None) -> Portal:
        if session is None:
            return Portal(None, None)
        return portal_for(app.state.store, session.mailbox.partition("@")[2])

    def page(
        request: Request, session: Session | None, status: int = 200, **extra: Any
    ) -> Response:
        template = "voicemail.html" if session else "voicemail_signin.html"
        return _render(request, template, brand(session), None, status, session=session, **extra)

    def to_signin(request: Request) -> Response:
        response = RedirectResponse("/signin", status_code=303)
        if request.cookies.get(COOKIE):
            response.delete_cookie(COOKIE)
        return response

    @app.get("/signin")
    def signin_page(request: Request) -> Response:
        return page(request, None)

    @app.post("/signin")
    def signin(
        request: Request, mailbox_name: str = Form("", alias="mailbox"),
        password: str = Form(""), csrf: str = Form(""),
    ) -> Response:  # fmt: skip
        address = limit_key(client_address(request))
        limiter = app.state.limiter
        try:
            _check_form(request, csrf)
            limiter.check(address)
        except (_Refused, TooManyAttempts) as exc:
            return page(request, None, 429 if isinstance(exc, TooManyAttempts) else 403,
                        error=str(exc))  # fmt: skip
        try:
            session = Session(
                parse_mailbox(mailbox_name, snapshot().email_domain), password, time.time()
            )
            with mailbox(request, session):
                pass
        except StoreUnavailable as exc:
            return page(request, None, 503, error=str(exc))
        except SipzoneError:  # a wrong password, or no mailbox name at all: the same words
            limiter.failed(address)
            return page(request, None, 401, error=REFUSED)
        response = RedirectResponse("/", status_code=303)
        set_session(request, response, session)
        return response

    def set_session(request: Request, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE, seal(snapshot(), session, time.time()), max_age=IDLE, httponly=True,
            samesite="strict", secure=request.url.scheme == "https",
        )  # fmt: skip

    @app.post("/signout")
    def signout(request: Request, csrf: str = Form("")) -> Response:
        try:
            _check_form(request, csrf)
        except _Refused:
            return RedirectResponse("/", status_code=303)
        response = RedirectResponse("/signin", status_code=303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def messages_page(request: Request, done: str = "") -> Response:
        session = session_of(request)
        if session is None:
            return to_signin(request)
        try:
            with mailbox(request, session) as box:
                found = box.messages()
        except WrongCredentials:
            return to_signin(request)
        except StoreUnavailable as exc:
            return page(request, session, 503, messages=[], error=str(exc))
        response = page(request, session, messages=found, done=done)
        set_session(request, response, session)
        return response

    @app.get("/messages/{uid}/audio")
    def recording(request: Request, uid: int = UID) -> Response:
        session = session_of(request)
        if session is None:
            return Response(status_code=401)
        try:
            with mailbox(request, session) as box:
                found = box.recording(uid)
        except WrongCredentials:
            return Response(status_code=401)
        except StoreUnavailable:
            return Response(status_code=503)
        if found is None:
            return Response(status_code=404)
        headers = {"Accept-Ranges": "bytes", "Cache-Control": "private, no-store"}
        length = len(found.data)
        try:
            wanted = byte_range(request.headers.get("range"), length)
        except ValueError:
            headers["Content-Range"] = f"bytes */{length}"
            return Response(status_code=416, headers=headers)
        if wanted is None:
            return Response(found.data, media_type=found.content_type, headers=headers)
        first, last = wanted
        headers["Content-Range"] = f"bytes {first}-{last}/{length}"
        body = found.data[first : last + 1]
        return Response(body, status_code=206, media_type=found.content_type, headers=headers)

    def change(request: Request, uid: int, csrf: str, what: str) -> Response:
        session = session_of(request)
        if session is None:
            return to_signin(request)
        try:
            _check_form(request, csrf)
            with mailbox(request, session) as box:
                if what == "heard":
                    box.mark_heard(uid)
                else:
                    box.delete(uid)
        except WrongCredentials:
            return to_signin(request)
        except (_Refused, StoreUnavailable) as exc:
            return page(request, session, 503 if isinstance(exc, StoreUnavailable) else 403,
                        messages=[], error=str(exc))  # fmt: skip
        words = "marked as heard" if what == "heard" else "deleted"
        return RedirectResponse("/?" + urlencode({"done": f"message {words}"}), status_code=303)

    @app.post("/messages/{uid}/heard")
    def heard(request: Request, uid: int = UID, csrf: str = Form("")) -> Response:
        return change(request, uid, csrf, "heard")

    @app.post("/messages/{uid}/delete")
    def delete(request: Request, uid: int = UID, csrf: str = Form("")) -> Response:
        return change(request, uid, csrf, "delete")

    return app
