"""IDC API v1 adapter: validates requests, calls the core, shapes IDC's wire format.

Contract: docs/specs/idc-api-v1.md. Every JSON body carries `code` equal to the HTTP status;
paths are served with and without a trailing slash, and at the notebook's alternate paths.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from ..core.accounts import AccountError, Forbidden, NotFound, User
from ..core.catalog import CatalogError, normalise_collection_id
from ..core.commons import MANIFEST_SELECTORS
from ..core.commons import AnyPage as Page
from ..core.paging import InvalidPageToken, StateElsewhere
from ..core.query import FilterError
from ..core.results import Pending
from .auth import optional_user, required_user
from .context import commons_of
from .errors import ApiError
from .security import swagger_page

router = APIRouter(prefix="/v1", tags=["IDC API v1"])

DEFAULT_PAGE_SIZE = 1000
MULTI_VALUED = {"fields"}  # query parameters that may be repeated
# cohort ids are the accounts database's INTEGER keys (32-bit on PostgreSQL): no id outside
# this range exists, and asking the database for one is an overflow error, not a miss
MAX_COHORT_ID = 2**31 - 1
DOCS_URL = "https://learn.canceridc.dev/api/v1"
BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}


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
    return FastJSONResponse({"code": status, **body}, status_code=status)


@dataclass(frozen=True)
class PageLayout:
    """Where a page's parts go: {"code", **head, section: {rows_key: [rows], "rowsReturned",
    "totalFound"}, "next_page"}. The rows come before the counts and the token, so that a page
    can be written before they are known."""

    head: dict
    section: str
    rows_key: str


class PageResponse(Response):
    """A page's body: the envelope rendered by orjson, the rows written from the result's own
    buffers in slices. A page can be hundreds of megabytes; joining it into one body would copy
    it twice into fresh memory, and page faults are most of what that costs.

    A page of a complete result is written with its length. The first page of a new query is
    written while the result is being made, as its rows are converted (chunked, from the
    thread pool): the client reads them meanwhile, and only the counts and the token wait for
    the whole result. Meanwhile a space goes out every `keepalive_s` (JSON allows whitespace
    there), so that a result that takes long to finish never leaves the connection looking
    idle. A failure after the first byte can only cut the body short."""

    media_type = "application/json"
    slice_bytes = 1 << 20
    keepalive_s = 5.0

    def __init__(self, layout: PageLayout, page: Page, token: Callable[[], str | None]):
        self.head = (orjson.dumps({"code": 200, **layout.head})[:-1] + b","
                     + orjson.dumps(layout.section) + b":{"
                     + orjson.dumps(layout.rows_key) + b":")
        self.page = page
        self.token = token
        headers, self.parts = {}, None
        if page.complete:  # the counts and the token now, where a failure is still an answer
            self.parts = [self.head, *page.rows_json(), self._tail()]
            headers["content-length"] = str(sum(len(part) for part in self.parts))
        self.status_code, self.background = 200, None
        self.init_headers(headers)  # (it has no `body`: no length of its own)

    def _tail(self) -> bytes:
        return (b',"rowsReturned":%d,"totalFound":%d},"next_page":%s}'
                % (self.page.returned, self.page.total, orjson.dumps(self.token())))

    async def _arriving_slices(self) -> AsyncIterator[bytes]:
        rows = itertools.chain([self.head], self.page.rows_json())  # waits for rows to come
        async for piece in iterate_in_threadpool(joined_slices(rows, self.slice_bytes)):
            yield piece
        while not await run_in_threadpool(self.page.finished, self.keepalive_s):
            yield b" "
        yield await run_in_threadpool(self._tail)

    async def __call__(self, scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": self.status_code,
                    "headers": self.raw_headers})
        if self.parts is not None:
            slices = as_async(joined_slices(self.parts, self.slice_bytes))
        else:
            slices = self._arriving_slices()
        current = await anext(slices)
        async for following in slices:
            await send({"type": "http.response.body", "body": current, "more_body": True})
            current = following
        await send({"type": "http.response.body", "body": current})


async def as_async(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    """Items at hand, as an async iterator (nothing in them waits)."""
    for item in items:
        yield item


def joined_slices(parts: Iterable[bytes | memoryview], size: int) -> Iterator[bytes]:
    """The parts' bytes back to back, cut into slices of `size`; the last one is shorter (and
    may be empty). A small page goes out as one slice, a large one in pieces of equal size."""
    pending: list[memoryview] = []
    held = 0
    for part in parts:
        view = memoryview(part)
        while len(view):
            piece = view[:size - held]
            pending.append(piece)
            held += len(piece)
            view = view[len(piece):]
            if held == size:
                yield b"".join(pending)
                pending, held = [], 0
    yield b"".join(pending)


# ----- input validation ------------------------------------------------------------------
def strict_params(request: Request, allowed: set[str], wording: str) -> dict[str, str]:
    """The query parameters, refusing any the endpoint does not know (as the real server does)
    and any single-valued one given twice: Flask read the first value where Starlette keeps the
    last, so a repeated key has no safe meaning."""
    keys = [key for key, _ in request.query_params.multi_items()]
    for key in keys:
        if key not in allowed:
            raise ApiError(400, f"{wording} {key}")
        if key not in MULTI_VALUED and keys.count(key) > 1:
            raise ApiError(400, f"Parameter {key} is given more than once")
    return dict(request.query_params)


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    if raw is None or raw == "":
        return default
    value = BOOLEAN_WORDS.get(raw.strip().lower())
    if value is None:
        raise ApiError(400, f"Invalid value for {name}: {raw!r} (expected true or false)")
    return value


def parse_page_size(request: Request, raw: str | None) -> int:
    limit = commons_of(request).archive.max_page_size
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise ApiError(400, f"Invalid page_size {raw!r}: expected an integer") from None
    if not 1 <= size <= limit:
        raise ApiError(400, f"Invalid page_size {size}: must be between 1 and {limit}")
    return size


async def body_bytes(request: Request) -> bytes:
    """The request body, read on the event loop. Endpoints that take it are plain functions,
    which FastAPI runs in its thread pool: a query or a database write blocking there holds up
    that request alone, where in a coroutine it would stall every connection."""
    return await request.body()


def json_body(raw: bytes, required: bool = True) -> dict:
    if not raw.strip():
        if required:
            raise ApiError(400, "A JSON request body is required")
        return {}
    try:  # orjson refuses NaN, Infinity and lone surrogates, so whatever parses can be echoed
        body = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))  # a BOM, as Flask allowed
    except orjson.JSONDecodeError:
        raise ApiError(400, "The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object")
    return body


def only_keys(body: dict, allowed: set[str], where: str = "") -> None:
    """A body key the endpoint does not know is a 400 naming it, never silently ignored."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ApiError(400, f"Invalid key {unknown[0]}{where}")


