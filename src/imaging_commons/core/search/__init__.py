"""NBIA-style search over a version's index: `CatalogSearch`, what it is asked (`Criteria`,
`Sort`, the caller's `Scope`) and the results the adapters read by name (the other records
are in `models`)."""

from .models import (
    SORT_FIELDS,
    Criteria,
    DrillDownStudy,
    PatientResult,
    Scope,
    SearchPage,
    SeriesRecord,
    Sort,
    TextHit,
    patient_pk,
)
from .service import CatalogSearch
from .species import Species

__all__ = ["SORT_FIELDS", "CatalogSearch", "Criteria", "DrillDownStudy", "PatientResult",
           "Scope", "SearchPage", "SeriesRecord", "Sort", "Species", "TextHit", "patient_pk"]
