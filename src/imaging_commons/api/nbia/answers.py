"""The JSON shapes of the portal's answers about studies and series: drill-downs and the
study identifiers of a search's patients."""

from __future__ import annotations

from collections.abc import Callable

from ...core.catalog import stable_pk
from ...core.search import DrillDownStudy, PatientResult, SeriesRecord, patient_pk
from .columns import VALUES, Wire, doi_url
from .dates import epoch_millis


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


def drill_down_series(r: SeriesRecord, wire: Wire) -> dict:
    return {
        "seriesNumber": r.series_number, "seriesUID": r.series_uid,
        "numberImages": r.image_count, "modality": r.modality, "manufacturer": r.manufacturer,
        "annotationsFlag": False, "annotationsSize": 0, "patientId": r.patient_id,
        "patientPkId": str(patient_pk(r.collection_id, r.patient_id)),
        "studyId": r.study_uid, "studyPkId": stable_pk(r.study_uid),
        "totalSizeForAllImagesInSeries": r.size_bytes, "project": r.collection,
        "description": r.series_description, "dataProvenanceSiteName": None,
        "manufacturerModelName": r.model, "softwareVersion": None,
        "maxFrameCount": "0", "studyDate": r.study_date, "studyDesc": r.study_description,
        "bodyPartExamined": r.body_part, "study_id": None,
        "thirdPartyAnalysis": VALUES["ThirdPartyAnalysis"](r, wire),
        "descriptionURI": doi_url(r.source_doi), "sopClassUID": r.sop_class_uid,
        "licenseName": VALUES["LicenseName"](r, wire), "licenseUrl": r.license_url,
        "commercialRestrictions": r.commercial_restricted, "seriesId": r.series_uid,
        "studyDateString": r.study_date or "", "seriesPkId": r.series_pk,
        "exactSize": r.size_bytes}