def version_number(request: Request, label: Any) -> int:
    try:
        return commons_of(request).catalog.parse_version(label)
    except CatalogError:
        raise ApiError(400, f"IDC data version {label} does not exist", [str(label)]) from None


def cohort_definition(request: Request, body: Any) -> dict:
    """A cohort definition in either documented form: {name, description, filters} or
    {name, description, filterSet: {idc_data_version, filters}}."""
    if not isinstance(body, dict):
        raise ApiError(400, "The cohort definition must be a JSON object")
    only_keys(body, {"name", "description", "filters", "filterSet"}, " in the cohort definition")
    filter_set = body.get("filterSet")
    if filter_set is not None and "filters" in body:
        raise ApiError(400, "Give the filters either as filters or in filterSet, not both")
    if filter_set is not None:
        if not isinstance(filter_set, dict) or set(filter_set) - {"filters", "idc_data_version"}:
            raise ApiError(400, "filterSet must be an object with filters and idc_data_version")
    filters = body.get("filters") if filter_set is None else filter_set.get("filters")
    if not filters:
        raise ApiError(400, "No filters were provided; a cohort needs at least one filter.")
    if not isinstance(filters, dict):
        raise ApiError(400, "filters must be an object mapping attribute names to values")
    for key, values in filters.items():
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                 for v in values):
            raise ApiError(400, f"Filter {key} must be a non-empty list of strings or numbers")
    description = body.get("description", "")
    if description is not None and not isinstance(description, str):
        raise ApiError(400, "description must be a string")
    if description and "\x00" in description:  # PostgreSQL text cannot hold NUL
        raise ApiError(400, "description must not contain NUL characters")
    version_label = (filter_set or {}).get("idc_data_version")
    return {
        "name": body.get("name"),
        "description": description or "",
        "filters": filters,
        "version": version_number(request, version_label),
    }


