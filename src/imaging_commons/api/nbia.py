"""NBIA metadata and search endpoints: the advanced API NBIA documents and the versioned public
API (v1, v2, v4) that tcia_utils calls.

Routes read their parameters (query string, plus form fields on POST), turn them into a
`core.search.Criteria`, ask `core.search` in the caller's scope (restricted collections the
caller may not see are never in it) and write NBIA's wire formats: JSON lists with null values
left out, CSV, XML, HTML, `.tcia` manifests. v4 refuses parameters a route does not take and
writes dates as MM-DD-YYYY; v1/v2 write them as NBIA's timestamps.
"""

from __future__ import annotations

import datetime as dt
import html
import inspect
import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Annotated
from xml.sax.saxutils import escape as xml_escape

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from ..core.accounts import User
from ..core.catalog import normalise_collection_id, stable_pk
from ..core.dicom_rows import is_uid
from ..core.search import (
    SORT_FIELDS,
    AnswerTooLarge,
    CatalogSearch,
    Criteria,
    DrillDownStudy,
    PatientResult,
    Scope,
    SearchError,
    SearchPage,
    Sort,
    doi_url,
    patient_pk,
)
from .auth import nbia_user
from .context import commons_of
from .errors import ApiError
from .security import attachment

router = APIRouter(tags=["NBIA search"])

SERVICES = "/nbia-api/services"
VERSIONED = ("v1", "v2", "v4")
ADVANCED = ("", "v4")
MAX_INT = 2**31 - 1  # NBIA parses paging numbers as Java ints
MAX_PAGE = 1_000_000  # the largest page NBIA clients ask for (manifests of whole searches)
FORMATS = {"json": "application/json", "csv": "text/csv", "xml": "application/xml",
           "html": "text/html"}
MANIFEST_TYPE = "application/x-nbia-manifest-file"
CRITERIA_PARAMETERS = ("criteriaType{i}", "value{i}", "fromDate{i}", "toDate{i}",
                       "eventType{i}", "fromDay{i}", "toDay{i}", "sortField", "sortDirection",
                       "start", "size", "tool")
SERIES_FILTERS = {"Collection": "collections", "PatientID": "patients",
                  "StudyInstanceUID": "study_uids", "SeriesInstanceUID": "series_uids",
                  "Modality": "modalities", "BodyPartExamined": "body_parts",
                  "Manufacturer": "manufacturers", "ManufacturerModelName": "models"}


# ----- parameters ---------------------------------------------------------------------------
class Params:
    """What a route was sent: the query string plus form fields on POST. Names match
    case-insensitively, names may repeat (`list=a&list=b`), empty values count as missing.
    `version` is the API version of the path (4 on services/v4/..., None on the advanced one),
    which decides how dates are read."""

    def __init__(self, pairs: list[tuple[str, str]], version: int | None = None):
        self.version = version
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if "\x00" in name or "\x00" in value:
                raise ApiError(400, f"Parameter {name!r} holds a NUL character")
            if value.strip():
                self._values.setdefault(name.lower(), []).append(value.strip())

    def get(self, name: str) -> str | None:
        values = self._values.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self._values.get(name.lower(), [])

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise ApiError(400, f"A parameter, {name}, is required for this API call.")
        return value

    def items(self, name: str = "list") -> list[str]:
        """A list parameter, repeated or comma-separated (clients do both)."""
        return [item for value in self.all(name) for item in re.split(r"\s*,\s*", value) if item]

    def required_items(self, name: str = "list") -> list[str]:
        items = self.items(name)
        if not items:
            self.required(name)
        return items

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"[+-]?\d{1,19}", text) or not low <= int(text) <= high:
            raise ApiError(400, f"Parameter {name} must be a whole number from {low} to {high}, "
                                f"not {text!r}")
        return int(text)

    def yes_no(self, name: str) -> bool:
        text = self.required(name).lower()
        if text not in ("yes", "no", "true", "false"):
            raise ApiError(400, f"Parameter {name} must be yes or no, not {text!r}")
        return text in ("yes", "true")


def taking(*allowed: str) -> Callable:
    """A dependency reading a route's parameters. On v4 paths a query parameter the route does
    not take (`allowed`, where `{i}` stands for a criterion's index) is refused, as NBIA v4
    does."""
    names = (*allowed, "format")
    known = re.compile("|".join(re.escape(n).replace(r"\{i\}", r"\d+") for n in names), re.I)

    async def read(request: Request) -> Params:
        if api_version(request) == 4:
            for name in request.query_params:
                if not known.fullmatch(name):
                    raise ApiError(400, f"Invalid query parameter: '{name}'. Allowed "
                                        f"parameters are: [{', '.join(names)}]")
        pairs = list(request.query_params.multi_items())
        if request.method == "POST":
            try:
                form = await request.form(max_fields=200_000)
            except HTTPException:  # the body limit's 413
                raise
            except Exception as exc:  # malformed multipart bodies raise several types
                raise ApiError(400, f"Unreadable form body: {exc}") from None
            pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return Params(pairs, api_version(request))

    read.allowed = names  # type: ignore[attr-defined]  # read by the OpenAPI description
    return read


def api_version(request: Request) -> int | None:
    """4 on services/v4/..., None on the unversioned advanced paths."""
    match = re.match(rf"{SERVICES}/v(\d)/", request.url.path)
    return int(match.group(1)) if match else None


def caller_scope(request: Request, user: Caller) -> Scope:
    try:
        return searcher(request).scope(user)
    except SearchError as exc:
        raise ApiError(503, str(exc)) from None


def searcher(request: Request) -> CatalogSearch:
    return commons_of(request).search


def max_list_rows(request: Request) -> int:
    return commons_of(request).archive.max_list_rows


Caller = Annotated[User, Depends(nbia_user)]
CallerScope = Annotated[Scope, Depends(caller_scope)]
Search = Annotated[CatalogSearch, Depends(searcher)]


# Names of the services whose answers can run to a whole collection or series (lists, zips):
# HeavyRequestLimit counts them per client.
HEAVY: set[str] = set()


def is_heavy(path: str) -> bool:
    return path.startswith(SERVICES) and path.rpartition("/")[2] in HEAVY


