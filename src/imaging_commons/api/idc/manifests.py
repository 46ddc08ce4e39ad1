"""The IDC API's manifests: paged columns of a saved cohort's or a cohort definition's items."""

from __future__ import annotations

from fastapi import Depends, Request

from ...core.accounts import User
from ...core.errors import InvalidRequest
from ..auth import optional_user, required_user
from .cohorts import cohort_echo, saved_cohort
from .deadline import (
    by_token,
    cohort_page,
    continuation,
    manifest_body,
    next_page_request,
    on_loop_when_ready,
)
from .models import (
    NEXT_PAGE,
    NEXT_PAGE_REQUIRED,
    PAGE_SIZE,
    SELECTORS,
    SQL,
    CohortDefinition,
    ManifestPageAnswer,
    answers,
    documented,
)
from .params import (
    MANIFEST_SELECTORS,
    body_bytes,
    cohort_definition,
    filter_set,
    json_body,
    manifest_fields,
    normalised_filters,
    parse_bool,
    parse_page_size,
    strict_params,
)
from .routing import route

MANIFEST_PARAMS = set(MANIFEST_SELECTORS) | {"sql", "page_size", "next_page"}
MANIFEST_DOCS = (*SELECTORS, SQL, PAGE_SIZE, NEXT_PAGE)


def manifest_response(request: Request, user: User | None, params: dict, definition: dict,
                      cohort: dict):
    """First page of a manifest."""
    page_size = parse_page_size(request, params.get("page_size"))
    selected = [name for name in MANIFEST_SELECTORS if parse_bool(name, params.get(name))]
    want_sql = parse_bool("sql", params.get("sql"))
    if not selected:
        raise InvalidRequest("Select at least one manifest column, e.g. GCS_URL=True")
    state = {"kind": "manifest", "version": definition["version"],
             "filters": definition["filters"], "fields": manifest_fields(selected), "offset": 0}
    return cohort_page(request, user, state, page_size, {"cohort": cohort, "sql": want_sql},
                       manifest_body)


def manifest_next(request: Request, user: User | None, token: str, page_size: int):
    return by_token(request, user, token, page_size, "manifest", manifest_body)


@route("GET", "/cohorts/manifest/{cohort_id:int}", "/cohorts/{cohort_id:int}/manifest",
       summary="Paged manifest of a saved cohort",
       responses=answers(ManifestPageAnswer, 401, 403, 404, pending=True),
       openapi_extra=documented(*MANIFEST_DOCS))
def cohort_manifest(request: Request, cohort_id: int, user: User = Depends(required_user)):
    params = strict_params(request, MANIFEST_PARAMS, "Invalid key")
    if params.get("next_page"):  # the path's cohort id is ignored too
        return continuation(request, user, params, manifest_next)
    cohort = saved_cohort(request, user, cohort_id)
    definition = {"version": cohort.version, "filters": cohort.filters}
    return manifest_response(request, user, params, definition, cohort_echo(cohort))


@route("POST", "/cohorts/manifest/preview", "/cohorts/preview/manifest",
       summary="Paged manifest of a cohort definition (nothing stored)",
       responses=answers(ManifestPageAnswer, pending=True),
       openapi_extra=documented(*MANIFEST_DOCS, body=CohortDefinition))
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


@route("GET", "/cohorts/manifest/nextPage", summary="Next page of a manifest",
       responses=answers(ManifestPageAnswer, pending=True),
       openapi_extra=documented(NEXT_PAGE_REQUIRED, PAGE_SIZE))
async def manifest_next_page(request: Request, user: User | None = Depends(optional_user)):
    return await on_loop_when_ready(user, lambda: next_page_request(request, user, manifest_next))