def filter_set(filters: dict, version: int) -> dict:
    return {"filters": filters, "idc_data_version": f"{version}.0"}


def normalised_filters(filters: dict) -> dict:
    """Preview echoes show collection ids the way they were matched."""
    return {k: ([normalise_collection_id(str(v)) for v in vals] if k.lower() == "collection_id"
                and isinstance(vals, list) else vals) for k, vals in filters.items()}


# ----- wire shaping ----------------------------------------------------------------------
def caller_key(user: User | None) -> str | None:
    return user.username if user else None


# False while a request is served on the event loop, where it must not wait for a query
WAITING_ALLOWED: ContextVar[bool] = ContextVar("waiting_allowed", default=True)


class NotMaterialised(Exception):
    """The page must wait (its query has not finished, or its state is still to be read from
    or written to the accounts database): the request moves to the thread pool."""


async def on_loop_when_ready(user: User | None, handler: Callable[[], Response]) -> Response:
    """Serve a page on the event loop when nothing in it waits: an anonymous caller (no
    accounts database to ask) whose result is materialised, so that the page is a slice of it.
    Otherwise, or when the query turns out to be unfinished (it is started then) or the
    token's state is to be read from or written to the accounts database, serve it in the
    thread pool. Moving to a thread and back cost ~0.4 ms a page here (pages of 1000 rows,
    served alternately both ways: 5.2 against 5.6 ms)."""
    if user is None:
        waiting = WAITING_ALLOWED.set(False)
        try:
            return handler()
        except NotMaterialised:
            pass
        finally:
            WAITING_ALLOWED.reset(waiting)
    return await run_in_threadpool(handler)


def run_page(request: Request, state: dict, user: User | None, page_size: int,
             echo: dict | None) -> Page | JSONResponse:
    """One page of a paged request, or the 202 answer when the query outlives the deadline.
    The 202's token carries `echo`, what the first page tells of its request (see resumed)."""
    commons = commons_of(request)
    may_wait = WAITING_ALLOWED.get()
    try:
        page = commons.page(state, user, page_size,
                            commons.archive.query_deadline_s if may_wait else 0)
    except Pending:
        if not may_wait:
            raise NotMaterialised from None
        token = commons.tokens.mint({**state, ECHO: echo}, caller_key(user))
        return ok({"message": "The query took longer than the allowed time to complete. Retry "
                              "the query using the next_page token.", "next_page": token}, 202)
    except FilterError as e:
        raise ApiError(400, str(e), e.not_found) from None
    if not (may_wait or page.complete):  # its rows are still arriving
        raise NotMaterialised
    return page


def next_token(request: Request, page: Page, user: User | None) -> str | None:
    if page.next_state is None:
        return None
    try:
        return commons_of(request).tokens.mint(page.next_state, caller_key(user),
                                                      WAITING_ALLOWED.get())
    except StateElsewhere:  # to be written to the accounts database: not on the event loop
        raise NotMaterialised from None


