"""Bearer-token authentication and the OAuth2 token endpoint shared by both APIs."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ..core.accounts import AccountError, InvalidToken, User
from ..core.sign_ins import TooManyFailures
from .context import commons_of
from .errors import ApiError

router = APIRouter(tags=["auth"])


def bearer_token(request: Request) -> str | None:
    """The bearer token of a request; tcia_utils sends `Bearer undefined` when it has none."""
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip() or token.strip() == "undefined":
        return None
    return token.strip()


def _token_user(request: Request, token: str) -> User:
    """The user a token was issued to. A bad token is a 401, not anonymous access."""
    try:
        return commons_of(request).accounts.user_for_token(token)
    except InvalidToken as e:
        raise ApiError(401, f"Invalid or {e.reason} token",
                       headers={"WWW-Authenticate": "Bearer"}) from None


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
        raise ApiError(401, "Authentication required: send Authorization: Bearer <token>",
                       headers={"WWW-Authenticate": "Bearer"})
    return user


def nbia_user(request: Request) -> User:
    """NBIA callers without a token are the guest (public collections only)."""
    token = bearer_token(request)
    if token is None:
        return commons_of(request).accounts.guest_user()
    return _token_user(request, token)


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


def _token_response(pair) -> JSONResponse:
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
    """Form fields (or query parameters): username, password, client_id, client_secret,
    grant_type (password | refresh_token), refresh_token. A plain function, run in the thread
    pool: checking a password is deliberately slow, and must not stall other connections."""
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
        except TooManyFailures as e:
            return _grant_error(429, "invalid_grant", str(e),
                                headers={"Retry-After": str(e.retry_after)})
        if user is None:
            return _grant_error(401, "invalid_grant", "Invalid user credentials")
        return _token_response(accounts.issue_tokens(user))
    if grant == "refresh_token":
        try:
            return _token_response(accounts.refresh(params.get("refresh_token", "")))
        except AccountError:
            return _grant_error(400, "invalid_grant", "Invalid refresh token")
    return _grant_error(400, "unsupported_grant_type")


def logout(request: Request):
    token = bearer_token(request)
    if token is None or not commons_of(request).accounts.revoke(token):
        raise ApiError(401, "Invalid or missing token")
    return PlainTextResponse("You Have Logged Out successfully.")


# old clients use GET, newer ones POST: one route per method keeps OpenAPI operation ids unique
for _method in ("POST", "GET"):
    router.add_api_route("/nbia-api/oauth/token", oauth_token, methods=[_method],
                         name=f"oauth_token_{_method.lower()}",
                         summary="OAuth2 token (password and refresh_token grants)")
    router.add_api_route("/nbia-api/logout", logout, methods=[_method],
                         name=f"logout_{_method.lower()}", summary="Revoke the bearer token")
