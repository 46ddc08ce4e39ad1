"""What the HTTP server does for every request, whatever the route: security headers on every
answer, CORS when configured, credentials kept out of the access log, and a cap on how many
heavy answers (whole lists, zips) one client may have running at once."""

from __future__ import annotations

import logging
import threading
import urllib.parse
from collections import Counter
from collections.abc import Callable
from pathlib import Path

# fastapi-offline is here for the Swagger UI release it bundles (script, style sheet, icon)
import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..core.zips import safe_file_name

# An API answer is data, never a page to run: no scripts, no styles, no framing.
API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
# The Swagger pages: their scripts, styles and the OpenAPI document come from this server
# only (the page starts Swagger UI with an inline script).
DOCS_POLICY = ("default-src 'none'; script-src 'self' 'unsafe-inline'; "
               "style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
               "frame-ancestors 'none'; base-uri 'none'")
_HEADERS = {"x-content-type-options": "nosniff", "x-frame-options": "DENY",
            "referrer-policy": "no-referrer", "content-security-policy": API_POLICY}

SWAGGER_ASSETS = Path(fastapi_offline.__file__).parent / "static"
SWAGGER_ASSETS_URL = "/static/swagger"

# Query parameters whose values are credentials (the token endpoint accepts them in the query
# string, as NBIA's does), compared in lower case after percent-decoding.
SECRET_PARAMETERS = frozenset({"password", "client_secret", "refresh_token", "access_token",
                               "id_token", "token"})


class SecurityHeaders:
    """Adds the headers above to every answer; a route that sets its own
    Content-Security-Policy (the Swagger pages) keeps it."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in _HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


def attachment(filename: str) -> str:
    """A Content-Disposition value offering `filename` (made safe) for download."""
    return f'attachment; filename="{safe_file_name(filename)}"'


def scrub_query(path: str) -> str:
    """`path` with the value of every credential parameter in its query string replaced."""
    base, mark, query = path.partition("?")
    if not mark:
        return path
    parts = []
    for part in query.split("&"):
        name, eq, _ = part.partition("=")
        secret = urllib.parse.unquote_plus(name).strip().lower() in SECRET_PARAMETERS
        parts.append(f"{name}=[redacted]" if secret and eq else part)
    return f"{base}?{'&'.join(parts)}"


class ScrubCredentials(logging.Filter):
    """On uvicorn's access log, whose record args are (client, method, path with query,
    HTTP version, status): the path's credentials are redacted before anything writes it."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], scrub_query(args[2]), *args[3:])
        return True


def scrub_access_log() -> None:
    """Install ScrubCredentials on uvicorn's access logger, once per process."""
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, ScrubCredentials) for f in access.filters):
        access.addFilter(ScrubCredentials())


def add_cors(app: FastAPI, origins: str) -> None:
    """CORS for the comma-separated `origins` ("*" for any); none when empty. Callers send
    bearer tokens, never cookies, so credentials are not allowed."""
    allowed = [o.strip() for o in origins.split(",") if o.strip()]
    if allowed:
        app.add_middleware(CORSMiddleware, allow_origins=allowed, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", "Accept"],
                           expose_headers=["Content-Disposition", "Content-Length",
                                           "Retry-After"],
                           max_age=600)


def swagger_page(openapi_url: str, title: str) -> HTMLResponse:
    """Swagger UI for an OpenAPI document, its assets served by this server (no CDN)."""
    page = get_swagger_ui_html(openapi_url=openapi_url, title=title,
                               swagger_js_url=f"{SWAGGER_ASSETS_URL}/swagger-ui-bundle.js",
                               swagger_css_url=f"{SWAGGER_ASSETS_URL}/swagger-ui.css",
                               swagger_favicon_url=f"{SWAGGER_ASSETS_URL}/favicon.png")
    page.headers["content-security-policy"] = DOCS_POLICY
    return page


class HeavyRequestLimit:
    """At most `per_client` heavy requests of one client address running at once, counted
    until the last byte of the answer is sent; one more is answered 429 with Retry-After.
    `is_heavy(path)` says which requests are heavy."""

    RETRY_AFTER_S = 5

    def __init__(self, app: ASGIApp, per_client: int, is_heavy: Callable[[str], bool]):
        self.app = app
        self.per_client = per_client
        self.is_heavy = is_heavy
        self._running: Counter[str] = Counter()
        self._lock = threading.Lock()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.is_heavy(scope["path"]):
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]
        with self._lock:
            admitted = self._running[client] < self.per_client
            if admitted:
                self._running[client] += 1
        if not admitted:
            answer = PlainTextResponse(
                f"Too many large requests at once from this client (at most "
                f"{self.per_client}): wait for one to finish", status_code=429,
                headers={"Retry-After": str(self.RETRY_AFTER_S)})
            return await answer(scope, receive, send)
        try:
            await self.app(scope, receive, send)
        finally:
            with self._lock:
                self._running[client] -= 1
                if not self._running[client]:
                    del self._running[client]