def open_token(request: Request, token: str, user: User | None, kind: str) -> dict:
    try:
        state = commons_of(request).tokens.open(token, caller_key(user),
                                                      WAITING_ALLOWED.get())
    except InvalidPageToken:
        raise ApiError(400, "Invalid next_page token") from None
    except StateElsewhere:  # to be read from the accounts database: not on the event loop
        raise NotMaterialised from None
    if state.get("kind") != kind:
        raise ApiError(400, "Invalid next_page token")
    return state


def manifest_body(cohort: dict | None) -> PageLayout:
    """A manifest page; a continuation (cohort None) carries `"cohort": {}`."""
    return PageLayout({"cohort": cohort or {}}, "manifest", "json_manifest")


def query_body(cohort: dict | None) -> PageLayout:
    """A query page: the first echoes its `cohort_def`, a continuation carries `"cohort": {}`."""
    key = "cohort" if cohort is None else "cohort_def"
    return PageLayout({key: cohort or {}}, "query_results", "json")


def paged(request: Request, user: User | None, state: dict, page_size: int,
          shape: Callable[[Page], PageLayout], echo: dict | None = None) -> Response:
    """Run one page of a paged request and shape it; a deadline overrun answers 202."""
    page = run_page(request, state, user, page_size, echo)
    if isinstance(page, JSONResponse):
        return page
    return PageResponse(shape(page), page, lambda: next_token(request, page, user))


ECHO = "first_page"  # in a 202's token: what the first page echoes of the request


def resumed(state: dict) -> dict | None:
    """Take from a token's state the echo a 202's token carries. Resubmitting that token
    gives the first page the request would have had (its cohort, the SQL if asked), where
    a nextPage token's pages carry none."""
    return state.pop(ECHO, None)


Shape = Callable[[dict | None], PageLayout]


def cohort_page(request: Request, user: User | None, state: dict, page_size: int,
                echo: dict | None, body: Shape) -> Response:
    """A page of a manifest or query: the first (an echo given) echoes its cohort, with the
    SQL if it was asked for; a continuation echoes none."""
    return paged(request, user, state, page_size, lambda page: body(
        echo and with_sql(echo["cohort"], echo["sql"], page)), echo)


def by_token(request: Request, user: User | None, token: str, page_size: int, kind: str,
             body: Shape) -> Response:
    """The page a token stands for: the next page, or the first page a 202 put off."""
    state = open_token(request, token, user, kind)
    return cohort_page(request, user, state, page_size, resumed(state), body)


# the caller a next-page function takes: a user, or None where the endpoint allows anonymous use
_Caller = TypeVar("_Caller", bound=User | None)


def continuation(request: Request, user: _Caller, params: dict,
                 next_of: Callable[[Request, _Caller, str, int], JSONResponse]) -> JSONResponse:
    """A request carrying a next_page token: every other parameter but page_size is ignored."""
    return next_of(request, user, params["next_page"],
                   parse_page_size(request, params.get("page_size")))


def next_page_request(request: Request, user: _Caller,
                      next_of: Callable[[Request, _Caller, str, int], JSONResponse]):
    """The nextPage endpoints: next_page required, page_size optional, nothing else."""
    params = strict_params(request, {"next_page", "page_size"}, "Invalid query parameter")
    if not params.get("next_page"):
        raise ApiError(400, "The next_page parameter is required")
    return continuation(request, user, params, next_of)


def with_sql(cohort: dict, want_sql: bool, page: Page) -> dict:
    return {**cohort, "sql": page.sql if want_sql else ""}


# ----- descriptive endpoints -------------------------------------------------------------
@route("GET", "/about", summary="About this API")
def about(request: Request):
    base = str(request.base_url).rstrip("/")
    return ok({"message": "Welcome to the Imaging Commons implementation of the IDC API, "
                          "Version 1",
               "documentation": f"SwaggerUI interface available at <{base}/v1/swagger/>. "
                                f"Documentation is available at <{DOCS_URL}>"})


@router.get("/openapi.json", include_in_schema=False)
def v1_openapi(request: Request):
    return get_openapi(title="Imaging Commons: IDC API v1", version="1",
                       routes=router.routes)


