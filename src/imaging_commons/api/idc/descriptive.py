"""The IDC API's descriptive endpoints: about, versions, collections, analysis results,
attributes, the caller's account, and the API's own OpenAPI and Swagger pages."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse

from ...core.accounts import User
from ...core.descriptions import DataSource
from ...core.errors import InvalidRequest
from ..auth import optional_user, required_user
from ..context import commons_of
from ..security import swagger_page
from .models import (
    DATA_SOURCE,
    DATA_VERSION,
    AboutAnswer,
    AccountAnswer,
    AnalysisResultsAnswer,
    AttributesAnswer,
    CollectionsAnswer,
    VersionsAnswer,
    answers,
    documented,
    with_page_size_limit,
)
from .params import strict_params, version_label, version_number
from .routing import ok, route, router

DOCS_URL = "https://learn.canceridc.dev/api/v1"
IMAGE_SOURCE = "dicom_pivot"  # IDC's name for the catalogue's own (DICOM) attributes
CLINICAL_PREFIX = "clinical."


def source_name(source: DataSource) -> str:
    return IMAGE_SOURCE if source.clinical is None else CLINICAL_PREFIX + source.clinical


def source_json(source: DataSource) -> dict:
    return {"name": source_name(source),
            "data_type": "Image Data" if source.clinical is None
            else "Clinical, Biospecimen, and Mutation Data"}


def asked_version(request: Request, *others: str) -> tuple[int, dict[str, str]]:
    """The data version a descriptive request names (the active one if none), and its
    parameters: idc_data_version and `others`, no more."""
    params = strict_params(request, {"idc_data_version", *others}, "Invalid argument")
    return version_number(request, params.get("idc_data_version")), params


@route("GET", "/about", summary="About this API", responses=answers(AboutAnswer))
def about(request: Request):
    base = str(request.base_url).rstrip("/")
    return ok({"message": "Welcome to the Imaging Commons implementation of the IDC API, "
                          "Version 1",
               "documentation": f"SwaggerUI interface available at <{base}/v1/swagger/>. "
                                f"Documentation is available at <{DOCS_URL}>"})


@router.get("/openapi.json", include_in_schema=False)
def v1_openapi(request: Request):
    return with_page_size_limit(
        get_openapi(title="Imaging Commons: IDC API v1", version="1", routes=router.routes),
        commons_of(request).archive.max_page_size)


@route("GET", "/swagger", include_in_schema=False)
def swagger(request: Request) -> HTMLResponse:
    return swagger_page("/v1/openapi.json", "IDC API v1")


@route("GET", "/versions", summary="IDC data versions", responses=answers(VersionsAnswer))
def versions(request: Request):
    strict_params(request, set(), "Invalid argument")
    listing = [{
        "idc_data_version": version_label(v.number),
        "date_active": v.date_active,
        "active": v.active,
        "data_sources": [source_json(s) for s in v.sources],
        # the program objects of IDC's documentation; the catalogue knows programs by their short
        # name only
        "programs": [{"short_name": p, "name": p, "description": None} for p in v.programs],
    } for v in commons_of(request).versions()]
    return ok({"idc_data_versions": listing, "versions": listing})


@route("GET", "/collections", summary="Collections of a data version",
       responses=answers(CollectionsAnswer), openapi_extra=documented(DATA_VERSION))
def collections(request: Request, user: User | None = Depends(optional_user)):
    number, _ = asked_version(request)
    return ok({"collections": [{
        "collection_id": c.collection_id,
        "cancer_type": c.cancer_type,
        "date_updated": c.date_updated,
        "description": c.description,
        "doi": c.doi,
        "image_types": c.image_types,
        "location": c.location,
        "species": c.species,
        "subject_count": c.subject_count,
        "supporting_data": c.supporting_data,
        "active": c.active,
        "idc_data_versions": [version_label(v) for v in c.versions],
    } for c in commons_of(request).collections(number, user)]})


@route("GET", "/analysis_results", summary="Analysis results of a data version",
       responses=answers(AnalysisResultsAnswer), openapi_extra=documented(DATA_VERSION))
def analysis_results(request: Request):
    number, _ = asked_version(request)
    return ok({"analysisResults": [{
        "active": r.active,
        "analysis_result_id": r.analysis_result_id,
        "analysisArtifacts": r.modalities,
        "cancer_type": r.cancer_type,
        "collections": r.collections,
        "date_updated": r.date_updated,
        "description": r.description,
        "doi": r.doi,
        "location": r.location,
        "subject_count": r.subject_count,
        "title": r.title,
        "idc_data_versions": [version_label(v) for v in r.versions],
    } for r in commons_of(request).analysis_results(number)]})


@route("GET", "/attributes", summary="Filter attributes of a data version",
       responses=answers(AttributesAnswer), openapi_extra=documented(DATA_VERSION, DATA_SOURCE))
def attributes(request: Request):
    number, params = asked_version(request, "data_source")
    wanted = params.get("data_source")
    label = version_label(number)
    registry: dict[str, list[dict]] = {}
    for attr in commons_of(request).attributes(number):
        name = source_name(attr.source)
        if not wanted or name == wanted:
            registry.setdefault(name, []).append({
                "name": attr.name, "data_type": attr.data_type, "units": attr.units,
                "idc_data_version": label})
    if wanted and not registry:
        raise InvalidRequest(f"Data source {wanted} does not exist", [wanted])
    return ok({"idc_data_version": label, "data_sources": [
        {"name": name, "attributes": attrs} for name, attrs in registry.items()]})


@route("GET", "/user/account_details", "/users/account_details", summary="The caller's account",
       responses=answers(AccountAnswer, 401))
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
