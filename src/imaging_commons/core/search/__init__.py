"""NBIA-style search over a version's index: `CatalogSearch` and what it is asked and answers."""

from .models import (
    SORT_FIELDS,
    CollectionInfo,
    Criteria,
    DoiSeries,
    DrillDownStudy,
    ImageRecord,
    PatientRecord,
    PatientResult,
    Scope,
    SearchPage,
    SeriesRecord,
    Sort,
    StudyRecord,
    StudySeries,
    TextHit,
    VersionIndex,
    patient_pk,
)
from .service import CatalogSearch
from .species import Species

__all__ = ["SORT_FIELDS", "CatalogSearch", "CollectionInfo", "Criteria", "DoiSeries",
           "DrillDownStudy", "ImageRecord", "PatientRecord", "PatientResult", "Scope",
           "SearchPage", "SeriesRecord", "Sort", "Species", "StudyRecord", "StudySeries",
           "TextHit", "VersionIndex", "patient_pk"]
