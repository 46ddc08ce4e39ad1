"""Bearer-token authentication and the OAuth2 token endpoint shared by both APIs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from ..core.accounts import TokenPair, User
from ..core.errors import TooManyAttempts, Unauthenticated
from .context import commons_of

router = APIRouter(tags=["auth"])


def bearer_token(request: Request) -> str | None:
    """The bearer token of a request; tcia_utils sends `Bearer undefined` when it has none."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or token.strip() == "undefined":
        return None
    return token.strip()


def _token_user(request: Request, token: str) -> User:
    """The user a token was issued to. A bad token is refused (InvalidToken), never taken for
    anonymous access."""
    return commons_of(request).accounts.user_for_token(token)


async def optional_user(request: Request) -> User | None:
    """The caller, or None when no token was sent. Only a token needs the accounts database,
    looked up in the thread pool: an anonymous request (most IDC requests) takes no thread."""
    token = bearer_token(request)
    if token is None:
        return None
    return await run_in_threadpool(_token_user, request, token)


async def required_user(request: Request) -> User:
    user = await optional_user(request)
    if user is None:
        raise Unauthenticated("Authentication required: send Authorization: Bearer <token>")
    return user


def nbia_user(request: Request) -> User:
    """NBIA callers without a token are the guest (public collections only)."""
    token = bearer_token(request)
    if token is None:
        return commons_of(request).accounts.guest_user()
    return _token_user(request, token)


# ----- the OAuth2 token endpoint -----------------------------------------------------------
class TokenAnswer(BaseModel):
    """A token answer as NBIA's Keycloak writes it."""

    model_config = ConfigDict(populate_by_name=True)
    access_token: str
    token_type: str = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid")
    refresh_token: str
    refresh_expires_in: int = Field(description="Seconds the refresh token is valid")
    scope: str = "openid profile email"
    not_before_policy: int = Field(0, alias="not-before-policy")
    session_state: str = ""


class GrantError(BaseModel):
    """An OAuth2 error answer."""

    error: str = Field(description="invalid_request, invalid_grant or unsupported_grant_type")
    error_description: str | None = None


GRANT_TYPES = ["password", "refresh_token"]
_TOKEN_FIELDS: dict[str, dict[str, Any]] = {
    "grant_type": {"type": "string", "enum": GRANT_TYPES, "default": "password"},
    "username": {"type": "string", "description": "Required by the password grant"},
    "password": {"type": "string", "format": "password"},
    "client_id": {"type": "string", "description": "Accepted and not checked"},
    "client_secret": {"type": "string", "format": "password",
                      "description": "Accepted and not checked"},
    "refresh_token": {"type": "string", "description": "Required by the refresh_token grant"},
}
_TOKEN_SCHEMA = {"type": "object", "properties": _TOKEN_FIELDS}
_TOKEN_QUERY = [{"name": name, "in": "query", "required": False, "schema": schema}
                for name, schema in _TOKEN_FIELDS.items()]
_TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": TokenAnswer, "description": "A new access and refresh token"},
    400: {"model": GrantError, "description": "A parameter missing, a bad refresh token or an "
                                              "unsupported grant type"},
    401: {"model": GrantError, "description": "Wrong user name or password"},
    429: {"model": GrantError, "description": "Too many failed sign-ins: wait Retry-After s"},
}


async def _oauth_params(request: Request) -> dict:
    params = dict(request.query_params)
    if request.method == "POST":
        ctype = request.headers.get("content-type", "")
        if "json" in ctype:
            try:
                body = await request.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                params.update({k: str(v) for k, v in body.items()})
        else:
            form = await request.form()
            params.update({k: v for k, v in form.items() if isinstance(v, str)})
    return params


def _token_response(pair: TokenPair) -> JSONResponse:
    return JSONResponse({
        "access_token": pair.access_token,
        "token_type": "bearer",
        "expires_in": pair.expires_in,
        "refresh_token": pair.refresh_token,
        "refresh_expires_in": pair.refresh_expires_in,
        "scope": "openid profile email",
        "not-before-policy": 0,
        "session_state": "",
    }, headers={"Cache-Control": "no-store"})


def _grant_error(status: int, error: str, description: str | None = None,
                 headers: dict | None = None) -> JSONResponse:
    """The OAuth2 error body; NBIA sends no description with unsupported_grant_type."""
    body = {"error": error}
    if description:
        body["error_description"] = description
    return JSONResponse(body, status_code=status, headers=headers)


def oauth_token(request: Request, params: dict = Depends(_oauth_params)):
    """Form fields, a JSON object or query parameters: username, password, client_id,
    client_secret, grant_type (password | refresh_token), refresh_token. A plain function, run
    in the thread pool: checking a password is deliberately slow, and must not stall other
    connections."""
    commons = commons_of(request)
    accounts = commons.accounts
    grant = params.get("grant_type", "password")
    if grant == "password":
        username = params.get("username")
        if not username:
            return _grant_error(400, "invalid_request", "Missing parameter: username")
        try:
            user = commons.sign_in(username, params.get("password", ""),
                                   request.client.host if request.client else None)
        except TooManyAttempts as e:
            return _grant_error(429, "invalid_grant", e.message,
                                headers={"Retry-After": str(e.retry_after)})
        if user is None:
            return _grant_error(401, "invalid_grant", "Invalid user credentials")
        return _token_response(accounts.issue_tokens(user))
    if grant == "refresh_token":
        try:
            return _token_response(accounts.refresh(params.get("refresh_token", "")))
        except Unauthenticated:
            return _grant_error(400, "invalid_grant", "Invalid refresh token")
    return _grant_error(400, "unsupported_grant_type")


def logout(request: Request):
    token = bearer_token(request)
    if token is None or not commons_of(request).accounts.revoke(token):
        raise Unauthenticated("Invalid or missing token")
    return PlainTextResponse("You Have Logged Out successfully.")


_LOGOUT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Logged out"},
    401: {"description": "No live bearer token was sent",
          "content": {"text/plain": {"schema": {"type": "string"}}}},
}

# old clients use GET, newer ones POST: one route per method keeps OpenAPI operation ids unique
for _method in ("POST", "GET"):
    _body = {"requestBody": {"required": False, "content": {
        "application/x-www-form-urlencoded": {"schema": _TOKEN_SCHEMA},
        "application/json": {"schema": _TOKEN_SCHEMA}}}} if _method == "POST" else {}
    router.add_api_route("/nbia-api/oauth/token", oauth_token, methods=[_method],
                         name=f"oauth_token_{_method.lower()}",
                         summary="OAuth2 token (password and refresh_token grants)",
                         description="The parameters come as form fields or a JSON object "
                                     "(POST), or as query parameters. The guest `nbia_guest` "
                                     "signs in with any password.",
                         responses=_TOKEN_RESPONSES,
                         openapi_extra={"parameters": _TOKEN_QUERY, **_body})
    router.add_api_route("/nbia-api/logout", logout, methods=[_method],
                         name=f"logout_{_method.lower()}", summary="Revoke the bearer token",
                         response_class=PlainTextResponse,
                         description="Revokes the access token sent as `Authorization: Bearer "
                                     "<token>`, and its refresh token.",
                         responses=_LOGOUT_RESPONSES)