def serve(name: str, *prefixes: str, methods=("GET", "POST"),
          target: APIRouter | None = None, heavy: bool = False) -> Callable:
    """Register one handler as services/<prefix>/<name> for each prefix ('' = unversioned) on
    `target` (this module's router by default). Its OpenAPI operation declares, as optional
    string query parameters, the parameters its `taking` dependency reads (on POST they may
    come as form fields too); `heavy` marks an answer that can be as large as a collection."""

    def register(handler: Callable) -> Callable:
        summary, _, details = (handler.__doc__ or "").partition("\n")
        readers = [p.default.dependency for p in inspect.signature(handler).parameters.values()
                   if hasattr(getattr(p.default, "dependency", None), "allowed")]
        taken = readers[0].allowed if readers else ()
        declared = [{"name": param.replace("{i}", str(i)), "in": "query", "required": False,
                     "schema": {"type": "string"}}
                    for param in taken for i in ((0, 1) if "{i}" in param else (0,))]
        if heavy:
            HEAVY.add(name)
        for prefix, method in itertools.product(prefixes, methods):
            path = "/".join(part for part in (SERVICES, prefix, name) if part)
            # one route per method, so each OpenAPI operation has its own id
            (target or router).add_api_route(
                path, handler, methods=[method], name=f"{method} {path}",
                summary=summary.strip(), description=details.strip(),
                openapi_extra={"parameters": declared} if declared else None)
        return handler

    return register


# ----- dates ---------------------------------------------------------------------------------
MONTH_FIRST = ("%m-%d-%Y", "%m/%d/%Y")
DAY_FIRST = ("%d/%m/%Y", "%d-%m-%Y")
ISO = ("%Y-%m-%d", "%Y/%m/%d")


def parse_date(name: str, text: str, formats: Sequence[str], example: str) -> dt.date:
    for fmt in (*formats, *ISO):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise ApiError(400, f"Parameter {name} must be a date like {example}, not {text!r}")


def version_date(params: Params, *names: str) -> dt.date:
    """A versioned route's date parameter: v4 writes MM-DD-YYYY, older versions dd/MM/yyyy."""
    name = next((n for n in names if params.get(n)), names[0])
    text = params.required(name)
    if params.version == 4:
        return parse_date(name, text, MONTH_FIRST, "01-31-2024")
    return parse_date(name, text, DAY_FIRST, "31/01/2024")


