"""NBIA-style metadata search over the active data version: `CatalogSearch`.

NBIA thinks in patients -> studies -> series, addresses them by integer keys and counts
patients. Each version's search runs over its index (`search_index`): one row per series with
image counts and sizes, stable integer keys per series and patient, a rollup and per-patient
and per-collection counts that keep the simple search fast over a million series, built at
publish as Parquet files beside the catalogue and read through DuckDB views, so a server's
start-up time and memory do not grow with the archive. Every query runs in DuckDB with values
passed as `?` parameters. Restricted collections the caller may not see are left out of every
answer by the `Scope` the caller's queries run in.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, TypeVar

from ..accounts import User
from ..catalog import Catalog, one_row
from ..errors import TooLarge
from ..search_index import SERIES_ORDER, SUBJECT_ORDER
from .filters import matches, of_patients, order_by, where
from .index import OpenIndexes
from .models import (
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
)
from .species import Species
from .text import TEXT_FIELDS, spans_of
from .text import tests as text_tests

if TYPE_CHECKING:
    from ..front_door import Commons

ROW_BATCH = 5000
_R = TypeVar("_R")

# The index's columns of a series record (`SeriesRecord`'s fields, in order).
SERIES_COLUMNS = (
    "collection_id", "collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
    "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
    "SeriesDescription", "SeriesNumber", "SeriesDate", "StudyDate", "StudyDescription",
    "PatientSex", "PatientAge", "EthnicGroup", "SOPClassUID", "license_short_name",
    "license_long_name", "license_url", "source_DOI", "analysis_result_id", "image_count",
    "size_bytes", "version_min", "series_pk", "commercial_restricted",
)


def normalise_doi(text: str) -> str:
    """'https://doi.org/10.7937/K9/X', 'doi:10.7937/k9/x' and '10.7937/K9/X' are one DOI."""
    text = text.strip().lower()
    return re.sub(r"^(https?://(dx\.)?doi\.org/|doi:)", "", text)


class CatalogSearch:
    """The NBIA search core of one archive. Thread-safe; each version's index is opened once
    per process, and built once per archive."""

    def __init__(self, commons: Commons):
        self.commons = commons
        self.catalog: Catalog = commons.catalog
        self._indexes = OpenIndexes(commons.catalog)

    # ----- scope ---------------------------------------------------------------------------
    def scope(self, user: User | None) -> Scope:
        """The active version as this caller may see it."""
        version = self.catalog.active_version()  # (NothingPublished, an Unavailable, if none)
        return Scope(self.index(version), self.commons.hidden_collections(user, version))

    def index(self, version: int) -> VersionIndex:
        """A version's index, opened (and built, if it has none yet) on first use."""
        return self._indexes.index(version)

    # ----- value lists and counts ----------------------------------------------------------
    def value_counts(self, scope: Scope, column: str, criteria: Criteria) -> list[tuple[str, int]]:
        """Distinct values of a series column (or Collection) with how many patients of the
        search have them."""
        matched = matches(scope, criteria)
        column = {"Collection": "collection"}.get(column, column)
        return [tuple(r) for r in self.catalog.connection().execute(
            f"WITH {matched.ctes} SELECT v, n FROM ({matched.counts(column)}) ORDER BY v",
            matched.params).fetchall()]

    def values(self, scope: Scope, column: str, criteria: Criteria) -> list[str]:
        return [value for value, _ in self.value_counts(scope, column, criteria)]

    def species_counts(self, scope: Scope, criteria: Criteria) -> list[tuple[Species, int]]:
        """Patients per species: a collection-level fact, summed over collection counts."""
        return _species_totals(scope, self.value_counts(scope, "collection_id", criteria))

    def manufacturer_models(self, scope: Scope) -> list[tuple[str, str | None]]:
        w = where(scope, Criteria())
        return [tuple(r) for r in self.catalog.connection().execute(
            f"SELECT DISTINCT Manufacturer, ManufacturerModelName FROM {scope.index.rollup} "
            f"WHERE Manufacturer IS NOT NULL AND {w.sql} ORDER BY 1, 2 NULLS LAST",
            w.params).fetchall()]

    # ----- the simple search ---------------------------------------------------------------
    def search(self, scope: Scope, criteria: Criteria, sort: Sort, start: int,
               size: int) -> SearchPage:
        """One page of patients (ordered, `start` = offset) with the facet counts of all of
        them; studies and series are nested for the page's patients only."""
        matched = matches(scope, criteria)
        order = order_by(sort)
        facet = "(SELECT list((v, n) ORDER BY v) FROM ({}))"
        total, modalities, body_parts, by_collection, page = one_row(
            self.catalog.connection(), f"""
            WITH {matched.ctes},
            page AS MATERIALIZED (SELECT * FROM p ORDER BY {order} LIMIT ? OFFSET ?)
            SELECT (SELECT count(*) FROM p),
                   {facet.format(matched.counts('Modality'))},
                   {facet.format(matched.counts('BodyPartExamined'))},
                   {facet.format(matched.counts('collection_id'))},
                   (SELECT list((patient_no, collection_id, collection, PatientID, studies,
                                 series) ORDER BY {order}) FROM page)""",
            matched.params + [size, start])
        page = _tuples(page)
        w = where(scope, criteria)
        of_patients(w, page)
        studies = self.catalog.connection().execute(f"""
            SELECT patient_no, StudyInstanceUID, list(series_pk ORDER BY series_pk),
                   list(DISTINCT Modality) FILTER (WHERE Modality IS NOT NULL),
                   list(DISTINCT BodyPartExamined) FILTER (WHERE BodyPartExamined IS NOT NULL)
            FROM {scope.index.series} WHERE {w.sql}
            GROUP BY 1, 2 ORDER BY 1, 2""", w.params).fetchall()
        by_collection = _tuples(by_collection)
        return SearchPage(
            patients=_nest(scope, page, studies),
            total_patients=total,
            modalities=_tuples(modalities),
            body_parts=_tuples(body_parts),
            collections=sorted(((info.name if (info := scope.collection(c)) else c, n)
                                for c, n in by_collection), key=lambda x: x[0]),
            species=_species_totals(scope, by_collection))

    def page_series(self, scope: Scope, criteria: Criteria, sort: Sort, start: int,
                    size: int) -> tuple[list[str], bool]:
        """The series UIDs of one page of the simple search (what its manifest lists), and
        whether any of them is under a license that forbids commercial use."""
        matched = matches(scope, criteria)
        page = self.catalog.connection().execute(
            f"WITH {matched.ctes} SELECT patient_no, collection_id FROM p "
            f"ORDER BY {order_by(sort)} LIMIT ? OFFSET ?",
            matched.params + [size, start]).fetchall()
        w = where(scope, criteria)
        of_patients(w, page)
        rows = self.catalog.connection().execute(f"""
            SELECT SeriesInstanceUID, commercial_restricted FROM {scope.index.series}
            WHERE {w.sql}
            ORDER BY {', '.join(SUBJECT_ORDER)}, StudyInstanceUID, SeriesInstanceUID""",
            w.params).fetchall()
        return [r[0] for r in rows], any(r[1] for r in rows)

    # ----- text search ---------------------------------------------------------------------
    def text_search(self, scope: Scope, text: str) -> tuple[list[PatientResult], list[str]]:
        """Patients with a series whose descriptive fields hold `text` as whole words
        (case-insensitive) or whose UIDs are `text`, each with the first field that matched;
        plus the matching series UIDs."""
        conditions, params = text_tests(text)
        first_hit = " ".join(f"WHEN {test} THEN [{i}::VARCHAR, {col}]"
                             for i, (test, col) in enumerate(zip(conditions, TEXT_FIELDS)))
        w = where(scope, Criteria())
        rows = self.catalog.connection().execute(f"""
            WITH hits AS MATERIALIZED (
                SELECT patient_no, collection_id, collection, PatientID, StudyInstanceUID,
                       study_key, series_pk, SeriesInstanceUID, CASE {first_hit} END AS hit
                FROM {scope.index.series} WHERE {w.sql} AND ({" OR ".join(conditions)}))
            SELECT patient_no, any_value(collection_id) AS collection_id,
                   any_value(collection) AS collection, any_value(PatientID) AS PatientID,
                   count(DISTINCT study_key), count(*), min_by(hit, hit[1]::INTEGER),
                   list((StudyInstanceUID, series_pk, SeriesInstanceUID)
                        ORDER BY StudyInstanceUID, series_pk)
            FROM hits GROUP BY patient_no ORDER BY {', '.join(SUBJECT_ORDER)}""",
            params + w.params + params).fetchall()
        patients, series_uids = [], []
        for _, cid, name, patient, n_studies, n_series, hit, series in rows:
            studies: dict[str, list[int]] = {}
            for study_uid, pk, series_uid in series:
                studies.setdefault(study_uid, []).append(pk)
                series_uids.append(series_uid)
            info = scope.collection(cid)
            patients.append(PatientResult(
                cid, name, patient, n_studies, n_series, [], [], info.species if info else (),
                [StudySeries(s, pks) for s, pks in studies.items()],
                hit=TextHit(TEXT_FIELDS[int(hit[0])], hit[1], spans_of(text, hit[1]))))
        return patients, series_uids

    # ----- series, patients and studies ----------------------------------------------------
    def iter_series(self, scope: Scope, criteria: Criteria,
                    max_rows: int | None = None) -> Iterator[list[SeriesRecord]]:
        """Series records in SERIES_ORDER, in batches, for answers that may run to the whole
        catalogue; with `max_rows`, TooLarge before the first batch if there would be
        more. The rows come in the index file's own order (DuckDB keeps a scan's insertion
        order where a query has no ORDER BY and no join): a sort would hold the whole answer
        in memory, ~250 MB for NLST's 592,600 series, for every request running at once. Only
        a filter of more than ORDERED_LIST_MAX values (a long cart, many patients) is sorted,
        holding its matches in memory."""
        w = where(scope, criteria, keep_order=True)
        cur = self.catalog.connection()
        if max_rows is not None:
            (rows,) = one_row(cur, f"SELECT count(*) FROM {scope.index.series} WHERE {w.sql}",
                              w.params)
            if rows > max_rows:
                raise TooLarge(f"The answer would hold {rows:,} series, more than the {max_rows:,} "
                               f"this server sends in one answer: narrow the query (by "
                               f"patient, study, modality ...)")
        order = f"ORDER BY {SERIES_ORDER}" if w.reordered else ""
        cur.execute(f"SELECT {', '.join(SERIES_COLUMNS)} FROM {scope.index.series} "
                    f"WHERE {w.sql} {order}", w.params)
        while rows := cur.fetchmany(ROW_BATCH):
            yield [SeriesRecord(*row) for row in rows]

    def series(self, scope: Scope, criteria: Criteria) -> list[SeriesRecord]:
        return [row for batch in self.iter_series(scope, criteria) for row in batch]

    def patients(self, scope: Scope, criteria: Criteria) -> list[PatientRecord]:
        """Patients with a matching series: collection, PatientID, sex, ethnic group."""
        w = where(scope, criteria)
        return _records(PatientRecord, self.catalog.connection().execute(f"""
            SELECT collection_id, any_value(collection) AS collection, PatientID,
                   any_value(PatientSex) AS PatientSex, any_value(EthnicGroup) AS EthnicGroup
            FROM {scope.index.series} WHERE {w.sql}
            GROUP BY collection_id, PatientID ORDER BY collection_id, PatientID""", w.params))

    def studies(self, scope: Scope, criteria: Criteria) -> list[StudyRecord]:
        """Studies with a matching series, with patient facts and their series count."""
        w = where(scope, criteria)
        return _records(StudyRecord, self.catalog.connection().execute(f"""
            SELECT collection_id, any_value(collection) AS collection,
                   any_value(PatientID) AS PatientID, StudyInstanceUID,
                   any_value(StudyDate) AS StudyDate,
                   any_value(StudyDescription) AS StudyDescription,
                   any_value(PatientAge) AS PatientAge, any_value(PatientSex) AS PatientSex,
                   any_value(EthnicGroup) AS EthnicGroup, count(*) AS series_count
            FROM {scope.index.series} WHERE {w.sql}
            GROUP BY collection_id, StudyInstanceUID
            ORDER BY collection_id, PatientID, StudyInstanceUID""", w.params))

    def visible_series_uids(self, scope: Scope, uids: Sequence[str]) -> list[str]:
        """The given series UIDs the caller may see, in the order given."""
        found = {r.series_uid
                 for r in self.series(scope, Criteria(series_uids=list(uids)))}
        return [u for u in dict.fromkeys(uids) if u in found]

    def series_for_levels(self, scope: Scope, patients: Sequence[str], studies: Sequence[str],
                          series: Sequence[str], match_all: bool) -> list[str]:
        """Series under any (or all) of the given patients, studies and series."""
        levels = [(col, vals) for col, vals in (("PatientID", patients),
                                                ("StudyInstanceUID", studies),
                                                ("SeriesInstanceUID", series)) if vals]
        w = where(scope, Criteria())
        parts = [f"{col} IN (SELECT unnest(?::VARCHAR[]))" for col, _ in levels]
        joined = (" AND " if match_all else " OR ").join(parts)
        rows = self.catalog.connection().execute(
            f"SELECT SeriesInstanceUID FROM {scope.index.series} WHERE {w.sql} AND ({joined}) "
            f"ORDER BY {SERIES_ORDER}",
            w.params + [list(v) for _, v in levels]).fetchall()
        return [r[0] for r in rows]

    def series_for_doi(self, scope: Scope, doi: str) -> list[DoiSeries]:
        """Series whose source DOI, or whose collection's DOI, is `doi`."""
        wanted = normalise_doi(doi)
        by_collection = [c.collection_id for c in scope.visible_collections()
                         if c.doi and normalise_doi(c.doi) == wanted]
        w = where(scope, Criteria())
        return _records(DoiSeries, self.catalog.connection().execute(f"""
            SELECT collection, SeriesInstanceUID, third_party FROM {scope.index.series}
            WHERE {w.sql} AND (lower(source_DOI) = ? OR list_contains(?, collection_id))
            ORDER BY collection, SeriesInstanceUID""", w.params + [wanted, by_collection]))

    # ----- drill-downs ---------------------------------------------------------------------
    def drill_down(self, scope: Scope, criteria: Criteria) -> list[DrillDownStudy]:
        """Studies holding the matching series, each with those series only."""
        studies: dict[str, DrillDownStudy] = {}
        for row in self.series(scope, criteria):
            study = studies.get(row.study_uid)
            if study is None:
                study = studies[row.study_uid] = DrillDownStudy(
                    row.study_uid, row.study_date, row.study_description, [])
            study.series.append(row)
        return list(studies.values())

    def images(self, scope: Scope, criteria: Criteria) -> list[ImageRecord]:
        """The stored instances of the matching series (series known to the catalogue only
        at series level have none), ordered by series then instance number."""
        series = {r.series_uid: r for r in self.series(scope, criteria)}
        if not series:
            return []
        rows = self.catalog.connection().execute(f"""
            SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, InstanceNumber,
                   instance_size
            FROM {self.catalog.relation(scope.index.version, "items")}
            WHERE level = 'instance' AND SeriesInstanceUID IN (SELECT unnest(?::VARCHAR[]))
            ORDER BY SeriesInstanceUID, InstanceNumber NULLS LAST, SOPInstanceUID""",
            [list(series)]).fetchall()
        return [ImageRecord(sop, s, study, series[s].series_pk, number, size,
                            series[s].collection)
                for sop, s, study, number, size in rows]