@route("GET", "/swagger", include_in_schema=False)
def swagger(request: Request) -> HTMLResponse:
    return swagger_page("/v1/openapi.json", "IDC API v1")


@route("GET", "/versions", summary="IDC data versions")
def versions(request: Request):
    strict_params(request, set(), "Invalid argument")
    commons = commons_of(request)
    listing = [{
        "idc_data_version": v.label,
        "date_active": v.date_active,
        "active": v.active,
        "data_sources": commons.data_sources(v.version),
        # the program objects of IDC's documentation; the catalogue knows programs by their short
        # name only
        "programs": [{"short_name": p, "name": p, "description": None}
                     for p in commons.programs(v.version)],
    } for v in commons.catalog.versions()]
    return ok({"idc_data_versions": listing, "versions": listing})


@route("GET", "/collections", summary="Collections of a data version")
def collections(request: Request, user: User | None = Depends(optional_user)):
    params = strict_params(request, {"idc_data_version"}, "Invalid argument")
    commons = commons_of(request)
    number = version_number(request, params.get("idc_data_version"))
    rows = commons.collections(number, user)
    return ok({"collections": [{
        "collection_id": r["collection_id"],
        "cancer_type": r["cancer_type"],
        "date_updated": r["date_updated"],
        "description": r["description"],
        "doi": r["doi"],
        "image_types": r["image_types"],
        "location": r["tumor_location"] or r["location"],
        "species": r["species"],
        "subject_count": r["subject_count"],
        "supporting_data": r["supporting_data"],
        "active": r["active"],
        "idc_data_versions": [f"{v}.0" for v in r["idc_data_versions"]],
    } for r in rows]})


@route("GET", "/analysis_results", summary="Analysis results of a data version")
def analysis_results(request: Request):
    params = strict_params(request, {"idc_data_version"}, "Invalid argument")
    commons = commons_of(request)
    number = version_number(request, params.get("idc_data_version"))
    return ok({"analysisResults": [{
        "active": r["active"],
        "analysis_result_id": r["analysis_result_id"],
        "analysisArtifacts": r["modalities"],
        "cancer_type": r["cancer_type"],
        "collections": r["collections"],
        "date_updated": r["date_updated"],
        "description": r["description"],
        "doi": r["doi"],
        "location": r["location"],
        "subject_count": r["subject_count"],
        "title": r["title"],
        "idc_data_versions": [f"{v}.0" for v in r["idc_data_versions"]],
    } for r in commons.analysis_results(number)]})


@route("GET", "/attributes", summary="Filter attributes of a data version")
def attributes(request: Request):
    params = strict_params(request, {"idc_data_version", "data_source"}, "Invalid argument")
    commons = commons_of(request)
    number = version_number(request, params.get("idc_data_version"))
    source = params.get("data_source")
    registry = commons.attribute_registry(number, source)
    if source and not registry:
        raise ApiError(400, f"Data source {source} does not exist", [source])
    label = f"{number}.0"
    return ok({"idc_data_version": label, "data_sources": [
        {"name": name, "attributes": [{**a, "idc_data_version": label} for a in attrs]}
        for name, attrs in registry.items()]})


@route("GET", "/user/account_details", "/users/account_details", summary="The caller's account")
def account_details(user: User = Depends(required_user)):
    details = {
        "id": str(user.id),
        "username": user.username,
        "email": user.email,
        "date_joined": user.date_joined.isoformat(),
        "last_login": user.last_login.isoformat() if user.last_login else None,
        "first_name": None,
        "last_name": None,
        "extra_data": {"id": str(user.id), "email": user.email, "verified_email": False,
                       "name": user.username, "given_name": None, "family_name": None,
                       "picture": None, "locale": None, "hd": None},
    }
    return ok({"account_details": details, "user_details": details})


# ----- cohorts ---------------------------------------------------------------------------
def cohort_json(cohort, permission: str | None = None) -> dict:
    out = {"cohort_id": cohort.cohort_id, "name": cohort.name, "description": cohort.description,
           "owner": cohort.owner, "filterSet": filter_set(cohort.filters, cohort.version)}
    if permission:
        out["permission"] = permission
    return out


