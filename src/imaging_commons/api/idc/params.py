"""What an IDC request asks: strict query parameters, JSON bodies, cohort definitions and
their filter sets, and IDC's names for the columns a manifest selects."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from ...core.accounts import User
from ...core.catalog import normalise_collection_id
from ...core.errors import InvalidRequest
from ...core.query import Output
from ..context import commons_of

DEFAULT_PAGE_SIZE = 1000
MULTI_VALUED = {"fields"}  # query parameters that may be repeated
BOOLEAN_WORDS = {"true": True, "1": True, "false": False, "0": False}
GUID_PREFIX = "dg.4DFC/"  # a CRDC UUID as IDC writes it, a GUID

# IDC's manifest column selectors, in the order rows are sorted by: the catalogue column each
# names, and the text before its value
MANIFEST_SELECTORS: dict[str, Output] = {o.name: o for o in (
    Output("CRDC_Study_GUID", "crdc_study_uuid", GUID_PREFIX),
    Output("CRDC_Series_GUID", "crdc_series_uuid", GUID_PREFIX),
    Output("CRDC_Instance_GUID", "crdc_instance_uuid", GUID_PREFIX),
    Output("GCS_URL", "gcs_url"),
    Output("Collection_ID", "collection_id"),
    Output("Patient_ID", "PatientID"),
    Output("StudyInstanceUID", "StudyInstanceUID"),
    Output("SeriesInstanceUID", "SeriesInstanceUID"),
    Output("SOPInstanceUID", "SOPInstanceUID"),
    Output("Source_DOI", "source_DOI"),
)}


def manifest_fields(names: list[str]) -> list[list[str]]:
    """The outputs of a manifest's state (see core.pages) for IDC's selector names."""
    return [[o.name, o.field, o.prefix] for o in (MANIFEST_SELECTORS[name] for name in names)]


def strict_params(request: Request, allowed: set[str], wording: str) -> dict[str, str]:
    """The query parameters, refusing any the endpoint does not know (as the real server does)
    and any single-valued one given twice: Flask read the first value where Starlette keeps the
    last, so a repeated key has no safe meaning."""
    keys = [key for key, _ in request.query_params.multi_items()]
    for key in keys:
        if key not in allowed:
            raise InvalidRequest(f"{wording} {key}")
        if key not in MULTI_VALUED and keys.count(key) > 1:
            raise InvalidRequest(f"Parameter {key} is given more than once")
    return dict(request.query_params)


def parse_bool(name: str, raw: str | None, default: bool = False) -> bool:
    if raw is None or raw == "":
        return default
    value = BOOLEAN_WORDS.get(raw.strip().lower())
    if value is None:
        raise InvalidRequest(f"Invalid value for {name}: {raw!r} (expected true or false)")
    return value


def parse_page_size(request: Request, raw: str | None) -> int:
    limit = commons_of(request).archive.max_page_size
    if raw is None or raw == "":
        return DEFAULT_PAGE_SIZE
    try:
        size = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid page_size {raw!r}: expected an integer") from None
    if not 1 <= size <= limit:
        raise InvalidRequest(f"Invalid page_size {size}: must be between 1 and {limit}")
    return size


async def body_bytes(request: Request) -> bytes:
    """The request body, read on the event loop. Endpoints that take it are plain functions,
    which FastAPI runs in its thread pool: a query or a database write blocking there holds up
    that request alone, where in a coroutine it would stall every connection."""
    return await request.body()


def json_body(raw: bytes, required: bool = True) -> dict:
    if not raw.strip():
        if required:
            raise InvalidRequest("A JSON request body is required")
        return {}
    try:  # orjson refuses NaN, Infinity and lone surrogates, so whatever parses can be echoed
        body = orjson.loads(raw.removeprefix(b"\xef\xbb\xbf"))  # a BOM, as Flask allowed
    except orjson.JSONDecodeError:
        raise InvalidRequest("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object")
    return body


def only_keys(body: dict, allowed: set[str], where: str = "") -> None:
    """A body key the endpoint does not know is a 400 naming it, never silently ignored."""
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"Invalid key {unknown[0]}{where}")


def version_number(request: Request, label: Any) -> int:
    try:
        return commons_of(request).catalog.parse_version(label)
    except InvalidRequest:
        raise InvalidRequest(f"IDC data version {label} does not exist", [str(label)]) from None


def version_label(number: int) -> str:
    """A data version as IDC writes it ("25.0")."""
    return f"{number}.0"


def cohort_definition(request: Request, body: Any) -> dict:
    """A cohort definition in either documented form: {name, description, filters} or
    {name, description, filterSet: {idc_data_version, filters}}."""
    if not isinstance(body, dict):
        raise InvalidRequest("The cohort definition must be a JSON object")
    only_keys(body, {"name", "description", "filters", "filterSet"}, " in the cohort definition")
    filter_set = body.get("filterSet")
    if filter_set is not None and "filters" in body:
        raise InvalidRequest("Give the filters either as filters or in filterSet, not both")
    if filter_set is not None:
        if not isinstance(filter_set, dict) or set(filter_set) - {"filters", "idc_data_version"}:
            raise InvalidRequest("filterSet must be an object with filters and idc_data_version")
    filters = body.get("filters") if filter_set is None else filter_set.get("filters")
    if not filters:
        raise InvalidRequest("No filters were provided; a cohort needs at least one filter.")
    if not isinstance(filters, dict):
        raise InvalidRequest("filters must be an object mapping attribute names to values")
    for key, values in filters.items():
        values = values if isinstance(values, list) else [values]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool)
                                 for v in values):
            raise InvalidRequest(f"Filter {key} must be a non-empty list of strings or numbers")
    description = body.get("description", "")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest("description must be a string")
    if description and "\x00" in description:  # PostgreSQL text cannot hold NUL
        raise InvalidRequest("description must not contain NUL characters")
    label = (filter_set or {}).get("idc_data_version")
    return {
        "name": body.get("name"),
        "description": description or "",
        "filters": filters,
        "version": version_number(request, label),
    }


def filter_set(filters: dict, version: int) -> dict:
    return {"filters": filters, "idc_data_version": version_label(version)}


def normalised_filters(filters: dict) -> dict:
    """Preview echoes show collection ids the way they were matched."""
    return {k: ([normalise_collection_id(str(v)) for v in vals] if k.lower() == "collection_id"
                and isinstance(vals, list) else vals) for k, vals in filters.items()}


def query_fields(body: dict, params_fields: list[str]) -> list[str]:
    fields = body.get("fields")
    if fields is None and isinstance(body.get("queryFields"), dict):
        fields = body["queryFields"].get("fields")
    if fields is None:
        fields = params_fields
    if not isinstance(fields, list) or not fields or not all(isinstance(f, str) for f in fields):
        raise InvalidRequest('Give the fields to return: {"fields": ["Modality", ...]}')
    # attribute names match case-insensitively: Modality and modality are one column
    return list({f.lower(): f for f in fields}.values())


def caller_key(user: User | None) -> str | None:
    return user.username if user else None
