"""Errors as RFC 9457 problem documents: ``type``, ``title``, ``status``, ``detail``.

Each sipzone error class is one problem type, ``urn:sipzone:problem:<class-in-kebab-case>``;
its title is the class's one-line docstring and its detail the message the CLI prints (with
tenant names the caller may not see put as "another tenant").  Request validation, unknown
routes and methods, and our own bugs (500, no detail beyond "internal error") are problem
documents too, so a client parses one shape whatever went wrong.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from sipzone.model.errors import (
    Conflict,
    InvalidName,
    InvalidValue,
    NotAuthenticated,
    NotFound,
    NotPermitted,
    ProofFailed,
    SipzoneError,
    TenancyError,
    TooManyAttempts,
    UnknownTenant,
)
from sipzone.store.repository import StoreNotInitialised

log = logging.getLogger("sipzone.api")

MEDIA_TYPE = "application/problem+json"
# The first match in this order gives the status (subclasses before their bases).
STATUS: tuple[tuple[type[SipzoneError], int], ...] = (
    (NotAuthenticated, 401),
    (TooManyAttempts, 429),
    (NotPermitted, 403),
    (UnknownTenant, 422),
    (Conflict, 409),
    (NotFound, 404),
    (StoreNotInitialised, 503),
    (ProofFailed, 502),
    (InvalidName, 422),
    (InvalidValue, 422),
    (TenancyError, 422),
)
GENERIC_TYPE = "about:blank"


def type_uri(cls: type[BaseException]) -> str:
    return "urn:sipzone:problem:" + re.sub(r"(?<!^)(?=[A-Z])", "-", cls.__name__).lower()


def problem(
    status: int,
    title: str,
    detail: str,
    type_: str = GENERIC_TYPE,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body = {"type": type_, "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def status_of(exc: SipzoneError) -> int:
    return next((code for cls, code in STATUS if isinstance(exc, cls)), 422)


def for_error(request: Request, exc: SipzoneError) -> JSONResponse:
    status = status_of(exc)
    caller = getattr(request.state, "caller", None)
    detail = " ".join(str(exc).splitlines())
    if caller is not None:
        said = {*request.path_params.values(), *request.query_params.values()}
        detail = caller.hide(detail, said | getattr(request.state, "said", set()))
    title = (type(exc).__doc__ or type(exc).__name__).strip().splitlines()[0]
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="sipzone"'}
    elif status == 429:
        found = re.search(r"retry in (\d+) s", detail)
        headers = {"Retry-After": found.group(1) if found else "60"}
    return problem(status, title, detail, type_uri(type(exc)), headers)


def install(app: FastAPI) -> None:
    """Make every error of ``app`` a problem document."""

    @app.exception_handler(SipzoneError)
    async def _sipzone(request: Request, exc: SipzoneError) -> JSONResponse:
        return for_error(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "reason": str(e.get("msg"))}
            for e in exc.errors()
        ]
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors)
        return problem(
            422, "The request does not fit the API", detail, type_uri(RequestValidationError),
            errors=errors,
        )  # fmt: skip

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        titles = {404: "Not found", 405: "Method not allowed"}
        return problem(
            exc.status_code,
            titles.get(exc.status_code, "HTTP error"),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(sa.exc.SQLAlchemyError)
    async def _store(_request: Request, exc: sa.exc.SQLAlchemyError) -> JSONResponse:
        cause = str(getattr(exc, "orig", None) or exc)
        if isinstance(exc, sa.exc.IntegrityError):
            return problem(
                409, "Conflicting change", f"conflicting change, nothing was written: {cause}",
                type_uri(Conflict),
            )  # fmt: skip
        log.warning("store error in an API request: %s", cause.splitlines()[0] if cause else exc)
        return problem(503, "Store unavailable", "the store could not be read or written; retry")

    @app.exception_handler(Exception)
    async def _bug(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("API request failed", exc_info=exc)
        return problem(500, "Internal error", "internal error; the server log has the details")