def epoch_millis(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        day = dt.date.fromisoformat(iso)
    except ValueError:
        return None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


# ----- criteria ------------------------------------------------------------------------------
def _value(target: str) -> Callable[[Criteria, Params, int], None]:
    def add(criteria: Criteria, params: Params, i: int) -> None:
        getattr(criteria, target).append(params.required(f"value{i}"))
    return add


def _date_range(criteria: Criteria, params: Params, i: int) -> None:
    # The advanced API reads dd/mm/yyyy, as NBIA's guide writes dates and its own parser
    # reads them; v4 reads MM-DD-YYYY; each falls back to the other order when its own
    # reading of a date is impossible.
    formats, example = ((MONTH_FIRST + DAY_FIRST, "01-31-2024") if params.version == 4
                        else (DAY_FIRST + MONTH_FIRST, "31/01/2024"))
    first = parse_date(f"fromDate{i}", params.required(f"fromDate{i}"), formats, example)
    last = parse_date(f"toDate{i}", params.required(f"toDate{i}"), formats, example)
    if first > last:
        raise ApiError(400, f"fromDate{i} is after toDate{i}")
    criteria.study_date_from, criteria.study_date_to = first, last


def _min_studies(criteria: Criteria, params: Params, i: int) -> None:
    params.required(f"value{i}")
    criteria.min_studies = params.integer(f"value{i}", 0, 0, MAX_INT)


def _flag(target: str) -> Callable[[Criteria, Params, int], None]:
    def set_flag(criteria: Criteria, params: Params, i: int) -> None:
        setattr(criteria, target, params.yes_no(f"value{i}"))
    return set_flag


def _modality_anded(criteria: Criteria, params: Params, i: int) -> None:
    criteria.modality_anded = params.required(f"value{i}").lower() in ("all", "yes", "true")


def _time_point(criteria: Criteria, params: Params, i: int) -> None:
    params.required(f"eventType{i}")
    days = [params.integer(f"{n}{i}", 0, -MAX_INT, MAX_INT) for n in ("fromDay", "toDay")
            if params.get(f"{n}{i}") is not None]
    if not days:
        raise ApiError(400, f"Time point criterion {i} needs fromDay{i} or toDay{i}")
    criteria.time_points = True


CRITERIA_TYPES: dict[str, Callable[[Criteria, Params, int], None]] = {
    "collectioncriteria": _value("collections"),
    "imagemodalitycriteria": _value("modalities"),
    "anatomicalsitecriteria": _value("body_parts"),
    "manufacturercriteria": _value("manufacturers"),
    "modelcriteria": _value("models"),
    "patientcriteria": _value("patients"),
    "speciescriteria": _value("species"),
    "daterangecriteria": _date_range,
    "minnumberofstudiescriteria": _min_studies,
    "phantomcriteria": _flag("phantom"),
    "thirdpartyanalysis": _flag("third_party"),
    "excludecommercialcriteria": _flag("exclude_commercial"),
    "modalityandedsearchcriteria": _modality_anded,
    "timepointcriteria": _time_point,
}


def search_criteria(params: Params) -> Criteria:
    """criteriaType0/value0, criteriaType1/value1, ... (contiguous from 0), plus the plain
    Collection/Modality/BodyPartExamined/... filters. Unknown criterion types are ignored
    (tcia_utils sends `Criteria.DateRange`)."""
    criteria = series_filters(params)
    i = 0
    while (kind := params.get(f"criteriaType{i}")) is not None:
        add = CRITERIA_TYPES.get(kind.lower())
        if add is not None:
            add(criteria, params, i)
        i += 1
    return criteria


def series_filters(params: Params) -> Criteria:
    criteria = Criteria()
    for name, target in SERIES_FILTERS.items():
        getattr(criteria, target).extend(params.all(name))
    return criteria


def sorting(params: Params) -> tuple[Sort, str]:
    """The sort of a search and its echo (`subject-descending`)."""
    field = params.get("sortField") or "subject"
    direction = (params.get("sortDirection") or "ascending").lower()
    key = {"study": "studies", "totalnumberofstudies": "studies",
           "totalnumberofseries": "series"}.get(field.lower(), field.lower())
    if key not in SORT_FIELDS:
        raise ApiError(400, f"sortField must be one of subject, study, series, collection, "
                            f"totalNumberOfStudies, totalNumberOfSeries; not {field!r}")
    if direction not in ("ascending", "descending"):
        raise ApiError(400, f"sortDirection must be ascending or descending, not {direction!r}")
    return Sort(key, direction == "descending"), f"{field}-{direction}"


def paging(params: Params, default_size: int) -> tuple[int, int]:
    return (params.integer("start", 0, 0, MAX_INT),
            params.integer("size", default_size, 0, MAX_PAGE))


# ----- wire values ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Wire:
    """How one answer writes values: v4 writes dates MM-DD-YYYY, v1/v2 as NBIA timestamps,
    the advanced API as ISO dates."""

    version: int | None
    scope: Scope

    def date(self, iso: str | None) -> str | None:
        if not iso:
            return None
        try:
            day = dt.date.fromisoformat(iso)
        except ValueError:
            return iso
        if self.version == 4:
            return day.strftime("%m-%d-%Y")
        return f"{iso} 00:00:00.0" if self.version else iso

    def timestamp(self, iso: str | None) -> str | None:
        return self.date(iso) if self.version == 4 or not iso else f"{iso} 00:00:00.0"

    def values(self, record: dict, columns: Sequence[str]) -> list:
        return [VALUES[c](record, self) if c in VALUES else None for c in columns]


def _field(key: str) -> Callable[[dict, Wire], object]:
    return lambda r, w: r.get(key)


def _series_number(record: dict, wire: Wire):
    text = record.get("SeriesNumber")
    return int(text) if text and text.isdigit() and len(text) < 10 else text


def _field_as_text(key: str) -> Callable[[dict, Wire], object]:
    """A number NBIA writes as text: its series metadata is a table of strings, which clients
    (the Go ports of the Data Retriever) read into string fields."""
    return lambda r, w: None if r.get(key) is None else str(r[key])


def _collection_fact(fact: Callable) -> Callable[[dict, Wire], object]:
    def value(record: dict, wire: Wire):
        cid = record.get("collection_id")
        info = wire.scope.collection(cid) if cid else None
        return fact(info) if info else None
    return value


def _first_species(attribute: str) -> Callable[[dict, Wire], object]:
    return _collection_fact(lambda c: getattr(c.species[0], attribute) if c.species else None)


def _released(record: dict, wire: Wire) -> str | None:
    return wire.scope.release_date(record.get("version_min"))


_SAME_FIELD = (
    (("SeriesInstanceUID", "Series UID", "Series ID", "Series Instance UID"), "SeriesInstanceUID"),
    (("StudyInstanceUID", "Study UID", "Study Instance UID"), "StudyInstanceUID"),
    (("PatientID", "PatientId", "Subject ID", "Patient ID"), "PatientID"),
    (("Collection", "Project", "Collection Name"), "collection"),
    (("Modality",), "Modality"),
    (("BodyPartExamined", "Body Part Examined"), "BodyPartExamined"),
    (("Manufacturer",), "Manufacturer"),
    (("ManufacturerModelName", "Manufacturer Model Name"), "ManufacturerModelName"),
    (("SeriesDescription", "Series Description"), "SeriesDescription"),
    (("StudyDescription", "StudyDesc", "Study Description"), "StudyDescription"),
    (("PatientSex", "Patient Sex"), "PatientSex"),
    (("PatientAge", "Patient Age"), "PatientAge"),
    (("EthnicGroup", "Ethnic Group"), "EthnicGroup"),
    (("SOP Class UID",), "SOPClassUID"),
    (("ImageCount", "Image Count", "ObjectCount"), "image_count"),
    (("FileSize", "TotalSizeInBytes"), "size_bytes"),
    (("LicenseURI", "License URI", "License URL"), "license_url"),
    (("SeriesCount",), "series_count"),
    (("SOPInstanceUID",), "SOPInstanceUID"),
)
# Every wire column NBIA writes that the catalogue can fill, under each name NBIA gives it.
# Columns missing here (ProtocolName, SoftwareVersions, PatientName, ...) have no data.
VALUES: dict[str, Callable[[dict, Wire], object]] = {
    **{name: _field(key) for names, key in _SAME_FIELD for name in names},
    **dict.fromkeys(("SeriesDate", "Series Date"), lambda r, w: w.date(r.get("SeriesDate"))),
    **dict.fromkeys(("StudyDate", "Study Date"), lambda r, w: w.date(r.get("StudyDate"))),
    **dict.fromkeys(("DateReleased", "Date Released"), lambda r, w: w.date(_released(r, w))),
    **dict.fromkeys(("TimeStamp", "MaxSubmissionTimestamp", "Max Submission Timestamp"),
                    lambda r, w: w.timestamp(_released(r, w))),
    **dict.fromkeys(("Number of Images", "Number of images"), _field_as_text("image_count")),
    **dict.fromkeys(("File Size", "File Size (Bytes)"), _field_as_text("size_bytes")),
    "SeriesNumber": _series_number,
    "Series Number": _field("SeriesNumber"),
    **dict.fromkeys(("LicenseName", "License Name"),
                    lambda r, w: r.get("license_long_name") or r.get("license_short_name")),
    **dict.fromkeys(("CollectionURI", "Collection URI", "DataDescriptionURI",
                     "Data Description URI"), lambda r, w: doi_url(r.get("source_DOI"))),
    **dict.fromkeys(("ThirdPartyAnalysis", "Third Party Analysis", "3rd Party Analysis"),
                    lambda r, w: "YES" if r.get("analysis_result_id") else "NO"),
    "Phantom": _collection_fact(lambda c: "YES" if c.phantom else "NO"),
    **dict.fromkeys(("SpeciesCode", "Species Code"), _first_species("code")),
    **dict.fromkeys(("SpeciesDescription", "Species Description"), _first_species("description")),
    "Authorized": lambda r, w: 1,
}

SERIES_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "PatientID", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "TimeStamp", "LicenseName", "LicenseURI", "CollectionURI", "FileSize", "DateReleased",
    "StudyDesc", "StudyDate", "ThirdPartyAnalysis")
UPDATED_SERIES_COLUMNS_V4 = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "Site", "PatientID", "PatientSex", "PatientAge", "AdmittingDiagnosisDescription",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis")
PATIENT_COLUMNS = ("PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection",
                   "Phantom", "SpeciesCode", "SpeciesDescription")
