"""The IDC API's OpenAPI description: its answers and request bodies as pydantic models (IDC's
wire names), and its query parameters. Handlers read the raw request (strictly, with IDC's
own refusals) and write their bodies themselves, so these describe, and validate nothing."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ...config import Archive
from .params import DEFAULT_PAGE_SIZE, MANIFEST_SELECTORS

FilterValue = str | int | float


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Envelope(BaseModel):
    code: int = Field(description="The HTTP status")


class ErrorAnswer(Envelope):
    message: str
    not_found: list[str] = Field(description="The unknown names or ids the request held")


class PendingAnswer(Envelope):
    """202: the query outlived the deadline; send the token again for the same page."""

    message: str
    next_page: str


class AboutAnswer(Envelope):
    message: str
    documentation: str


class DataSourceModel(BaseModel):
    name: str = Field(examples=["dicom_pivot", "clinical.tcga_clinical"])
    data_type: str


class ProgramModel(BaseModel):
    short_name: str
    name: str
    description: str | None


class VersionModel(BaseModel):
    idc_data_version: str = Field(examples=["25.0"])
    date_active: str
    active: bool
    data_sources: list[DataSourceModel]
    programs: list[ProgramModel]


class VersionsAnswer(Envelope):
    idc_data_versions: list[VersionModel]
    versions: list[VersionModel]


class CollectionModel(BaseModel):
    collection_id: str
    cancer_type: str | None
    date_updated: str | None
    description: str | None
    doi: str | None
    image_types: str | None
    location: str | None
    species: str | None
    subject_count: int | None
    supporting_data: str | None
    active: bool
    idc_data_versions: list[str]


class CollectionsAnswer(Envelope):
    collections: list[CollectionModel]


class AnalysisResultModel(BaseModel):
    active: bool
    analysis_result_id: str
    analysisArtifacts: str | None
    cancer_type: str | None
    collections: str | None
    date_updated: str | None
    description: str | None
    doi: str | None
    location: str | None
    subject_count: int | None
    title: str | None
    idc_data_versions: list[str]


class AnalysisResultsAnswer(Envelope):
    analysisResults: list[AnalysisResultModel]


class AttributeModel(BaseModel):
    name: str
    data_type: str
    units: str | None
    idc_data_version: str


class SourceAttributesModel(BaseModel):
    name: str
    attributes: list[AttributeModel]


class AttributesAnswer(Envelope):
    idc_data_version: str
    data_sources: list[SourceAttributesModel]


class ExtraDataModel(BaseModel):
    id: str
    email: str | None
    verified_email: bool
    name: str
    given_name: str | None
    family_name: str | None
    picture: str | None
    locale: str | None
    hd: str | None


class AccountDetailsModel(BaseModel):
    id: str
    username: str
    email: str | None
    date_joined: str
    last_login: str | None
    first_name: str | None
    last_name: str | None
    extra_data: ExtraDataModel


class AccountAnswer(Envelope):
    account_details: AccountDetailsModel
    user_details: AccountDetailsModel


class FilterSetModel(Strict):
    filters: dict[str, list[FilterValue] | FilterValue] = Field(
        description="Attribute name -> values: OR within an attribute, AND across",
        examples=[{"collection_id": ["tcga_luad"], "Modality": ["CT"]}])
    idc_data_version: str | None = Field(None, examples=["25.0"])


class CohortModel(BaseModel):
    cohort_id: int
    name: str
    description: str
    owner: str
    filterSet: FilterSetModel
    permission: str | None = None


class CohortsAnswer(Envelope):
    cohorts: list[CohortModel]


class CohortPropertiesModel(BaseModel):
    cohort_id: int
    name: str
    description: str
    filterSet: FilterSetModel


class CohortCreatedAnswer(Envelope, CohortPropertiesModel):
    cohort_properties: CohortPropertiesModel


class DeletionModel(BaseModel):
    cohort_id: int
    result: str


class DeletedAnswer(Envelope):
    cohorts: list[DeletionModel]


class CohortEchoModel(BaseModel):
    """What a first page tells of its request (a continuation carries an empty object)."""

    cohort_id: int | None = None
    name: str | None = None
    description: str | None = None
    filterSet: FilterSetModel | None = None
    filters: dict[str, Any] | None = None
    sql: str | None = Field(None, description="The SQL that ran, when sql=true")


class ManifestRowsModel(BaseModel):
    json_manifest: list[dict[str, Any]]
    rowsReturned: int
    totalFound: int


class ManifestPageAnswer(Envelope):
    cohort: CohortEchoModel
    manifest: ManifestRowsModel
    next_page: str | None


class QueryRowsModel(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    rows: list[dict[str, Any]] = Field(alias="json")
    rowsReturned: int
    totalFound: int


class QueryPageAnswer(Envelope):
    cohort_def: CohortEchoModel | None = Field(None, description="On a first page")
    cohort: CohortEchoModel | None = Field(None, description="On a later page")
    query_results: QueryRowsModel
    next_page: str | None


class CohortDefinition(Strict):
    """A cohort definition: its filters, as `filters` or in `filterSet` (with the version)."""

    name: str
    description: str = ""
    filters: dict[str, list[FilterValue] | FilterValue] | None = None
    filterSet: FilterSetModel | None = None


class QueryFieldsModel(Strict):
    fields: list[str]


class CohortQueryBody(Strict):
    fields: list[str] | None = Field(None, examples=[["Modality", "SeriesInstanceUID"]])
    queryFields: QueryFieldsModel | None = None


class PreviewQueryBody(CohortQueryBody):
    cohort_def: CohortDefinition


class CohortIdsBody(Strict):
    cohorts: list[int | str] = Field(description="Cohort ids")


# ----- how operations are described ------------------------------------------------------
def answers(model: type[BaseModel], *refusals: int, pending: bool = False) -> dict:
    """The `responses` of an operation: its JSON answer, a 202 where it pages, its refusals."""
    out: dict[int | str, dict[str, Any]] = {200: {"model": model}}
    if pending:
        out[202] = {"model": PendingAnswer}
    for status in (400, *refusals):
        out[status] = {"model": ErrorAnswer}
    return out


def query(name: str, schema: dict, description: str, required: bool = False) -> dict:
    return {"name": name, "in": "query", "required": required, "schema": schema,
            "description": description}


PAGE_SIZE = query("page_size", {"type": "integer", "minimum": 1,
                                "maximum": Archive.max_page_size, "default": DEFAULT_PAGE_SIZE},
                  "Rows per page, at most the server's IMAGING_COMMONS_MAX_PAGE_SIZE")


def with_page_size_limit(schema: dict, max_page_size: int) -> dict:
    """An OpenAPI document whose page_size parameters give this server's largest page (the
    declarations above hold the default); the declarations themselves are left untouched."""
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            operation["parameters"] = [
                {**p, "schema": {**p["schema"], "maximum": max_page_size}}
                if p.get("name") == "page_size" else p
                for p in operation.get("parameters", [])]
    return schema


NEXT_PAGE = query("next_page", {"type": "string"},
                  "The token of a previous page or 202: every other parameter is then ignored")
NEXT_PAGE_REQUIRED = {**NEXT_PAGE, "required": True,
                      "description": "The token of a previous page or 202"}
SQL = query("sql", {"type": "boolean", "default": False}, "Echo the SQL that ran")
FIELDS = {**query("fields", {"type": "array", "items": {"type": "string"}},
                  "Attributes to return (or in the body)"), "style": "form", "explode": True}
DATA_VERSION = query("idc_data_version", {"type": "string", "examples": ["25.0"]},
                     "A data version (the active one when none is given)")
DATA_SOURCE = query("data_source", {"type": "string", "examples": ["dicom_pivot"]},
                    "Only the attributes of this data source")
SELECTORS = [query(name, {"type": "boolean", "default": False},
                   f"Include the {name} column") for name in MANIFEST_SELECTORS]


def _inline(schema: Any, defs: dict) -> Any:
    """A JSON schema with its local references replaced by what they name (the models here
    hold no cycles)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    return schema


def documented(*params: dict, body: type[BaseModel] | None = None,
               body_required: bool = True) -> dict:
    """An operation's `openapi_extra`: its query parameters and its JSON body."""
    extra: dict[str, Any] = {}
    if params:
        extra["parameters"] = list(params)
    if body is not None:
        schema = body.model_json_schema(by_alias=True)
        extra["requestBody"] = {"required": body_required, "content": {
            "application/json": {"schema": _inline(schema, schema.get("$defs", {}))}}}
    return extra
