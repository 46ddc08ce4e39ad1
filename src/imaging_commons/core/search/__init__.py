"""NBIA-style search over a version's index: `CatalogSearch` and what it is asked and answers."""

from .models import (
    SORT_FIELDS,
    CollectionInfo,
    Criteria,
    DrillDownStudy,
    ImageRecord,
    PatientResult,
    Scope,
    SearchPage,
    Sort,
    StudySeries,
    TextHit,
    VersionIndex,
    patient_pk,
)
from .service import CatalogSearch
from .species import Species

__all__ = ["SORT_FIELDS", "CatalogSearch", "CollectionInfo", "Criteria", "DrillDownStudy",
           "ImageRecord", "PatientResult", "Scope", "SearchPage", "Sort", "Species",
           "StudySeries", "TextHit", "VersionIndex", "patient_pk"]