@route("GET", "/cohorts", summary="The caller's cohorts")
def list_cohorts(request: Request, user: User = Depends(required_user)):
    accounts = commons_of(request).accounts
    return ok({"cohorts": [cohort_json(c, p) for c, p in accounts.list_cohorts(user)]})


@route("POST", "/cohorts", summary="Create a cohort")
def create_cohort(request: Request, user: User = Depends(required_user),
                  raw: bytes = Depends(body_bytes)):
    strict_params(request, set(), "Invalid key")
    commons = commons_of(request)
    definition = cohort_definition(request, json_body(raw))
    name = definition["name"]
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, "A name was not provided for this cohort. The cohort was not made.")
    try:  # compile once so a cohort with bad filters is never stored
        commons.compile_state({"kind": "manifest", "version": definition["version"],
                               "filters": definition["filters"], "fields": []}, user)
    except FilterError as e:
        raise ApiError(400, str(e), e.not_found) from None
    try:
        cohort = commons.accounts.create_cohort(user, name.strip(), definition["description"],
                                                definition["filters"], definition["version"])
    except AccountError as e:
        raise ApiError(400, f"{e}. The cohort was not made.") from None
    props = {k: v for k, v in cohort_json(cohort).items() if k != "owner"}
    return ok({"cohort_properties": props, **props})