def _species_totals(scope: Scope,
                    by_collection: list[tuple[str, int]]) -> list[tuple[Species, int]]:
    totals: dict[Species, int] = {}
    for cid, n in by_collection:
        info = scope.collection(cid)
        for species in info.species if info else ():
            totals[species] = totals.get(species, 0) + n
    return sorted(totals.items(), key=lambda x: x[0].code)


def _tuples(values) -> list[tuple]:
    """A list aggregate of unnamed STRUCTs, or [] for the NULL an empty aggregate gives."""
    return [tuple(v) for v in values or []]


def _nest(scope: Scope, page: list[tuple], studies: list[tuple]) -> list[PatientResult]:
    """Page patients with their (study, series keys, modalities, body parts) rows."""
    by_patient: dict[int, list[tuple]] = {}
    for patient_no, *rest in studies:
        by_patient.setdefault(patient_no, []).append(tuple(rest))
    out = []
    for patient_no, cid, name, patient, n_studies, n_series in page:
        rows = by_patient.get(patient_no, [])
        info = scope.collection(cid)
        out.append(PatientResult(
            cid, name, patient, n_studies, n_series,
            sorted({m for r in rows for m in r[2] or ()}),
            sorted({b for r in rows for b in r[3] or ()}),
            info.species if info else (), [StudySeries(r[0], list(r[1])) for r in rows]))
    return out


def _records(record: type[_R], cursor) -> list[_R]:
    """A cursor's rows as records whose fields are its columns, in order."""
    return [record(*row) for row in cursor.fetchall()]
