"""The FastAPI application: ``/api/v1`` resources, ``/healthz``, ``/metrics``, the console.

Every endpoint is a plain ``def``: FastAPI runs it in its thread pool, off the event loop the
SIP edge and the DNS answer on (see the package docstring).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import Counter

from sipzone.api import API_PREFIX, ApiConfig, problems
from sipzone.api.auth import Caller, FailureLimiter, authenticate, bearer
from sipzone.model.snapshot import SnapshotHolder
from sipzone.store.repository import Store

REQUESTS = Counter(
    "sipzone_api_requests",
    "API and console requests answered, by method and status class.",
    ["method", "status"],
)
AUTH_FAILURES = Counter(
    "sipzone_api_auth_failures",
    "Requests refused for a missing, unknown, revoked or expired token, or rate-limited.",
)

WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_BODY = 64 * 1024  # octets of a request body; the largest real one (a site) is < 2 KiB


class BodyLimit:
    """ASGI middleware: a request body over :data:`MAX_BODY` octets gets 413 unread, and one
    without a Content-Length (chunked) gets 411: the length is known before anything is read."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope.get("headers") or ())
            length = headers.get(b"content-length")
            refusal = None
            if length is None and b"transfer-encoding" in headers:
                refusal = problems.problem(
                    411, "Length required", "send the request body with a Content-Length"
                )
            elif length is not None and (not length.isdigit() or int(length) > MAX_BODY):
                detail = f"the request body is larger than {MAX_BODY} octets"
                refusal = problems.problem(413, "Request body too large", detail)
            if refusal is not None:
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


_bearer_scheme = HTTPBearer(auto_error=False, description="A token from `sipzone token create`.")


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def current_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer_scheme)],
) -> Caller:
    """The caller named by the request's bearer token (dependency of every /api/v1 route)."""
    app_state = request.app.state
    header = f"Bearer {credentials.credentials}" if credentials else None
    try:
        secret = bearer(header)
        caller = authenticate(app_state.store, app_state.limiter, secret, client_address(request))
    except Exception:
        AUTH_FAILURES.inc()
        raise
    request.state.caller = caller
    return caller


def acting_store(request: Request, caller: Caller) -> Store:
    """The store acting as ``caller``: its writes carry the caller's tenant, token, address."""
    store: Store = request.app.state.store
    return store.acting(
        caller.tenant, "api", principal=caller.principal, origin=client_address(request)
    )


def create_app(
    store: Store,
    config: ApiConfig,
    holder: SnapshotHolder | None = None,
    wrote: Callable[[], None] | None = None,
) -> FastAPI:
    """The application over ``store`` (shared engine; each request acts as its caller)."""
    from sipzone.api.routes import router

    app = FastAPI(
        title="sipzone",
        version="1",
        description="Tenants, SIP domains, sites, zones and checks of a sipzone installation.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
    )
    app.state.store = store
    app.state.config = config
    app.state.holder = holder
    app.state.limiter = FailureLimiter(config.auth_failures, config.auth_window)
    app.state.node = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
    problems.install(app)
    if holder is not None:  # the email domain's host gets the voicemail pages (sipzone.web)
        from sipzone.web.voicemail import MailHost, create_voicemail_app

        app.add_middleware(
            MailHost, voicemail=create_voicemail_app(app), snapshot=lambda: holder.current
        )
    app.add_middleware(BodyLimit)
    app.include_router(router, prefix=API_PREFIX)

    @app.middleware("http")
    async def _count(request: Request, call_next: Any) -> Response:
        response: Response = await call_next(request)
        REQUESTS.labels(request.method, f"{response.status_code // 100}xx").inc()
        if wrote is not None and request.method in WRITES and response.status_code < 400:
            wrote()
        return response

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> JSONResponse:
        try:
            revision = store.revision()
        except Exception as exc:
            return problems.problem(503, "Store unavailable", str(exc).splitlines()[0])
        return JSONResponse({"status": "ok", "revision": revision})

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        registry: Any = REGISTRY
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:  # --workers N: every worker's numbers
            from prometheus_client import CollectorRegistry, multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    from sipzone.web import install as install_console
    from sipzone.web.mailconfig import router as mailconfig_router

    install_console(app)
    app.include_router(mailconfig_router)
    return app