STUDY_COLUMNS = ("StudyInstanceUID", "StudyDate", "StudyDescription",
                 "AdmittingDiagnosesDescription", "StudyID", "PatientAge", "PatientID",
                 "PatientName", "PatientSex", "EthnicGroup", "Collection", "SeriesCount",
                 "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent")
SERIES_METADATA_COLUMNS = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class UID", "Number of Images", "File Size", "File Location",
    "Series Number", "License Name", "License URL", "Annotation Size", "Date Released",
    "Series Date", "Protocol Name", "Body Part Examined", "Annotations Flag",
    "Manufacturer Model Name", "Software Versions", "TimeStamp")
SERIES_METADATA_CSV_V4 = (
    "Patient ID", "Patient Name", "Patient Sex", "Ethnic Group", "Phantom", "Species Code",
    "Species Description", "Study Instance UID", "Study Date", "Study Description",
    "Admitting Diagnosis Description", "Study ID", "Patient Age",
    "Longitudinal Temporal Event Type", "Longitudinal Temporal Offset From Event",
    "Series Instance UID", "Project", "Modality", "Protocol Name", "Series Date",
    "Series Description", "Body Part Examined", "Series Number", "Annotations Flag",
    "Manufacturer", "Manufacturer Model Name", "Pixel Spacing(mm)- Row", "Slice Thickness(mm)",
    "Software Versions", "Image Count", "Max Submission Timestamp", "License Name",
    "License URI", "Collection URI", "File Size", "Date Released", "Third Party Analysis",
    "Authorized")
SERIES_METADATA2_COLUMNS = (
    "Subject ID", "Study UID", "Study Description", "Study Date", "Series ID",
    "Series Description", "Number of images", "File Size (Bytes)", "Collection Name",
    "Modality", "Manufacturer", "3rd Party Analysis", "Data Description URI", "Series Number",
    "License Name", "License URL", "Date Released", "Series Date", "Protocol Name",
    "Body Part Examined", "Annotations Flag", "Manufacturer Model Name", "Software Versions",
    "TimeStamp")


# ----- rendering -----------------------------------------------------------------------------
def listing(request: Request, params: Params, scope: Scope, columns: Sequence[str],
            batches: Iterable[list[dict]]) -> Response:
    """A versioned list answer in the requested format, streamed. v4 records (lists of more
    than bare values) carry `Authorized`; no rows is a 200 with an empty body, which
    tcia_utils reads as none."""
    fmt = (params.get("format") or "json").lower()
    if fmt not in FORMATS:
        raise ApiError(400, f"Parameter format must be json, csv, xml or html, not {fmt!r}")
    wire = Wire(api_version(request), scope)
    if wire.version == 4 and len(columns) > 1:
        columns = (*columns, "Authorized")
    batches = iter(batches)
    try:
        first = next(batches, None)
    except AnswerTooLarge as exc:
        raise ApiError(400, str(exc)) from None
    if not first:
        return Response(status_code=200)
    rows = (wire.values(r, columns) for batch in itertools.chain([first], batches) for r in batch)
    render = {"json": json_chunks, "csv": csv_chunks, "xml": xml_chunks, "html": html_chunks}[fmt]
    return StreamingResponse(render(columns, rows), media_type=FORMATS[fmt])


def json_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    yield "["
    separator = ""
    while batch := list(itertools.islice(rows, 2000)):
        yield separator + ",".join(  # orjson: whole-collection lists are CPU-bound here
            orjson.dumps({c: v for c, v in zip(columns, row) if v is not None}).decode()
            for row in batch)
        separator = ","
    yield "]"


def csv_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    """NBIA's CSV: one column unquoted; several with every field quoted, `"` doubled. A lone
    column's value holding a quote, comma or line break is quoted all the same (RFC 4180), or
    it would end its row early or add rows of its own."""
    if len(columns) == 1:
        yield columns[0] + "\n"
        yield from ("" if row[0] is None else f"{_csv_cell(str(row[0]))}\n" for row in rows)
        return

    def line(values) -> str:
        return ",".join('"' + ("" if v is None else str(v)).replace('"', '""') + '"'
                        for v in values) + "\n"

    yield line(columns)
    yield from (line(row) for row in rows)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if re.search(r'[",\r\n]', text) else text


XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    """Well-formed XML: an element name cannot start with a digit ("3rd Party Analysis"), and
    characters XML 1.0 forbids (some IDC series descriptions hold \\x01) become U+FFFD."""
    tags = [re.sub(r"^(?=\d)|[^0-9A-Za-z_]", "_", c) for c in columns]
    yield '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>'
    for row in rows:
        yield "<Row>" + "".join(f"<{t}>{xml_escape(XML_ILLEGAL.sub(chr(0xFFFD), str(v)))}</{t}>"
                                for t, v in zip(tags, row) if v is not None) + "</Row>"
    yield "</Results>"


def html_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    yield ("<P ALIGN='center'><TABLE BORDER=1><TR>"
           + "".join(f"<TH>{html.escape(c)}</TH>" for c in columns) + "</TR>")
    for row in rows:
        yield "<TR>" + "".join(f"<TD>{'&nbsp;' if v is None else html.escape(str(v))}</TD>"
                               for v in row) + "</TR>"
    yield "</TABLE></P>"


def csv_answer(columns: Sequence[str], wire: Wire, records: list[dict],
               filename: str | None = None) -> Response:
    body = "".join(csv_chunks(columns, (wire.values(r, columns) for r in records)))
    headers = {"Content-Disposition": attachment(filename)} if filename else None
    return Response(body, media_type="text/csv", headers=headers)


def value_counts_json(values: Iterable[tuple[str, int]]) -> JSONResponse:
    return JSONResponse([{"criteria": v, "count": str(n)} for v, n in values])


def manifest(request: Request, series_uids: Iterable[str], include_annotation: bool) -> Response:
    """The NBIA Data Retriever's `.tcia` manifest, downloading from this server. Its lines are
    `key=value` and UIDs: a value that is not a UID (which only an archive ingested before
    ingest checked UIDs can hold) could add lines of its own, so it is left out."""
    base = str(request.base_url).rstrip("/")
    series_uids = [uid for uid in series_uids if is_uid(uid)]
    lines = [f"downloadServerUrl={base}{SERVICES}/v2/getImage",
             f"includeAnnotation={'true' if include_annotation else 'false'}",
             "noOfrRetry=4",
             f"databasketId=manifest-{int(time.time() * 1000)}.tcia",
             "manifestVersion=3.0",
             "ListOfSeriesToDownload=",
             *series_uids]
    return Response("".join(f"{line}\n" for line in lines), media_type=MANIFEST_TYPE)


