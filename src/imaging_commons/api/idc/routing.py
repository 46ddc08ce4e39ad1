"""The IDC API's router, how a handler is registered on it, and its JSON answers."""

from __future__ import annotations

from collections.abc import Callable

import orjson
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer

# Declares the bearer token in the OpenAPI, so that the Swagger page can send one; it refuses
# nothing (the handlers' own dependencies look the token up, and refuse in IDC's words).
BEARER = HTTPBearer(auto_error=False, description="An access token of POST /nbia-api/oauth/token")
router = APIRouter(prefix="/v1", tags=["IDC API v1"], dependencies=[Depends(BEARER)])


def route(method: str, *paths: str, include_in_schema: bool = True, **kw) -> Callable:
    """Register a handler at each path, with and without a trailing slash; the OpenAPI lists
    the first path once."""

    def register(func):
        for i, path in enumerate(paths):
            for variant in (path, path + "/"):
                listed = include_in_schema and i == 0 and variant == path
                router.add_api_route(variant, func, methods=[method],
                                     include_in_schema=listed, **kw)
        return func

    return register


class FastJSONResponse(JSONResponse):
    """Bodies rendered by orjson, several times faster than the standard library (pages take
    PageResponse, which writes their rows as the result holds them)."""

    def render(self, content) -> bytes:
        return orjson.dumps(content)


def ok(body: dict, status: int = 200) -> JSONResponse:
    """An IDC answer: every JSON body carries `code` equal to the HTTP status."""
    return FastJSONResponse({"code": status, **body}, status_code=status)
