"""What a search is asked and what it answers: criteria, sorts, and the typed results the
adapters render."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from ..catalog import stable_pk
from .species import Species

SORT_FIELDS = ("subject", "collection", "studies", "series")


def patient_pk(collection_id: str, patient_id: str) -> int:
    """A patient's integer key: PatientIDs are only unique within a collection."""
    return stable_pk(f"{collection_id}/{patient_id}")


@dataclass(frozen=True, slots=True)
class CollectionInfo:
    collection_id: str
    name: str
    species: tuple[Species, ...]
    phantom: bool
    doi: str | None
    description: str | None
    date_updated: str | None
    license_short_name: str | None
    license_long_name: str | None
    license_url: str | None


@dataclass(frozen=True, slots=True)
class VersionIndex:
    """What a data version's queries need: its tables (views over its index, see
    `search_index`; the item rows are asked of the catalogue each time, whose views follow
    compactions), its collections and the publication date of every version (a series'
    release date is that of its first one)."""

    version: int
    series: str
    rollup: str
    patients: str
    facets: str
    collections: Mapping[str, CollectionInfo]
    release_dates: Mapping[int, str]

    @property
    def tables(self) -> tuple[str, ...]:
        return self.series, self.rollup, self.patients, self.facets


@dataclass(frozen=True, slots=True)
class Scope:
    """A caller's view of the active version: the index plus what the caller may not see."""

    index: VersionIndex
    hidden: frozenset[str]

    def visible_collections(self) -> list[CollectionInfo]:
        return [c for c in self.index.collections.values() if c.collection_id not in self.hidden]

    def collection(self, collection_id: str) -> CollectionInfo | None:
        return self.index.collections.get(collection_id)

    def release_date(self, version: int | None) -> str | None:
        return self.index.release_dates.get(version) if version is not None else None

    def versions_released_since(self, day: dt.date) -> list[int]:
        return [v for v, d in self.index.release_dates.items() if d >= day.isoformat()]


@dataclass
class Criteria:
    """A search: OR within a list, AND across them. Collection values may be names or ids;
    species values SNOMED CT codes or the catalogue's names; dates are inclusive."""

    collections: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)
    body_parts: list[str] = field(default_factory=list)
    manufacturers: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)
    study_uids: list[str] = field(default_factory=list)
    series_uids: list[str] = field(default_factory=list)
    series_pks: list[int] = field(default_factory=list)
    species: list[str] = field(default_factory=list)
    study_date_from: dt.date | None = None
    study_date_to: dt.date | None = None
    released_since: dt.date | None = None
    min_studies: int | None = None
    phantom: bool | None = None
    third_party: bool | None = None
    exclude_commercial: bool = False
    modality_anded: bool = False
    # The catalogue holds no longitudinal event data, so a time-point criterion matches nothing.
    time_points: bool = False

    @property
    def collection_level(self) -> bool:
        """Limits the search to whole collections only (or not at all), so per-collection
        patient and facet counts answer it."""
        return not any((self.modalities, self.body_parts, self.manufacturers, self.models,
                        self.patients, self.study_uids, self.series_uids, self.series_pks,
                        self.study_date_from, self.study_date_to, self.released_since,
                        self.min_studies, self.third_party is not None,
                        self.exclude_commercial, self.time_points))

    @property
    def needs_series_rows(self) -> bool:
        """Names series, studies or releases, which the rollup does not keep apart."""
        return bool(self.study_uids or self.series_uids or self.series_pks
                    or self.released_since)


@dataclass(frozen=True, slots=True)
class Sort:
    field: str = "subject"  # one of SORT_FIELDS
    descending: bool = False


@dataclass(frozen=True, slots=True)
class TextHit:
    """Where a text search matched a patient's series: the first field that matched (a
    series column, or `collection`), its value, and the (start, end) of each whole-word,
    case-insensitive match of the searched text in the value."""

    field: str
    value: str
    spans: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class StudySeries:
    study_uid: str
    series_pks: list[int]


@dataclass(frozen=True, slots=True)
class PatientResult:
    collection_id: str
    collection: str
    patient_id: str
    total_studies: int
    total_series: int
    modalities: list[str]
    body_parts: list[str]
    species: tuple[Species, ...]
    studies: list[StudySeries]
    hit: TextHit | None = None

    @property
    def pk(self) -> int:
        return patient_pk(self.collection_id, self.patient_id)


@dataclass(frozen=True, slots=True)
class SearchPage:
    patients: list[PatientResult]
    total_patients: int
    modalities: list[tuple[str, int]]
    body_parts: list[tuple[str, int]]
    collections: list[tuple[str, int]]
    species: list[tuple[Species, int]]


@dataclass(frozen=True, slots=True)
class SeriesRecord:
    """A series as every series-level answer is shaped from: its hierarchy, descriptive
    facts, licence and source, image count and size, the version that first held it, its
    integer key, and whether its licence forbids commercial use. Dates are ISO text."""

    collection_id: str
    collection: str
    patient_id: str
    study_uid: str
    series_uid: str
    modality: str | None
    body_part: str | None
    manufacturer: str | None
    model: str | None
    series_description: str | None
    series_number: str | None
    series_date: str | None
    study_date: str | None
    study_description: str | None
    patient_sex: str | None
    patient_age: str | None
    ethnic_group: str | None
    sop_class_uid: str | None
    license_short_name: str | None
    license_long_name: str | None
    license_url: str | None
    source_doi: str | None
    analysis_result_id: str | None
    image_count: int | None
    size_bytes: int | None
    version_min: int | None
    series_pk: int
    commercial_restricted: bool | None


@dataclass(frozen=True, slots=True)
class PatientRecord:
    collection_id: str
    collection: str
    patient_id: str
    patient_sex: str | None
    ethnic_group: str | None


@dataclass(frozen=True, slots=True)
class StudyRecord:
    collection_id: str
    collection: str
    patient_id: str
    study_uid: str
    study_date: str | None
    study_description: str | None
    patient_age: str | None
    patient_sex: str | None
    ethnic_group: str | None
    series_count: int


@dataclass(frozen=True, slots=True)
class DoiSeries:
    """A series found by DOI: its collection, UID and whether it is an analysis result."""

    collection: str
    series_uid: str
    third_party: bool


@dataclass(frozen=True, slots=True)
class DrillDownStudy:
    study_uid: str
    study_date: str | None
    description: str | None
    series: list[SeriesRecord]


@dataclass(frozen=True, slots=True)
class ImageRecord:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    series_pk: int
    instance_number: int | None
    size: int | None
    collection: str