def annotation_flag(params: Params, default: bool) -> bool:
    text = params.get("includeAnnotation")
    return default if text is None else text.lower() == "true"


def study_identifiers(patient: PatientResult) -> list[dict]:
    return [{"seriesIdentifiers": s.series_pks, "seriesAndModality": [],
             "studyIdentifier": stable_pk(s.study_uid)} for s in patient.studies]


def drill_down_json(studies: list[DrillDownStudy], wire: Wire,
                    study_date: Callable[[str | None], object] = epoch_millis) -> list[dict]:
    """The portal's drill-down to studies: each study with the asked-for series. The
    drill-downs date a study in epoch milliseconds, the cart in YYYY-MM-DD (the guide's
    examples)."""
    return [{"studyId": s.study_uid, "date": study_date(s.study_date),
             "description": s.description, "id": stable_pk(s.study_uid), "study_id": None,
             "excludeCommercial": None,
             "seriesList": [drill_down_series(r, wire) for r in s.series]} for s in studies]


def drill_down_series(r: dict, wire: Wire) -> dict:
    uid, study_uid = r["SeriesInstanceUID"], r["StudyInstanceUID"]
    return {
        "seriesNumber": r["SeriesNumber"], "seriesUID": uid, "numberImages": r["image_count"],
        "modality": r["Modality"], "manufacturer": r["Manufacturer"], "annotationsFlag": False,
        "annotationsSize": 0, "patientId": r["PatientID"],
        "patientPkId": str(patient_pk(r["collection_id"], r["PatientID"])),
        "studyId": study_uid, "studyPkId": stable_pk(study_uid),
        "totalSizeForAllImagesInSeries": r["size_bytes"], "project": r["collection"],
        "description": r["SeriesDescription"], "dataProvenanceSiteName": None,
        "manufacturerModelName": r["ManufacturerModelName"], "softwareVersion": None,
        "maxFrameCount": "0", "studyDate": r["StudyDate"], "studyDesc": r["StudyDescription"],
        "bodyPartExamined": r["BodyPartExamined"], "study_id": None,
        "thirdPartyAnalysis": VALUES["ThirdPartyAnalysis"](r, wire),
        "descriptionURI": doi_url(r["source_DOI"]), "sopClassUID": r["SOPClassUID"],
        "licenseName": VALUES["LicenseName"](r, wire), "licenseUrl": r["license_url"],
        "commercialRestrictions": r["commercial_restricted"], "seriesId": uid,
        "studyDateString": r["StudyDate"] or "", "seriesPkId": r["series_pk"],
        "exactSize": r["size_bytes"]}


SERIES_PK = re.compile(r"\d{1,19}")  # decimal digits int() reads, and at most 64 bits


def series_pks(params: Params) -> list[int]:
    values = params.required_items()
    if not all(SERIES_PK.fullmatch(v) for v in values):
        raise ApiError(400, "Parameter list must hold series ids (whole numbers)")
    return [int(v) for v in values]


# ----- advanced API: values and counts -------------------------------------------------------
COUNT_PARAMETERS = ("Collection", "Modality", "BodyPartExamined", *CRITERIA_PARAMETERS)


