"""The JSON shapes of the portal's answers about studies and series: drill-downs and the
study identifiers of a search's patients."""

from __future__ import annotations

from collections.abc import Callable

from ...core.catalog import stable_pk
from ...core.search import DrillDownStudy, PatientResult, patient_pk
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

