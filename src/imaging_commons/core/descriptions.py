"""What the archive tells of itself: its data versions, collections, analysis results, data
sources and filterable attributes, as typed values in the archive's own terms (an adapter
renders them in its API's names)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .catalog import Catalog
from .query import RANGE_OPERATORS, attributes
from .schema import CONTINUOUS_NUMERIC


@dataclass(frozen=True, slots=True)
class DataSource:
    """Where attributes come from: the catalogue's image data (`clinical` None) or one clinical
    source, by the name its import gave."""

    clinical: str | None = None


IMAGE_DATA = DataSource()


@dataclass(frozen=True, slots=True)
class DataVersion:
    number: int
    date_active: str
    active: bool  # the version answered when none is named
    sources: tuple[DataSource, ...]
    programs: tuple[str, ...]  # programs by short name


@dataclass(frozen=True, slots=True)
class Collection:
    collection_id: str
    cancer_type: str | None
    date_updated: str | None
    description: str | None
    doi: str | None
    image_types: str | None
    location: str | None  # the tumour's location where known, else the collection's
    species: str | None
    subject_count: int | None  # as published, else the patients counted in the catalogue
    supporting_data: str | None
    active: bool  # in the active version too
    versions: tuple[int, ...]  # the versions up to this one that hold it


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    analysis_result_id: str
    title: str | None
    description: str | None
    doi: str | None
    cancer_type: str | None
    collections: str | None
    modalities: str | None
    location: str | None
    subject_count: int | None
    date_updated: str | None
    active: bool  # in the active version too
    versions: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ListedAttribute:
    """A name a filter may use: an attribute, or a continuous one with a range suffix."""

    name: str
    data_type: str
    units: str | None
    source: DataSource


class Descriptions:
    """The descriptive answers of one catalogue."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._populated: dict[int, set[str]] = {}
        self._lock = threading.Lock()

    def versions(self) -> list[DataVersion]:
        return [DataVersion(v.version, v.date_active, v.active, tuple(self.data_sources(v.version)),
                            tuple(self.programs(v.version)))
                for v in self.catalog.versions()]

    def collections(self, version: int, hidden: frozenset[str]) -> list[Collection]:
        """Collections of a version, less the `hidden` ones."""
        catalog = self.catalog
        items = catalog.relation(version, "items")
        rel = catalog.relation(version, "collections")
        current = catalog.relation(catalog.active_version(), "collections")
        rows = catalog.connection().execute(f"""
            SELECT c.collection_id, c.cancer_type, c.date_updated, c.description, c.doi,
                   c.image_types, c.tumor_location, c.location, c.species,
                   coalesce(c.subject_count, s.subjects), c.supporting_data,
                   c.collection_id IN (SELECT collection_id FROM {current}),
                   list_filter(c.idc_data_versions, v -> v <= {version})
            FROM {rel} c LEFT JOIN (
                SELECT collection_id, count(DISTINCT PatientID) AS subjects FROM {items}
                WHERE collection_id IN (SELECT collection_id FROM {rel} WHERE subject_count IS NULL)
                GROUP BY 1) s USING (collection_id)
            ORDER BY c.collection_id""").fetchall()
        out = []
        for (collection_id, cancer_type, date_updated, description, doi, image_types,
             tumour_location, location, species, subjects, supporting, active, versions) in rows:
            if collection_id not in hidden:
                out.append(Collection(collection_id, cancer_type, date_updated, description, doi,
                                      image_types, tumour_location or location, species,
                                      subjects, supporting, active, tuple(versions or ())))
        return out

    def analysis_results(self, version: int) -> list[AnalysisResult]:
        catalog = self.catalog
        if not catalog.version(version).manifest.get("analysis_results"):
            return []
        active = catalog.active_version()
        current = (f"SELECT analysis_result_id FROM {catalog.relation(active, 'analysis_results')}"
                   if catalog.version(active).manifest.get("analysis_results")
                   else "SELECT NULL AS analysis_result_id")
        rows = catalog.connection().execute(f"""
            SELECT analysis_result_id, title, description, doi, cancer_type, collections,
                   modalities, location, subject_count, date_updated,
                   analysis_result_id IN ({current}),
                   list_filter(idc_data_versions, v -> v <= {version})
            FROM {catalog.relation(version, 'analysis_results')} ORDER BY 1""").fetchall()
        return [AnalysisResult(result_id, title, description, doi, cancer_type, collections,
                               modalities, location, subjects, updated, active,
                               tuple(versions or ()))
                for (result_id, title, description, doi, cancer_type, collections, modalities,
                     location, subjects, updated, active, versions) in rows]

    def populated_columns(self, version: int) -> set[str]:
        """Item columns with at least one value in a version: the registry lists only those."""
        with self._lock:
            if version not in self._populated:
                con = self.catalog.connection()
                rel = self.catalog.relation(version, "items")
                names = [d[0] for d in con.execute(f"SELECT * FROM {rel} LIMIT 0").description]
                counts = con.execute(
                    "SELECT " + ", ".join(f'count("{n}")' for n in names) + f" FROM {rel}"
                ).fetchone() or ()
                self._populated[version] = {n for n, c in zip(names, counts) if c}
            return self._populated[version]

    def attributes(self, version: int) -> list[ListedAttribute]:
        """The names filters of a version may use, by source: each populated attribute, and
        each continuous one with each range suffix."""
        populated = self.populated_columns(version)
        out: list[ListedAttribute] = []
        for attr in attributes(self.catalog, version).values():
            if attr.table is None and attr.name not in populated:
                continue
            names = [attr.name]
            if attr.data_type == CONTINUOUS_NUMERIC:
                names += [f"{attr.name}_{s}" for s in RANGE_OPERATORS]
            source = DataSource(attr.source)
            out += [ListedAttribute(n, attr.data_type, attr.units, source) for n in names]
        return out

    def data_sources(self, version: int) -> list[DataSource]:
        clinical = self.catalog.version(version).manifest.get("clinical", [])
        return [IMAGE_DATA, *(DataSource(c["source"]) for c in clinical)]

    def programs(self, version: int) -> list[str]:
        rel = self.catalog.relation(version, "collections")
        return [r[0] for r in self.catalog.connection().execute(
            f"SELECT DISTINCT program FROM {rel} WHERE program IS NOT NULL ORDER BY 1").fetchall()]