def _counted(column: str) -> Callable:
    def counts(scope: CallerScope, search: Search,
               params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
        return value_counts_json(search.value_counts(scope, column, search_criteria(params)))
    counts.__doc__ = (f"{column} values with the number of patients having each\n"
                      f"Optional filters: Collection, Modality, BodyPartExamined, or "
                      f"simple-search criteria.")
    return counts


for _name, _column in (("getBodyPartValuesAndCounts", "BodyPartExamined"),
                       ("getModalityValuesAndCounts", "Modality"),
                       ("getCollectionValuesAndCounts", "Collection"),
                       ("getManufacturerValuesAndCounts", "Manufacturer")):
    serve(_name, *ADVANCED)(_counted(_column))


@serve("getSpeciesValuesAndCounts", *ADVANCED)
def species_values_and_counts(scope: CallerScope, search: Search,
                              params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
    """Species codes with the number of patients of each"""
    return value_counts_json((s.code, n) for s, n in
                             search.species_counts(scope, search_criteria(params)))


@serve("getSimpleSearchCriteriaValues", *ADVANCED)
def simple_search_criteria_values(scope: CallerScope, search: Search,
                                  params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
    """Every simple-search facet (collections, species, modalities, sites, manufacturers)
    with patient counts, for the given criteria"""
    criteria = search_criteria(params)
    groups = [("Collections", search.value_counts(scope, "Collection", criteria)),
              ("Species", [(s.name, n) for s, n in search.species_counts(scope, criteria)]),
              ("Image Modality", search.value_counts(scope, "Modality", criteria)),
              ("Anatomical Site", search.value_counts(scope, "BodyPartExamined", criteria)),
              ("Manufacturer", search.value_counts(scope, "Manufacturer", criteria))]
    return JSONResponse([{"criteria": name, "values": [{"criteria": v, "count": str(n)}
                                                       for v, n in counts]}
                         for name, counts in groups])


# ----- advanced API: collections, licenses, species ------------------------------------------
@serve("getCollectionDescriptions", *ADVANCED)
def collection_descriptions(scope: CallerScope,
                            params: Params = Depends(taking("collectionName"))) -> Response:
    """Collection descriptions (HTML) with their DOI and license
    A collection without a description has "" (tcia_utils strips HTML from every one)."""
    name = params.get("collectionName")
    chosen = [c for c in scope.visible_collections()
              if name is None or normalise_collection_id(name) == c.collection_id]
    return JSONResponse([{
        "description": f"<p>{html.escape(c.description)}</p>" if c.description else "",
        "id": stable_pk(c.collection_id),
        "collectionDescTimestamp": epoch_millis(c.date_updated),
        "collectionName": c.name, "userName": None,
        "licenseId": stable_pk(c.license_short_name) if c.license_short_name else None,
        "descriptionURI": doi_url(c.doi)} for c in sorted(chosen, key=lambda c: c.name)])


@serve("getLicenses", *ADVANCED)
def licenses(scope: CallerScope) -> Response:
    """The data licenses of the collections. A short name is described as most collections
    describe it: IDC's catalogue has a collection whose "CC BY-NC 3.0" says CC BY 3.0."""
    described: dict[str, Counter] = defaultdict(Counter)
    for c in scope.visible_collections():
        if c.license_short_name:
            described[c.license_short_name][(c.license_long_name, c.license_url)] += 1
    out = []
    for short in sorted(described):
        (long_name, url), _ = described[short].most_common(1)[0]
        commercial = "NO" if "NC" in short.upper() else "YES"
        text = url or long_name
        license_id = stable_pk(short)
        out.append({"longName": long_name, "id": license_id, "shortName": short,
                    "licenseURL": url, "licenseText": text, "commercialUse": commercial,
                    "license": {"id": license_id, "longName": long_name, "shortName": short,
                                "url": url, "commercialUse": commercial, "licenseText": text}})
    return JSONResponse(out)


@serve("getSpeciesTax", *ADVANCED)
def species_taxonomy(scope: CallerScope) -> Response:
    """The species of the collections, as codes with their description"""
    species = {s.code: s for c in scope.visible_collections() for s in c.species}
    return JSONResponse([{"speciesCode": s.code, "speciesDescription": s.description}
                         for _, s in sorted(species.items())])


DOI_PARAMETERS = ("DOI", "CollectionOrSeries")


@serve("getCollectionOrSeriesForDOI", *ADVANCED)
def collection_or_series_for_doi(scope: CallerScope, search: Search,
                                 params: Params = Depends(taking(*DOI_PARAMETERS))) -> Response:
    """The collections (or, with CollectionOrSeries=series, the series) of a DOI
    `thirdPartyAnanlysis` (sic) is YES for analysis results."""
    rows = search.series_for_doi(scope, params.required("DOI"))
    per_series = (params.get("CollectionOrSeries") or "").lower() == "series"
    answers = dict.fromkeys((r["collection"], r["SeriesInstanceUID"] if per_series else None,
                             "YES" if r["third_party"] else None) for r in rows)
    return JSONResponse([{"collection": c, "seriesInstanceUID": s, "thirdPartyAnanlysis": t}
                         for c, s, t in answers])


@serve("getManufacturerTree", *ADVANCED)
def manufacturer_tree(scope: CallerScope, search: Search) -> Response:
    """Manufacturers and their models as a tree
    The catalogue keeps no software versions, so model nodes have no children."""
    tree: dict[str, list[str]] = {}
    for maker, model in search.manufacturer_models(scope):
        tree.setdefault(maker, []).extend([model] if model else [])

    def node(criteria: str, value: str, children: list) -> dict:
        return {"data": {"criteria": criteria, "value": value}, "children": children}

    return JSONResponse(node("root", "All Manufactures", [
        node("Manufacturer", maker, [node("Model", m, []) for m in models])
        for maker, models in tree.items()]))


# ----- advanced API: the simple search and text search ---------------------------------------
@serve("getSimpleSearchWithModalityAndBodyPartPaged", *ADVANCED)
@serve("getSimpleSearch", "v4")
def simple_search(scope: CallerScope, search: Search,
                  params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """One page of the patients matching simple-search criteria, with facet counts
    Criteria: criteriaType{i} with value{i} (or fromDate{i}/toDate{i}, eventType{i}/fromDay{i}/
    toDay{i}); sortField, sortDirection, start (offset), size."""
    criteria = search_criteria(params)
    sort, sort_echo = sorting(params)
    start, size = paging(params, 10)
    page: SearchPage = search.search(scope, criteria, sort, start, size)
    return JSONResponse({
        "resultSet": [{
            "subjectId": p.patient_id, "project": p.collection, "id": p.pk,
            "modalities": p.modalities, "bodyParts": p.body_parts,
            "species": [s.code for s in p.species], "timepoints": {},
            "totalNumberOfStudies": p.total_studies, "totalNumberOfSeries": p.total_series,
            "studyIdentifiers": study_identifiers(p)} for p in page.patients],
        "totalPatients": page.total_patients,
        "bodyParts": [{"value": v, "count": n} for v, n in page.body_parts],
        "modalities": [{"value": v, "count": n} for v, n in page.modalities],
        "collections": [{"value": v, "count": n} for v, n in page.collections],
        "species": [{"value": s.code, "count": n} for s, n in page.species],
        "maxTimepoints": {}, "minTimepoints": {},
        "sort": sort_echo})


@serve("getManifestForSimpleSearch", *ADVANCED, heavy=True)
def manifest_for_simple_search(request: Request, scope: CallerScope, search: Search,
                               params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """The manifest of the series of one page of a simple search (size defaults to all)"""
    uids, _ = search.page_series(scope, search_criteria(params), sorting(params)[0],
                                 *paging(params, MAX_PAGE))
    return manifest(request, uids, include_annotation=False)


@serve("getRestrictionsForSimpleSearch", *ADVANCED)
def restrictions_for_simple_search(
        scope: CallerScope, search: Search,
        params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """Yes if a series of the simple search's page is under a non-commercial license"""
    _, restricted = search.page_series(scope, search_criteria(params), sorting(params)[0],
                                       *paging(params, MAX_PAGE))
    return PlainTextResponse("Yes" if restricted else "No")


def _text(params: Params) -> str:
    text = params.required("textValue")
    if len(text) > 256:
        raise ApiError(400, "Parameter textValue is longer than 256 characters")
    return text


@serve("getTextSearch", *ADVANCED)
def text_search(scope: CallerScope, search: Search,
                params: Params = Depends(taking("textValue"))) -> Response:
    """Patients with a series whose descriptions, manufacturer, modality, body part or
    identifiers hold the words of textValue, with the first hit highlighted"""
    patients, _ = search.text_search(scope, _text(params))
    return JSONResponse([{
        "subjectId": p.patient_id, "project": p.collection, "id": p.pk,
        "totalNumberOfStudies": p.total_studies, "totalNumberOfSeries": p.total_series,
        "hit": p.hit, "studyIdentifiers": study_identifiers(p)} for p in patients])


@serve("GetManifestForTextSearch", *ADVANCED, heavy=True)
@serve("getManifestForTextSearch", *ADVANCED, heavy=True)
def manifest_for_text_search(request: Request, scope: CallerScope, search: Search,
                             params: Params = Depends(taking("textValue"))) -> Response:
    """The manifest of the series a text search finds"""
    _, uids = search.text_search(scope, _text(params))
    return manifest(request, uids, include_annotation=False)


# ----- advanced API: drill-downs, manifests, carts -------------------------------------------
@serve("getStudyDrillDown", *ADVANCED)
def study_drill_down(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list"))) -> Response:
    """Studies and series of the given series ids (`list`, repeated)"""
    studies = search.drill_down(scope, Criteria(series_pks=series_pks(params)))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope)))


@serve("getStudyDrillDownWithSeriesIds", *ADVANCED)
def study_drill_down_with_series_uids(request: Request, scope: CallerScope, search: Search,
                                      params: Params = Depends(taking("list"))) -> Response:
    """Studies and series of the given SeriesInstanceUIDs (`list`, repeated)"""
    studies = search.drill_down(scope, Criteria(series_uids=params.required_items()))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope)))


@serve("getImageDrillDown", *ADVANCED)
def image_drill_down(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list"))) -> Response:
    """The stored images of the given series ids, with what a WADO request needs
    fileURI is this server's getSingleImage URL for the image, never a file path."""
    base = f"{str(request.base_url).rstrip('/')}{SERVICES}/v4/getSingleImage"
    return JSONResponse([{
        "imagePkId": stable_pk(i.sop_instance_uid), "contentDate": None, "contentTime": None,
        "seriesPkId": i.series_pk, "instanceNumber": i.instance_number,
        "sopInstanceUid": i.sop_instance_uid, "seriesInstanceUid": i.series_instance_uid,
        "studyInstanceUid": i.study_instance_uid, "size": i.size,
        "fileURI": f"{base}?SeriesInstanceUID={i.series_instance_uid}"
                   f"&SOPInstanceUID={i.sop_instance_uid}",
        "project": i.collection, "siteName": None, "frameNum": 0}
        for i in search.images(scope, Criteria(series_pks=series_pks(params)))])


@serve("getManifestTextV2", *ADVANCED)
@serve("getManifestText", *ADVANCED)
def manifest_text(request: Request, scope: CallerScope, search: Search,
                  params: Params = Depends(taking("list", "includeAnnotation"))) -> Response:
    """The manifest of the given SeriesInstanceUIDs the caller may see"""
    uids = search.visible_series_uids(scope, params.required_items())
    return manifest(request, uids, annotation_flag(params, default=False))


LEVEL_PARAMETERS = ("patientIDs", "studyUIDs", "seriesUIDs", "anyOrAll", "includeAnnotation")


@serve("getManifestFromPatientStudySeries", *ADVANCED)
def manifest_from_patient_study_series(
        request: Request, scope: CallerScope, search: Search,
        params: Params = Depends(taking(*LEVEL_PARAMETERS))) -> Response:
    """The manifest of the series under comma-separated patientIDs, studyUIDs, seriesUIDs
    anyOrAll=all keeps only series under every list given (default: any)."""
    levels = [params.items(n) for n in ("patientIDs", "studyUIDs", "seriesUIDs")]
    if not any(levels):
        raise ApiError(400, "A parameter, patientIDs, studyUIDs or seriesUIDs, is required for "
                            "this API call.")
    match_all = (params.get("anyOrAll") or "any").lower() == "all"
    patients, studies, series = levels
    uids = search.series_for_levels(scope, patients, studies, series, match_all=match_all)
    return manifest(request, uids, annotation_flag(params, default=True))


@serve("getSeriesMetadata2", *ADVANCED)
def series_metadata2(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list"))) -> Response:
    """Metadata of the given series (comma-separated `list`) as CSV"""
    records = search.series(scope, Criteria(series_uids=params.required_items()))
    return csv_answer(SERIES_METADATA2_COLUMNS, Wire(api_version(request), scope), records)


SHARED_LIST_PARAMETERS = ("list", "name", "description", "url")


@serve("createSharedList", *ADVANCED)
def create_shared_list(request: Request, user: Caller, scope: CallerScope, search: Search,
                       params: Params = Depends(taking(*SHARED_LIST_PARAMETERS))) -> Response:
    """Save a cart: the series in `list` (repeated) under a unique `name`"""
    commons_of(request).accounts.create_shared_list(
        user, params.required("name"), params.get("description"), params.get("url"),
        params.required_items(), visible=lambda uids: search.visible_series_uids(scope, uids))
    return PlainTextResponse("List created")


def shared_list_uids(request: Request, name: str) -> list[str] | None:
    """A saved cart's series; portal cart URLs name it `nbia-<name>`."""
    accounts = commons_of(request).accounts
    for candidate in dict.fromkeys((name, name.removeprefix("nbia-"))):
        shared = accounts.get_shared_list(candidate)
        if shared is not None:
            return shared.series_uids
    return None


@serve("getCartData", *ADVANCED)
def cart_data(request: Request, scope: CallerScope, search: Search,
              params: Params = Depends(taking("list"))) -> Response:
    """Studies and series of saved carts (`list` = cart name; series ids are read too)"""
    uids, pks = [], []
    for value in params.required_items():
        saved = shared_list_uids(request, value)
        if saved is not None:
            uids += saved
        elif SERIES_PK.fullmatch(value):
            pks.append(int(value))
    if pks:
        uids += [r["SeriesInstanceUID"] for r in search.series(scope, Criteria(series_pks=pks))]
    if not uids:
        return JSONResponse([])
    studies = search.drill_down(scope, Criteria(series_uids=uids))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope),
                                        study_date=lambda iso: iso))


