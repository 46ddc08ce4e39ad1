"""Errors an adapter raises, and how each API shapes them on the wire."""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..core import errors as core
from ..core.storage import storage_problem
from .context import commons_of

_log = logging.getLogger("imaging_commons")


def _is_idc(request: Request) -> bool:
    return request.url.path.startswith("/v1")


def idc_error(status: int, message: str, not_found: list | None = None,
              headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"message": message, "code": status, "not_found": not_found or []},
                        status_code=status, headers=headers)


# The one place where the core's refusals become statuses: the kinds both APIs answer alike,
# then each API's own differences (NBIA's server answers a clash, such as a shared list name
# already taken, with a 400). Sign-in throttling is a 429 with Retry-After; a 401 asks for a
# bearer token (WWW-Authenticate).
STATUS_OF: dict[type[core.CommonsError], int] = {
    core.InvalidRequest: 400,
    core.TooLarge: 400,
    core.Unauthenticated: 401,
    core.Forbidden: 403,
    core.NotFound: 404,
    core.Conflict: 409,
    core.TooManyAttempts: 429,
    core.Unavailable: 503,
}
# by path prefix; an API not listed (DICOMweb) answers as STATUS_OF says
STATUS_DIFFERENCES: dict[str, dict[type[core.CommonsError], int]] = {
    "/nbia-api/": {core.Conflict: 400},
}


def status_of(exc: core.CommonsError, path: str) -> int:
    own = next((table for prefix, table in STATUS_DIFFERENCES.items()
                if path.startswith(prefix)), {})
    return next(status for table in (own, STATUS_OF) for kind, status in table.items()
                if isinstance(exc, kind))


async def commons_error_handler(request: Request, exc: core.CommonsError):
    idc = _is_idc(request)
    status = status_of(exc, request.url.path)
    headers = ({"Retry-After": str(exc.retry_after)} if isinstance(exc, core.TooManyAttempts)
               else {"WWW-Authenticate": "Bearer"} if isinstance(exc, core.Unauthenticated)
               else None)
    if idc:
        return idc_error(status, exc.message, exc.not_found, headers)
    return PlainTextResponse(exc.message, status_code=status, headers=headers)


async def validation_error_handler(request: Request, exc: RequestValidationError):
    """FastAPI's 422 becomes the 400 both real servers answer for malformed input."""
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p not in ("body", "query"))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    message = "Invalid request: " + "; ".join(parts)
    if _is_idc(request):
        return idc_error(400, message)
    return PlainTextResponse(message, status_code=400)


async def http_error_handler(request: Request, exc: StarletteHTTPException):
    """Routing errors (unknown path, wrong method) in the API's own shape."""
    message = {404: f"No endpoint {request.url.path}",
               405: f"Method {request.method} is not allowed on {request.url.path}"}.get(
        exc.status_code, str(exc.detail))
    if _is_idc(request):
        return idc_error(exc.status_code, message, headers=getattr(exc, "headers", None))
    return PlainTextResponse(message, status_code=exc.status_code,
                             headers=getattr(exc, "headers", None))


def _answer(request: Request, status: int, message: str):
    if _is_idc(request):
        return idc_error(status, message)
    return PlainTextResponse(message, status_code=status)


async def storage_error_handler(request: Request, exc: Exception):
    """The errors of the file system, DuckDB and the accounts database: a 503 that says what
    is wrong when it is the archive's storage refusing (read-only, full), else a 500."""
    problem = storage_problem(exc, commons_of(request).archive.root)
    if problem is None:
        return await unexpected_error_handler(request, exc)
    _log.error("%s %r: %s", request.method, request.url.path, problem)
    return _answer(request, 503, f"The archive cannot be used now: {problem}")


async def unexpected_error_handler(request: Request, exc: Exception):
    """Last resort: a clear 500 in the API's own shape, never a stack trace."""
    _log.exception("unhandled error on %r", request.url.path)
    return _answer(request, 500, "Internal server error")