def _cohort_ids(raw: Any) -> list[int]:
    """Integers or digit strings in the id range only: int() would turn 1.5 or true into
    cohort 1, and an id past the range cannot be looked up (or even echoed by orjson)."""
    if not isinstance(raw, list) or not raw:
        raise ApiError(400, 'Expected a body {"cohorts": [cohort ids]}')
    ids = []
    for item in raw:
        if isinstance(item, str) and re.fullmatch(r"[0-9]+", item.strip()):
            cohort_id = int(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            cohort_id = item
        else:
            cohort_id = None
        if cohort_id is None or not 0 < cohort_id <= MAX_COHORT_ID:
            raise ApiError(400, f"Invalid cohort id {item!r}", [str(item)])
        ids.append(cohort_id)
    return ids


def _delete(request: Request, user: User, raw: Any) -> JSONResponse:
    """One result per id; every id is validated before any cohort is deleted."""
    accounts = commons_of(request).accounts
    return ok({"cohorts": [{"cohort_id": i, "result": accounts.delete_cohort(user, i)}
                           for i in _cohort_ids(raw)]})


@route("DELETE", "/cohorts", summary="Delete cohorts")
def delete_cohorts(request: Request, user: User = Depends(required_user),
                   raw: bytes = Depends(body_bytes)):
    body = json_body(raw)
    only_keys(body, {"cohorts"})
    return _delete(request, user, body.get("cohorts"))


@route("DELETE", "/cohorts/{cohort_id:int}", summary="Delete a cohort")
def delete_cohort(request: Request, cohort_id: int, user: User = Depends(required_user)):
    return _delete(request, user, [cohort_id])


def saved_cohort(request: Request, user: User, cohort_id: int):
    try:
        if cohort_id > MAX_COHORT_ID:
            raise NotFound(cohort_id)
        cohort, _ = commons_of(request).accounts.get_cohort(user, cohort_id)
    except NotFound:
        raise ApiError(404, f"Cohort {cohort_id} not found", [str(cohort_id)]) from None
    except Forbidden:
        raise ApiError(403, f"You do not have permission to access cohort {cohort_id}") from None
    return cohort


# ----- manifests -------------------------------------------------------------------------
MANIFEST_PARAMS = set(MANIFEST_SELECTORS) | {"sql", "page_size", "next_page"}


def manifest_selection(params: dict) -> tuple[list[str], bool]:
    fields = [name for name in MANIFEST_SELECTORS if parse_bool(name, params.get(name))]
    return fields, parse_bool("sql", params.get("sql"))


def manifest_response(request: Request, user: User | None, params: dict, definition: dict,
                      cohort: dict):
    """First page of a manifest."""
    page_size = parse_page_size(request, params.get("page_size"))
    fields, want_sql = manifest_selection(params)
    if not fields:
        raise ApiError(400, "Select at least one manifest column, e.g. GCS_URL=True")
    state = {"kind": "manifest", "version": definition["version"],
             "filters": definition["filters"], "fields": fields, "offset": 0}
    return cohort_page(request, user, state, page_size, {"cohort": cohort, "sql": want_sql},
                       manifest_body)


def manifest_next(request: Request, user: User | None, token: str, page_size: int):
    return by_token(request, user, token, page_size, "manifest", manifest_body)


@route("GET", "/cohorts/manifest/{cohort_id:int}", "/cohorts/{cohort_id:int}/manifest",
       summary="Paged manifest of a saved cohort")
def cohort_manifest(request: Request, cohort_id: int, user: User = Depends(required_user)):
    params = strict_params(request, MANIFEST_PARAMS, "Invalid key")
    if params.get("next_page"):  # the path's cohort id is ignored too
        return continuation(request, user, params, manifest_next)
    cohort = saved_cohort(request, user, cohort_id)
    definition = {"version": cohort.version, "filters": cohort.filters}
    return manifest_response(request, user, params, definition, {
        "cohort_id": cohort.cohort_id, "name": cohort.name, "description": cohort.description,
        "filterSet": filter_set(cohort.filters, cohort.version)})


@route("POST", "/cohorts/manifest/preview", "/cohorts/preview/manifest",
       summary="Paged manifest of a cohort definition (nothing stored)")
def preview_manifest(request: Request, user: User | None = Depends(optional_user),
                     raw: bytes = Depends(body_bytes)):
    params = strict_params(request, MANIFEST_PARAMS, "Invalid key")
    if params.get("next_page"):
        return continuation(request, user, params, manifest_next)
    definition = cohort_definition(request, json_body(raw))
    return manifest_response(request, user, params, definition, {
        "name": definition["name"], "description": definition["description"],
        "filterSet": filter_set(normalised_filters(definition["filters"]),
                                definition["version"])})


@route("GET", "/cohorts/manifest/nextPage", summary="Next page of a manifest")
async def manifest_next_page(request: Request, user: User | None = Depends(optional_user)):
    return await on_loop_when_ready(user, lambda: next_page_request(request, user, manifest_next))


# ----- queries ---------------------------------------------------------------------------
QUERY_PARAMS = {"sql", "page_size", "next_page", "fields"}


def query_fields(body: dict, params_fields: list[str]) -> list[str]:
    fields = body.get("fields")
    if fields is None and isinstance(body.get("queryFields"), dict):
        fields = body["queryFields"].get("fields")
    if fields is None:
        fields = params_fields
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise ApiError(400, 'Give the fields to return: {"fields": ["Modality", ...]}')
    # attribute names match case-insensitively: Modality and modality are one column
    return list({f.lower(): f for f in fields}.values())


def query_response(request: Request, user: User | None, definition: dict, fields: list[str],
                   cohort: dict, params: dict):
    page_size = parse_page_size(request, params.get("page_size"))
    want_sql = parse_bool("sql", params.get("sql"))
    state = {"kind": "query", "version": definition["version"],
             "filters": definition["filters"], "fields": fields, "offset": 0}
    return cohort_page(request, user, state, page_size, {"cohort": cohort, "sql": want_sql},
                       query_body)


def query_next(request: Request, user: User | None, token: str, page_size: int):
    return by_token(request, user, token, page_size, "query", query_body)


def _cohort_query(request: Request, cohort_id: int, user: User, raw: bytes):
    params = strict_params(request, QUERY_PARAMS, "Invalid key")
    if params.get("next_page"):
        return continuation(request, user, params, query_next)
    cohort = saved_cohort(request, user, cohort_id)
    body = json_body(raw, required=False)
    only_keys(body, {"queryFields", "fields"})
    fields = query_fields(body, request.query_params.getlist("fields"))
    definition = {"version": cohort.version, "filters": cohort.filters}
    fs = filter_set(cohort.filters, cohort.version)
    return query_response(request, user, definition, fields, {
        "cohort_id": cohort.cohort_id, "name": cohort.name, "description": cohort.description,
        "filterSet": fs, "filters": cohort.filters}, params)


@route("GET", "/cohorts/query/{cohort_id:int}", "/cohorts/{cohort_id:int}/query",
       summary="Paged query of a saved cohort")
def cohort_query_get(request: Request, cohort_id: int, user: User = Depends(required_user),
                     raw: bytes = Depends(body_bytes)):
    return _cohort_query(request, cohort_id, user, raw)


@route("POST", "/cohorts/query/{cohort_id:int}", "/cohorts/{cohort_id:int}/query",
       summary="Paged query of a saved cohort (fields in the body)")
def cohort_query_post(request: Request, cohort_id: int, user: User = Depends(required_user),
                      raw: bytes = Depends(body_bytes)):
    return _cohort_query(request, cohort_id, user, raw)


@route("POST", "/cohorts/query/preview", "/cohorts/preview/query",
       summary="Paged query of a cohort definition (nothing stored)")
def preview_query(request: Request, user: User | None = Depends(optional_user),
                  raw: bytes = Depends(body_bytes)):
    params = strict_params(request, QUERY_PARAMS, "Invalid key")
    if params.get("next_page"):
        return continuation(request, user, params, query_next)
    body = json_body(raw)
    only_keys(body, {"cohort_def", "queryFields", "fields"})
    definition = cohort_definition(request, body.get("cohort_def"))
    fields = query_fields(body, request.query_params.getlist("fields"))
    filters = normalised_filters(definition["filters"])
    return query_response(request, user, definition, fields, {
        "name": definition["name"], "description": definition["description"],
        "filterSet": filter_set(filters, definition["version"]), "filters": filters}, params)


@route("GET", "/cohorts/query/nextPage", summary="Next page of a query")
async def query_next_page(request: Request, user: User | None = Depends(optional_user)):
    return await on_loop_when_ready(user, lambda: next_page_request(request, user, query_next))


# ----- dicomMetadata ---------------------------------------------------------------------
def dicom_metadata_page(request: Request, user: User, state: dict, page_size: int,
                        continuation: bool):
    """dicomMetadata pages; continuations carry `"cohort": {}` as the real server's did."""
    def shape(page: Page) -> PageLayout:
        return PageLayout({"cohort": {}} if continuation else {}, "query_results", "json")

    return paged(request, user, state, page_size, shape, None if continuation else {})


def dicom_metadata_next(request: Request, user: User, token: str, page_size: int):
    state = open_token(request, token, user, "dicomMetadata")
    return dicom_metadata_page(request, user, state, page_size, resumed(state) is None)


@route("GET", "/dicomMetadata", "/cohorts/dicomMetadata",
       summary="Fixed instance-level metadata of every instance (paged)")
def dicom_metadata(request: Request, user: User = Depends(required_user)):
    params = strict_params(request, {"page_size", "next_page", "idc_data_version"}, "Invalid key")
    if params.get("next_page"):
        return continuation(request, user, params, dicom_metadata_next)
    state = {"kind": "dicomMetadata", "filters": {}, "fields": [], "offset": 0,
             "version": version_number(request, params.get("idc_data_version"))}
    return dicom_metadata_page(request, user, state,
                               parse_page_size(request, params.get("page_size")), False)


@route("GET", "/dicomMetadata/nextPage", "/dicomMetadata/nextpage",
       "/cohorts/dicomMetadata/nextPage", summary="Next page of dicomMetadata")
def dicom_metadata_next_page(request: Request, user: User = Depends(required_user)):
    return next_page_request(request, user, dicom_metadata_next)