# ----- versioned public API ------------------------------------------------------------------
def _values_route(name: str, column: str, filters: tuple[str, ...]) -> None:
    read = taking(*filters)
    record_key = "collection" if column == "Collection" else column

    def values(request: Request, scope: CallerScope, search: Search,
               params: Params = Depends(read)) -> Response:
        rows = [{record_key: v} for v in search.values(scope, column, series_filters(params))]
        return listing(request, params, scope, (column,), [rows])

    values.__doc__ = f"Distinct {column} values"
    serve(name, *VERSIONED)(values)


_values_route("getCollectionValues", "Collection", ())
_values_route("getModalityValues", "Modality", ("Collection", "BodyPartExamined"))
_values_route("getBodyPartValues", "BodyPartExamined", ("Collection", "Modality"))
_values_route("getManufacturerValues", "Manufacturer",
              ("Collection", "Modality", "BodyPartExamined"))

SERIES_PARAMETERS = tuple(SERIES_FILTERS)


@serve("getSeries", *VERSIONED, heavy=True)
def series(request: Request, scope: CallerScope, search: Search,
           params: Params = Depends(taking(*SERIES_PARAMETERS))) -> Response:
    """Series, filtered by any of Collection, PatientID, StudyInstanceUID, SeriesInstanceUID,
    Modality, BodyPartExamined, Manufacturer, ManufacturerModelName"""
    return listing(request, params, scope, SERIES_COLUMNS,
                   search.iter_series(scope, series_filters(params), max_list_rows(request)))


