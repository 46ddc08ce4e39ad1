"""The IDC API's queries (chosen attributes of a cohort's items) and dicomMetadata (every
instance's fixed metadata), paged."""

from __future__ import annotations

from fastapi import Depends, Request

from ...core.accounts import User
from ...core.pages import AnyPage
from ..auth import optional_user, required_user
from .cohorts import cohort_echo, saved_cohort
from .deadline import (
    by_token,
    cohort_page,
    continuation,
    next_page_request,
    on_loop_when_ready,
    open_token,
    paged,
    query_body,
    resumed,
)
from .models import (
    DATA_VERSION,
    FIELDS,
    NEXT_PAGE,
    NEXT_PAGE_REQUIRED,
    PAGE_SIZE,
    SQL,
    CohortQueryBody,
    PreviewQueryBody,
    QueryPageAnswer,
    answers,
    documented,
)
from .params import (
    body_bytes,
    cohort_definition,
    filter_set,
    json_body,
    normalised_filters,
    only_keys,
    parse_bool,
    parse_page_size,
    query_fields,
    strict_params,
    version_number,
)
from .routing import route
from .streaming import PageLayout

QUERY_PARAMS = {"sql", "page_size", "next_page", "fields"}
QUERY_DOCS = (FIELDS, SQL, PAGE_SIZE, NEXT_PAGE)
COHORT_QUERY = answers(QueryPageAnswer, 401, 403, 404, pending=True)


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
    return query_response(request, user, definition, fields,
                          {**cohort_echo(cohort), "filters": cohort.filters}, params)


@route("GET", "/cohorts/query/{cohort_id:int}", "/cohorts/{cohort_id:int}/query",
       summary="Paged query of a saved cohort", responses=COHORT_QUERY,
       openapi_extra=documented(*QUERY_DOCS))
def cohort_query_get(request: Request, cohort_id: int, user: User = Depends(required_user),
                     raw: bytes = Depends(body_bytes)):
    return _cohort_query(request, cohort_id, user, raw)


@route("POST", "/cohorts/query/{cohort_id:int}", "/cohorts/{cohort_id:int}/query",
       summary="Paged query of a saved cohort (fields in the body)", responses=COHORT_QUERY,
       openapi_extra=documented(*QUERY_DOCS, body=CohortQueryBody, body_required=False))
def cohort_query_post(request: Request, cohort_id: int, user: User = Depends(required_user),
                      raw: bytes = Depends(body_bytes)):
    return _cohort_query(request, cohort_id, user, raw)


@route("POST", "/cohorts/query/preview", "/cohorts/preview/query",
       summary="Paged query of a cohort definition (nothing stored)",
       responses=answers(QueryPageAnswer, pending=True),
       openapi_extra=documented(*QUERY_DOCS, body=PreviewQueryBody))
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


@route("GET", "/cohorts/query/nextPage", summary="Next page of a query",
       responses=answers(QueryPageAnswer, pending=True),
       openapi_extra=documented(NEXT_PAGE_REQUIRED, PAGE_SIZE))
async def query_next_page(request: Request, user: User | None = Depends(optional_user)):
    return await on_loop_when_ready(user, lambda: next_page_request(request, user, query_next))


# ----- dicomMetadata ---------------------------------------------------------------------
def dicom_metadata_page(request: Request, user: User, state: dict, page_size: int,
                        continuation: bool):
    """dicomMetadata pages; continuations carry `"cohort": {}` as the real server's did."""
    def shape(page: AnyPage) -> PageLayout:
        return PageLayout({"cohort": {}} if continuation else {}, "query_results", "json")

    return paged(request, user, state, page_size, shape, None if continuation else {})


def dicom_metadata_next(request: Request, user: User, token: str, page_size: int):
    state = open_token(request, token, user, "dicomMetadata")
    return dicom_metadata_page(request, user, state, page_size, resumed(state) is None)


@route("GET", "/dicomMetadata", "/cohorts/dicomMetadata",
       summary="Fixed instance-level metadata of every instance (paged)",
       responses=answers(QueryPageAnswer, 401, pending=True),
       openapi_extra=documented(PAGE_SIZE, NEXT_PAGE, DATA_VERSION))
def dicom_metadata(request: Request, user: User = Depends(required_user)):
    params = strict_params(request, {"page_size", "next_page", "idc_data_version"}, "Invalid key")
    if params.get("next_page"):
        return continuation(request, user, params, dicom_metadata_next)
    state = {"kind": "dicomMetadata", "filters": {}, "fields": [], "offset": 0,
             "version": version_number(request, params.get("idc_data_version"))}
    return dicom_metadata_page(request, user, state,
                               parse_page_size(request, params.get("page_size")), False)


@route("GET", "/dicomMetadata/nextPage", "/dicomMetadata/nextpage",
       "/cohorts/dicomMetadata/nextPage", summary="Next page of dicomMetadata",
       responses=answers(QueryPageAnswer, 401, pending=True),
       openapi_extra=documented(NEXT_PAGE_REQUIRED, PAGE_SIZE))
def dicom_metadata_next_page(request: Request, user: User = Depends(required_user)):
    return next_page_request(request, user, dicom_metadata_next)
