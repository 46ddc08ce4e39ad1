"""The versioned public API (services/v1, v2 and v4/...) that tcia_utils calls: value lists,
series, patients and studies as list answers (JSON, CSV, XML or HTML), series sizes and
metadata."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.responses import Response

from ...core.search import Criteria
from .columns import (
    PATIENT_COLUMNS,
    SERIES_COLUMNS,
    SERIES_METADATA_COLUMNS,
    SERIES_METADATA_CSV_V4,
    STUDY_COLUMNS,
    UPDATED_SERIES_COLUMNS_V4,
    Wire,
    value_record,
)
from .criteria import SERIES_FILTERS, series_filters
from .dates import version_date
from .formats import csv_answer, listing
from .lists import shared_list_uids
from .models import list_answer
from .params import CallerScope, Params, Search, api_version, max_list_rows, taking
from .routing import VERSIONED, serve

AUTHORIZED = ("Authorized",)  # (v4 adds it to records of more than one column)
SERIES_UID = ("SeriesInstanceUID",)
SERIES_ANSWER = list_answer("Series", SERIES_COLUMNS + AUTHORIZED)
PATIENT_ANSWER = list_answer("Patient", PATIENT_COLUMNS + AUTHORIZED)
STUDY_ANSWER = list_answer("Study", STUDY_COLUMNS + AUTHORIZED)


def _values_route(name: str, column: str, filters: tuple[str, ...]) -> None:
    read = taking(*filters)

    def values(request: Request, scope: CallerScope, search: Search,
               params: Params = Depends(read)) -> Response:
        rows = [value_record(column, v)
                for v in search.values(scope, column, series_filters(params))]
        return listing(request, params, scope, (column,), [rows])

    values.__doc__ = f"Distinct {column} values"
    serve(name, *VERSIONED, answers=list_answer(f"{column}Value", (column,)))(values)


_values_route("getCollectionValues", "Collection", ())
_values_route("getModalityValues", "Modality", ("Collection", "BodyPartExamined"))
_values_route("getBodyPartValues", "BodyPartExamined", ("Collection", "Modality"))
_values_route("getManufacturerValues", "Manufacturer",
              ("Collection", "Modality", "BodyPartExamined"))

SERIES_PARAMETERS = tuple(SERIES_FILTERS)


@serve("getSeries", *VERSIONED, heavy=True,
       answers=SERIES_ANSWER)
def series(request: Request, scope: CallerScope, search: Search,
           params: Params = Depends(taking(*SERIES_PARAMETERS))) -> Response:
    """Series, filtered by any of Collection, PatientID, StudyInstanceUID, SeriesInstanceUID,
    Modality, BodyPartExamined, Manufacturer, ManufacturerModelName"""
    return listing(request, params, scope, SERIES_COLUMNS,
                   search.iter_series(scope, series_filters(params), max_list_rows(request)))


@serve("getUpdatedSeries", *VERSIONED, heavy=True,
       answers=list_answer("UpdatedSeries", tuple(dict.fromkeys(
           UPDATED_SERIES_COLUMNS_V4 + SERIES_COLUMNS + AUTHORIZED))))
def updated_series(request: Request, scope: CallerScope, search: Search,
                   params: Params = Depends(taking("fromDate", required=("fromDate",)))
                   ) -> Response:
    """Series released or revised on or after fromDate (v4: MM-DD-YYYY; v1/v2: dd/MM/yyyy)"""
    since = version_date(params, "fromDate")
    columns = UPDATED_SERIES_COLUMNS_V4 if api_version(request) == 4 else SERIES_COLUMNS
    return listing(request, params, scope, columns,
                   search.iter_series(scope, Criteria(released_since=since),
                                      max_list_rows(request)))


@serve("getContentsByName", *VERSIONED, heavy=True,
       answers=SERIES_ANSWER)
def contents_by_name(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("name", required=("name",)))) -> Response:
    """The series of a saved cart"""
    uids = shared_list_uids(request, params.required("name"))
    batches = (search.iter_series(scope, Criteria(series_uids=uids), max_list_rows(request))
               if uids else [])
    return listing(request, params, scope, SERIES_COLUMNS, batches)


@serve("getPatient", *VERSIONED, heavy=True,
       answers=PATIENT_ANSWER)
def patients(request: Request, scope: CallerScope, search: Search,
             params: Params = Depends(taking("Collection", "PatientId"))) -> Response:
    """Patients, optionally of one Collection (and one PatientId)"""
    criteria = Criteria(collections=params.all("Collection"), patients=params.all("PatientId"))
    return listing(request, params, scope, PATIENT_COLUMNS, [search.patients(scope, criteria)])


@serve("getPatientByCollectionAndModality", *VERSIONED,
       answers=list_answer("PatientIdValue", ("PatientId",)))
def patients_by_collection_and_modality(
        request: Request, scope: CallerScope, search: Search,
        params: Params = Depends(taking("Collection", "Modality",
                                              required=("Collection", "Modality")))) -> Response:
    """PatientIds of a Collection with a series of a Modality"""
    criteria = Criteria(collections=[params.required("Collection")],
                        modalities=[params.required("Modality")])
    return listing(request, params, scope, ("PatientId",), [search.patients(scope, criteria)])


NEW_PATIENT_PARAMETERS = ("Collection", "Date", "fromDate")


@serve("NewPatientsInCollection", *VERSIONED, heavy=True,
       answers=PATIENT_ANSWER)
def new_patients(request: Request, scope: CallerScope, search: Search,
                 params: Params = Depends(taking(*NEW_PATIENT_PARAMETERS,
                                                     required=("Collection",)))) -> Response:
    """Patients of a Collection with a series released on or after Date
    The date may also come as fromDate, which tcia_utils sends."""
    criteria = Criteria(collections=[params.required("Collection")],
                        released_since=version_date(params, "Date", "fromDate"))
    return listing(request, params, scope, PATIENT_COLUMNS, [search.patients(scope, criteria)])


STUDY_PARAMETERS = ("Collection", "PatientID", "StudyInstanceUID")


@serve("getPatientStudy", *VERSIONED, heavy=True,
       answers=STUDY_ANSWER)
def patient_studies(request: Request, scope: CallerScope, search: Search,
                    params: Params = Depends(taking(*STUDY_PARAMETERS))) -> Response:
    """Studies, filtered by any of Collection, PatientID, StudyInstanceUID"""
    return listing(request, params, scope, STUDY_COLUMNS,
                   [search.studies(scope, series_filters(params))])


NEW_STUDY_PARAMETERS = ("Collection", "PatientID", "Date", "fromDate")


@serve("NewStudiesInPatientCollection", *VERSIONED, heavy=True,
       answers=STUDY_ANSWER)
def new_studies(request: Request, scope: CallerScope, search: Search,
                params: Params = Depends(taking(*NEW_STUDY_PARAMETERS,
                                                    required=("Collection",)))) -> Response:
    """Studies of a Collection (and PatientID) with a series released on or after Date"""
    criteria = Criteria(collections=[params.required("Collection")],
                        patients=params.all("PatientID"),
                        released_since=version_date(params, "Date", "fromDate"))
    return listing(request, params, scope, STUDY_COLUMNS, [search.studies(scope, criteria)])


def _one_series(params: Params) -> Criteria:
    return Criteria(series_uids=[params.required("SeriesInstanceUID")])


@serve("getSeriesSize", *VERSIONED,
       answers=list_answer("SeriesSize", ("TotalSizeInBytes", "ObjectCount") + AUTHORIZED))
def series_size(request: Request, scope: CallerScope, search: Search,
                params: Params = Depends(taking(*SERIES_UID, required=SERIES_UID))
                ) -> Response:
    """Total size in bytes and number of objects of a series"""
    return listing(request, params, scope, ("TotalSizeInBytes", "ObjectCount"),
                   [search.series(scope, _one_series(params))])


@serve("getSOPInstanceUIDs", *VERSIONED,
       answers=list_answer("SOPInstanceUIDValue", ("SOPInstanceUID",)))
def sop_instance_uids(request: Request, scope: CallerScope, search: Search,
                      params: Params = Depends(taking(*SERIES_UID, required=SERIES_UID))
                      ) -> Response:
    """The SOPInstanceUIDs of a series' stored images
    Series the catalogue knows only at series level (the IDC import) list none."""
    return listing(request, params, scope, ("SOPInstanceUID",),
                   [search.images(scope, _one_series(params))])


@serve("getSeriesMetaData", *VERSIONED,
       answers=list_answer("SeriesMetaData", SERIES_METADATA_COLUMNS + AUTHORIZED))
def series_metadata(request: Request, scope: CallerScope, search: Search,
                    params: Params = Depends(taking(*SERIES_UID, required=SERIES_UID))
                    ) -> Response:
    """Metadata of one series (File Location is never given)"""
    return listing(request, params, scope, SERIES_METADATA_COLUMNS,
                   [search.series(scope, _one_series(params))])


@serve("getSeriesMetadata", "v4", methods=("POST",))
def series_metadata_v4(request: Request, scope: CallerScope, search: Search,
                       params: Params = Depends(taking("list", required=("list",)))
                       ) -> Response:
    """Metadata of the given series (`list`, comma-separated or repeated) as a CSV download"""
    records = search.series(scope, Criteria(series_uids=params.required_items()))
    if not records:
        return Response(status_code=200)
    return csv_answer(SERIES_METADATA_CSV_V4, Wire(4, scope), records, "SeriesMetaData.csv")