@serve("getUpdatedSeries", *VERSIONED, heavy=True)
def updated_series(request: Request, scope: CallerScope, search: Search,
                   params: Params = Depends(taking("fromDate"))) -> Response:
    """Series released or revised on or after fromDate (v4: MM-DD-YYYY; v1/v2: dd/MM/yyyy)"""
    since = version_date(params, "fromDate")
    columns = UPDATED_SERIES_COLUMNS_V4 if api_version(request) == 4 else SERIES_COLUMNS
    return listing(request, params, scope, columns,
                   search.iter_series(scope, Criteria(released_since=since),
                                      max_list_rows(request)))


@serve("getContentsByName", *VERSIONED, heavy=True)
def contents_by_name(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("name"))) -> Response:
    """The series of a saved cart"""
    uids = shared_list_uids(request, params.required("name"))
    batches = (search.iter_series(scope, Criteria(series_uids=uids), max_list_rows(request))
               if uids else [])
    return listing(request, params, scope, SERIES_COLUMNS, batches)


@serve("getPatient", *VERSIONED, heavy=True)
def patients(request: Request, scope: CallerScope, search: Search,
             params: Params = Depends(taking("Collection", "PatientId"))) -> Response:
    """Patients, optionally of one Collection (and one PatientId)"""
    criteria = Criteria(collections=params.all("Collection"), patients=params.all("PatientId"))
    return listing(request, params, scope, PATIENT_COLUMNS, [search.patients(scope, criteria)])


@serve("getPatientByCollectionAndModality", *VERSIONED)
def patients_by_collection_and_modality(
        request: Request, scope: CallerScope, search: Search,
        params: Params = Depends(taking("Collection", "Modality"))) -> Response:
    """PatientIds of a Collection with a series of a Modality"""
    criteria = Criteria(collections=[params.required("Collection")],
                        modalities=[params.required("Modality")])
    return listing(request, params, scope, ("PatientId",), [search.patients(scope, criteria)])


NEW_PATIENT_PARAMETERS = ("Collection", "Date", "fromDate")


@serve("NewPatientsInCollection", *VERSIONED, heavy=True)
def new_patients(request: Request, scope: CallerScope, search: Search,
                 params: Params = Depends(taking(*NEW_PATIENT_PARAMETERS))) -> Response:
    """Patients of a Collection with a series released on or after Date
    The date may also come as fromDate, which tcia_utils sends."""
    criteria = Criteria(collections=[params.required("Collection")],
                        released_since=version_date(params, "Date", "fromDate"))
    return listing(request, params, scope, PATIENT_COLUMNS, [search.patients(scope, criteria)])


STUDY_PARAMETERS = ("Collection", "PatientID", "StudyInstanceUID")


@serve("getPatientStudy", *VERSIONED, heavy=True)
def patient_studies(request: Request, scope: CallerScope, search: Search,
                    params: Params = Depends(taking(*STUDY_PARAMETERS))) -> Response:
    """Studies, filtered by any of Collection, PatientID, StudyInstanceUID"""
    return listing(request, params, scope, STUDY_COLUMNS,
                   [search.studies(scope, series_filters(params))])


NEW_STUDY_PARAMETERS = ("Collection", "PatientID", "Date", "fromDate")


@serve("NewStudiesInPatientCollection", *VERSIONED, heavy=True)
def new_studies(request: Request, scope: CallerScope, search: Search,
                params: Params = Depends(taking(*NEW_STUDY_PARAMETERS))) -> Response:
    """Studies of a Collection (and PatientID) with a series released on or after Date"""
    criteria = Criteria(collections=[params.required("Collection")],
                        patients=params.all("PatientID"),
                        released_since=version_date(params, "Date", "fromDate"))
    return listing(request, params, scope, STUDY_COLUMNS, [search.studies(scope, criteria)])


def _one_series(params: Params) -> Criteria:
    return Criteria(series_uids=[params.required("SeriesInstanceUID")])


@serve("getSeriesSize", *VERSIONED)
def series_size(request: Request, scope: CallerScope, search: Search,
                params: Params = Depends(taking("SeriesInstanceUID"))) -> Response:
    """Total size in bytes and number of objects of a series"""
    return listing(request, params, scope, ("TotalSizeInBytes", "ObjectCount"),
                   [search.series(scope, _one_series(params))])


@serve("getSOPInstanceUIDs", *VERSIONED)
def sop_instance_uids(request: Request, scope: CallerScope, search: Search,
                      params: Params = Depends(taking("SeriesInstanceUID"))) -> Response:
    """The SOPInstanceUIDs of a series' stored images
    Series the catalogue knows only at series level (the IDC import) list none."""
    rows = [{"SOPInstanceUID": i.sop_instance_uid}
            for i in search.images(scope, _one_series(params))]
    return listing(request, params, scope, ("SOPInstanceUID",), [rows])


@serve("getSeriesMetaData", *VERSIONED)
def series_metadata(request: Request, scope: CallerScope, search: Search,
                    params: Params = Depends(taking("SeriesInstanceUID"))) -> Response:
    """Metadata of one series (File Location is never given)"""
    return listing(request, params, scope, SERIES_METADATA_COLUMNS,
                   [search.series(scope, _one_series(params))])


@serve("getSeriesMetadata", "v4", methods=("POST",))
def series_metadata_v4(request: Request, scope: CallerScope, search: Search,
                       params: Params = Depends(taking("list"))) -> Response:
    """Metadata of the given series (`list`, comma-separated or repeated) as a CSV download"""
    records = search.series(scope, Criteria(series_uids=params.required_items()))
    if not records:
        return Response(status_code=200)
    return csv_answer(SERIES_METADATA_CSV_V4, Wire(4, scope), records, "SeriesMetaData.csv")
