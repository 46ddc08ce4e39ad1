"""NBIA-style metadata search over the active data version.

NBIA thinks in patients -> studies -> series, addresses them by integer keys and counts
patients. Each version's search runs over its index (`search_index`): one row per series with
image counts and sizes, stable integer keys per series and patient, a rollup and per-patient
and per-collection counts that keep the simple search fast over a million series, built at
publish as Parquet files beside the catalogue and read through DuckDB views, so a server's
start-up time and memory do not grow with the archive. Every query runs in DuckDB with values
passed as `?` parameters. Restricted collections the caller may not see are left out of every
answer by the `Scope` the caller's queries run in.

The queries are DuckDB-specific aggregations (materialised CTEs, list aggregates) over the
index's own tables, which no other store has, so they are written as SQL templates with fixed
fragments rather than through the portable cohort query layer.
"""

from __future__ import annotations

import datetime as dt
import html
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from .accounts import User
from .catalog import (
    Catalog,
    NothingPublished,
    normalise_collection_id,
    one_row,
    parquet_scan,
    stable_pk,
)
from .search_index import (
    FACETS,
    INDEX_COLLECTION_COLUMNS,
    INDEX_TABLES,
    ROLLUP_COLUMNS,
    SERIES_ORDER,
    SUBJECT_ORDER,
    build_search_index,
)

# Species codes as NBIA sends them (SNOMED CT), by the catalogue's species names.
SPECIES_CODES: Mapping[str, tuple[str, str]] = {
    "human": ("337915000", "Homo sapiens"),
    "mouse": ("447612001", "Mus musculus"),
    "canine": ("448771007", "Canis lupus familiaris"),
    "dog": ("448771007", "Canis lupus familiaris"),
}
PHANTOM = "phantom"

SORT_FIELDS = ("subject", "collection", "studies", "series")
ROW_BATCH = 5000
# Indexes kept open (their views): the newest version's, and the one before it, which
# requests that began before a publish may still be reading.
KEPT_INDEXES = 2

# Searchable fields of the text search, in the order a hit is reported from, with the label
# NBIA prints for them.
TEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("seriesDesc", "SeriesDescription"),
    ("studyDesc", "StudyDescription"),
    ("manufacturer", "Manufacturer"),
    ("manufacturerModelName", "ManufacturerModelName"),
    ("modality", "Modality"),
    ("bodyPartExamined", "BodyPartExamined"),
    ("patientId", "PatientID"),
    ("project", "collection"),
    ("seriesInstanceUID", "SeriesInstanceUID"),
    ("studyInstanceUID", "StudyInstanceUID"),
)
UID_FIELDS = ("SeriesInstanceUID", "StudyInstanceUID")

# Columns of a series record, the row every series-level answer is shaped from.
SERIES_COLUMNS = (
    "collection_id", "collection", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
    "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
    "SeriesDescription", "SeriesNumber", "SeriesDate", "StudyDate", "StudyDescription",
    "PatientSex", "PatientAge", "EthnicGroup", "SOPClassUID", "license_short_name",
    "license_long_name", "license_url", "source_DOI", "analysis_result_id", "image_count",
    "size_bytes", "version_min", "series_pk", "commercial_restricted",
)


class SearchError(Exception):
    """A search the catalogue cannot answer as asked (no published version...)."""


class AnswerTooLarge(SearchError):
    """A list answer would hold more rows than the server sends in one answer."""

    def __init__(self, rows: int, limit: int):
        super().__init__(f"The answer would hold {rows:,} series, more than the {limit:,} this "
                         f"server sends in one answer: narrow the query (by patient, study, "
                         f"modality ...)")
        self.rows, self.limit = rows, limit


def patient_pk(collection_id: str, patient_id: str) -> int:
    """A patient's integer key: PatientIDs are only unique within a collection."""
    return stable_pk(f"{collection_id}/{patient_id}")


def doi_url(doi: str | None) -> str | None:
    return f"https://doi.org/{doi}" if doi else None


def normalise_doi(text: str) -> str:
    """'https://doi.org/10.7937/K9/X', 'doi:10.7937/k9/x' and '10.7937/K9/X' are one DOI."""
    text = text.strip().lower()
    return re.sub(r"^(https?://(dx\.)?doi\.org/|doi:)", "", text)


@dataclass(frozen=True)
class Species:
    code: str
    description: str
    name: str  # as the catalogue writes it ("Human")


def species_of(names: str | None) -> tuple[tuple[Species, ...], bool]:
    """A collection's species and whether it is a phantom collection, from the catalogue's
    species text ("Human", "Human, Mouse", "Phantom")."""
    species, phantom = [], False
    for name in (n.strip() for n in (names or "").split(",")):
        if not name:
            continue
        if name.lower() == PHANTOM:
            phantom = True
            continue
        code, description = SPECIES_CODES.get(name.lower(), (name, name))
        species.append(Species(code, description, name))
    return tuple(species), phantom


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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
    species values codes or names; dates are inclusive."""

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


@dataclass(frozen=True)
class Sort:
    field: str = "subject"  # one of SORT_FIELDS
    descending: bool = False


@dataclass(frozen=True)
class StudySeries:
    study_uid: str
    series_pks: list[int]


@dataclass(frozen=True)
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
    hit: str | None = None

    @property
    def pk(self) -> int:
        return patient_pk(self.collection_id, self.patient_id)


@dataclass(frozen=True)
class SearchPage:
    patients: list[PatientResult]
    total_patients: int
    modalities: list[tuple[str, int]]
    body_parts: list[tuple[str, int]]
    collections: list[tuple[str, int]]
    species: list[tuple[Species, int]]


@dataclass(frozen=True)
class DrillDownStudy:
    study_uid: str
    study_date: str | None
    description: str | None
    series: list[dict]


@dataclass(frozen=True)
class ImageRecord:
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    series_pk: int
    instance_number: int | None
    size: int | None
    collection: str


# Up to this many values, a filter that must keep the index's row order tests a list.
ORDERED_LIST_MAX = 64


class _Where:
    """AND of SQL fragments with their `?` values, in order.

    A filter on several values is a semi-join with the values as a set, the fastest test,
    except where `keep_order` asks for conditions that keep a scan's row order (DuckDB's hash
    joins do not): there up to ORDERED_LIST_MAX values are tested as a list (~80 ms over the
    catalogue for 64 values, 1 s for 1,000), and only above that a semi-join is used, which
    `reordered` then reports."""

    def __init__(self, keep_order: bool = False):
        self.fragments: list[str] = []
        self.params: list = []
        self.keep_order = keep_order
        self.reordered = False

    def add(self, fragment: str, *params) -> None:
        self.fragments.append(fragment)
        self.params.extend(params)

    def any_of(self, column: str, values: Sequence, sql_type: str = "VARCHAR") -> None:
        values = list(values)
        if len(values) == 1:
            self.add(f"{column} = ?::{sql_type}", values[0])
        elif self.keep_order and len(values) <= ORDERED_LIST_MAX:
            self.add(f"list_contains(?::{sql_type}[], {column})", values)
        else:
            self.add(f"{column} IN (SELECT unnest(?::{sql_type}[]))", values)
            self.reordered = True

    @property
    def sql(self) -> str:
        return " AND ".join(self.fragments) or "true"


@dataclass(frozen=True)
class _Matched:
    """CTEs defining `p` (matching patients: patient_no, collection_id, collection, PatientID,
    studies, series) and what facet counts read, with their `?` values."""

    ctes: str
    params: list
    facet_sql: str  # patients per value of {column}, as (v, n)

    def counts(self, column: str) -> str:
        """Patients per value of a facet column; per collection (`collection_id` or the
        `collection` name) straight from `p`."""
        if column in ("collection_id", "collection"):
            return f"SELECT {column} AS v, count(*) AS n FROM p GROUP BY 1"
        if column not in FACETS:
            raise ValueError(f"not a counted column: {column}")
        return self.facet_sql.format(column=column)


class CatalogSearch:
    """The NBIA search core of one archive. Thread-safe; each version's index is opened once
    per process, and built once per archive."""

    def __init__(self, commons):
        self.commons = commons
        self.catalog: Catalog = commons.catalog
        self._indexes: dict[int, VersionIndex] = {}
        self._lock = threading.Lock()

    # ----- scope ---------------------------------------------------------------------------
    def scope(self, user: User | None) -> Scope:
        """The active version as this caller may see it."""
        try:
            version = self.catalog.active_version()
        except NothingPublished as exc:
            raise SearchError(str(exc)) from None
        return Scope(self.index(version), self.commons.hidden_collections(user, version))

    def index(self, version: int) -> VersionIndex:
        with self._lock:
            if version not in self._indexes:
                self._indexes[version] = self._open_index(version)
                for stale in list(self._indexes)[:-KEPT_INDEXES]:
                    for view in self._indexes.pop(stale).tables:
                        self.catalog.connection().execute(f"DROP VIEW IF EXISTS {view}")
            return self._indexes[version]

    def _open_index(self, version: int) -> VersionIndex:
        """Views over a version's index files (built first if the version has none yet), and
        its collections, read from the index's small `collections` file."""
        index = build_search_index(self.catalog, version)
        con = self.catalog.connection()
        names = [f"nbia_{table}_v{version}" for table in INDEX_TABLES]
        for name, table in zip(names, INDEX_TABLES):
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {index.scan(table)}")
        rows = con.execute(f"SELECT {', '.join(INDEX_COLLECTION_COLUMNS)} FROM "
                           f"{parquet_scan(index.folder / 'collections.parquet')}").fetchall()
        infos = {}
        for cid, name, species_text, *rest in rows:
            species, phantom = species_of(species_text)
            infos[cid] = CollectionInfo(cid, name or cid, species, phantom, *rest)
        dates = {v.version: v.date_active for v in self.catalog.versions()}
        series, rollup, patients, facets = names
        return VersionIndex(version, series, rollup, patients, facets, infos, dates)

    # ----- filters -------------------------------------------------------------------------
    def _where(self, scope: Scope, criteria: Criteria, keep_order: bool = False) -> _Where:
        """The series-level conditions of a search, visibility included."""
        w = _Where(keep_order)
        if scope.hidden:
            w.add("NOT list_contains(?, collection_id)", sorted(scope.hidden))
        collections = self._collection_ids(scope, criteria)
        if collections is not None:
            w.any_of("collection_id", collections)
        for column, values in (("Modality", criteria.modalities),
                               ("BodyPartExamined", criteria.body_parts),
                               ("Manufacturer", criteria.manufacturers),
                               ("ManufacturerModelName", criteria.models),
                               ("PatientID", criteria.patients),
                               ("StudyInstanceUID", criteria.study_uids),
                               ("SeriesInstanceUID", criteria.series_uids)):
            if values:
                w.any_of(column, values)
        if criteria.series_pks:
            w.any_of("series_pk", criteria.series_pks, "UBIGINT")
        if criteria.study_date_from:
            w.add("StudyDate >= ?", criteria.study_date_from.isoformat())
        if criteria.study_date_to:
            w.add("StudyDate <= ?", criteria.study_date_to.isoformat())
        if criteria.released_since:
            w.any_of("version_min", scope.versions_released_since(criteria.released_since),
                     "BIGINT")
        if criteria.third_party is not None:
            w.add("third_party = ?", criteria.third_party)
        if criteria.exclude_commercial:
            w.add("NOT commercial_restricted")
        if criteria.time_points:
            w.add("false")
        return w

    @staticmethod
    def _collection_ids(scope: Scope, criteria: Criteria) -> list[str] | None:
        """Collections the search is limited to: named ones, narrowed by species and phantom
        criteria (both are collection-level facts). None means no limit."""
        infos = scope.index.collections.values()
        chosen: set[str] | None = None
        if criteria.collections:
            chosen = {normalise_collection_id(c) for c in criteria.collections}
        if criteria.species:
            wanted = {s.strip().lower() for s in criteria.species}
            by_species = {c.collection_id for c in infos if any(
                s.code.lower() in wanted or s.name.lower() in wanted
                or s.description.lower() in wanted for s in c.species)}
            chosen = by_species if chosen is None else chosen & by_species
        if criteria.phantom is not None:
            by_phantom = {c.collection_id for c in infos if c.phantom == criteria.phantom}
            chosen = by_phantom if chosen is None else chosen & by_phantom
        return sorted(chosen) if chosen is not None else None

    def _matches(self, scope: Scope, criteria: Criteria) -> _Matched:
        """CTE `p`: the matching patients with their study and series counts (after the
        patient-level criteria), and how to count patients per facet value among them."""
        index, w = scope.index, self._where(scope, criteria)
        if criteria.collection_level:
            return _Matched(
                f"p AS MATERIALIZED (SELECT * FROM {index.patients} WHERE {w.sql}), "
                f"f AS MATERIALIZED (SELECT * FROM {index.facets} WHERE {w.sql})",
                w.params + w.params,
                "SELECT value AS v, sum(patients) AS n FROM f WHERE facet = '{column}' "
                "GROUP BY 1")
        # a series row counts as one series, a rollup row as `series` of them
        source, series = ((index.series, "1 AS series") if criteria.needs_series_rows
                          else (index.rollup, "series"))
        having = _Where()
        if criteria.min_studies:
            having.add("count(DISTINCT study_key) >= ?", criteria.min_studies)
        if criteria.modality_anded and criteria.modalities:
            having.add("count(DISTINCT Modality) = ?", len(set(criteria.modalities)))
        matched = "m0" if having.fragments else "m"
        ctes = (f"{matched} AS MATERIALIZED (SELECT {', '.join(ROLLUP_COLUMNS)}, {series} "
                f"FROM {source} WHERE {w.sql}), "
                f"p AS MATERIALIZED (SELECT patient_no, any_value(collection_id) AS collection_id,"
                f" any_value(collection) AS collection, any_value(PatientID) AS PatientID, "
                f"count(DISTINCT study_key) AS studies, sum(series) AS series FROM {matched} "
                f"GROUP BY patient_no" + (f" HAVING {having.sql})" if having.fragments else ")"))
        if having.fragments:
            ctes += ", m AS MATERIALIZED (SELECT * FROM m0 SEMI JOIN p USING (patient_no))"
        return _Matched(ctes, w.params + having.params,
                        "SELECT {column} AS v, count(DISTINCT patient_no) AS n FROM m "
                        "WHERE {column} IS NOT NULL GROUP BY 1")

    @staticmethod
    def _order(sort: Sort) -> str:
        """Patients (of `p`) in the sort's order, ties in subject order."""
        direction = "DESC" if sort.descending else "ASC"
        keys = {"subject": [], "collection": ["collection"], "studies": ["studies"],
                "series": ["series"]}[sort.field] + list(SUBJECT_ORDER)
        return ", ".join(f"{key} {direction}" for key in keys)

    # ----- value lists and counts ----------------------------------------------------------
    def value_counts(self, scope: Scope, column: str, criteria: Criteria) -> list[tuple[str, int]]:
        """Distinct values of a series column (or Collection) with how many patients of the
        search have them."""
        matched = self._matches(scope, criteria)
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
        w = self._where(scope, Criteria())
        return [tuple(r) for r in self.catalog.connection().execute(
            f"SELECT DISTINCT Manufacturer, ManufacturerModelName FROM {scope.index.rollup} "
            f"WHERE Manufacturer IS NOT NULL AND {w.sql} ORDER BY 1, 2 NULLS LAST",
            w.params).fetchall()]

    # ----- the simple search ---------------------------------------------------------------
    def search(self, scope: Scope, criteria: Criteria, sort: Sort, start: int,
               size: int) -> SearchPage:
        """One page of patients (ordered, `start` = offset) with the facet counts of all of
        them; studies and series are nested for the page's patients only."""
        matched = self._matches(scope, criteria)
        order = self._order(sort)
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
        w = self._where(scope, criteria)
        _of_patients(w, page)
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
        matched = self._matches(scope, criteria)
        page = self.catalog.connection().execute(
            f"WITH {matched.ctes} SELECT patient_no, collection_id FROM p "
            f"ORDER BY {self._order(sort)} LIMIT ? OFFSET ?",
            matched.params + [size, start]).fetchall()
        w = self._where(scope, criteria)
        _of_patients(w, page)
        rows = self.catalog.connection().execute(f"""
            SELECT SeriesInstanceUID, commercial_restricted FROM {scope.index.series}
            WHERE {w.sql}
            ORDER BY {', '.join(SUBJECT_ORDER)}, StudyInstanceUID, SeriesInstanceUID""",
            w.params).fetchall()
        return [r[0] for r in rows], any(r[1] for r in rows)

    # ----- text search ---------------------------------------------------------------------
    def text_search(self, scope: Scope, text: str) -> tuple[list[PatientResult], list[str]]:
        """Patients with a series whose descriptive fields hold `text` as whole words
        (case-insensitive) or whose UIDs are `text`, each with the first field that matched
        highlighted; plus the matching series UIDs."""
        tests, params = [], []
        for _, col in TEXT_FIELDS:
            if col in UID_FIELDS:
                tests.append(f"{col} = ?")
                params.append(text)
            else:  # the cheap substring test spares the regular expression most rows
                tests.append(f"(contains(lower({col}), ?) AND regexp_matches({col}, ?))")
                params += [text.lower(), _word_pattern(text)]
        first_hit = " ".join(f"WHEN {test} THEN [{i}::VARCHAR, {col}]"
                             for i, (test, (_, col)) in enumerate(zip(tests, TEXT_FIELDS)))
        w = self._where(scope, Criteria())
        rows = self.catalog.connection().execute(f"""
            WITH hits AS MATERIALIZED (
                SELECT patient_no, collection_id, collection, PatientID, StudyInstanceUID,
                       study_key, series_pk, SeriesInstanceUID, CASE {first_hit} END AS hit
                FROM {scope.index.series} WHERE {w.sql} AND ({" OR ".join(tests)}))
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
                hit=highlight(TEXT_FIELDS[int(hit[0])][0], hit[1], text)))
        return patients, series_uids

    # ----- series, patients and studies ----------------------------------------------------
    def iter_series(self, scope: Scope, criteria: Criteria,
                    max_rows: int | None = None) -> Iterator[list[dict]]:
        """Series records in SERIES_ORDER, in batches, for answers that may run to the whole
        catalogue; with `max_rows`, AnswerTooLarge before the first batch if there would be
        more. The rows come in the index file's own order (DuckDB keeps a scan's insertion
        order where a query has no ORDER BY and no join): a sort would hold the whole answer
        in memory, ~250 MB for NLST's 592,600 series, for every request running at once. Only
        a filter of more than ORDERED_LIST_MAX values (a long cart, many patients) is sorted,
        holding its matches in memory."""
        w = self._where(scope, criteria, keep_order=True)
        cur = self.catalog.connection()
        if max_rows is not None:
            (rows,) = one_row(cur, f"SELECT count(*) FROM {scope.index.series} WHERE {w.sql}",
                              w.params)
            if rows > max_rows:
                raise AnswerTooLarge(rows, max_rows)
        order = f"ORDER BY {SERIES_ORDER}" if w.reordered else ""
        cur.execute(f"SELECT {', '.join(SERIES_COLUMNS)} FROM {scope.index.series} "
                    f"WHERE {w.sql} {order}", w.params)
        yield from _batches(cur, SERIES_COLUMNS)

    def series(self, scope: Scope, criteria: Criteria) -> list[dict]:
        return [row for batch in self.iter_series(scope, criteria) for row in batch]

    def patients(self, scope: Scope, criteria: Criteria) -> list[dict]:
        """Patients with a matching series: collection, PatientID, sex, ethnic group."""
        w = self._where(scope, criteria)
        return _records(self.catalog.connection().execute(f"""
            SELECT collection_id, any_value(collection) AS collection, PatientID,
                   any_value(PatientSex) AS PatientSex, any_value(EthnicGroup) AS EthnicGroup
            FROM {scope.index.series} WHERE {w.sql}
            GROUP BY collection_id, PatientID ORDER BY collection_id, PatientID""", w.params))

    def studies(self, scope: Scope, criteria: Criteria) -> list[dict]:
        """Studies with a matching series, with patient facts and their series count."""
        w = self._where(scope, criteria)
        return _records(self.catalog.connection().execute(f"""
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
        found = {r["SeriesInstanceUID"]
                 for r in self.series(scope, Criteria(series_uids=list(uids)))}
        return [u for u in dict.fromkeys(uids) if u in found]

    def series_for_levels(self, scope: Scope, patients: Sequence[str], studies: Sequence[str],
                          series: Sequence[str], match_all: bool) -> list[str]:
        """Series under any (or all) of the given patients, studies and series."""
        levels = [(col, vals) for col, vals in (("PatientID", patients),
                                                ("StudyInstanceUID", studies),
                                                ("SeriesInstanceUID", series)) if vals]
        w = self._where(scope, Criteria())
        parts = [f"{col} IN (SELECT unnest(?::VARCHAR[]))" for col, _ in levels]
        joined = (" AND " if match_all else " OR ").join(parts)
        rows = self.catalog.connection().execute(
            f"SELECT SeriesInstanceUID FROM {scope.index.series} WHERE {w.sql} AND ({joined}) "
            f"ORDER BY {SERIES_ORDER}",
            w.params + [list(v) for _, v in levels]).fetchall()
        return [r[0] for r in rows]

    def series_for_doi(self, scope: Scope, doi: str) -> list[dict]:
        """Series whose source DOI, or whose collection's DOI, is `doi`."""
        wanted = normalise_doi(doi)
        by_collection = [c.collection_id for c in scope.visible_collections()
                         if c.doi and normalise_doi(c.doi) == wanted]
        w = self._where(scope, Criteria())
        return _records(self.catalog.connection().execute(f"""
            SELECT collection, SeriesInstanceUID, third_party FROM {scope.index.series}
            WHERE {w.sql} AND (lower(source_DOI) = ? OR list_contains(?, collection_id))
            ORDER BY collection, SeriesInstanceUID""", w.params + [wanted, by_collection]))

    # ----- drill-downs ---------------------------------------------------------------------
    def drill_down(self, scope: Scope, criteria: Criteria) -> list[DrillDownStudy]:
        """Studies holding the matching series, each with those series only."""
        studies: dict[str, DrillDownStudy] = {}
        for row in self.series(scope, criteria):
            study = studies.get(row["StudyInstanceUID"])
            if study is None:
                study = studies[row["StudyInstanceUID"]] = DrillDownStudy(
                    row["StudyInstanceUID"], row["StudyDate"], row["StudyDescription"], [])
            study.series.append(row)
        return list(studies.values())

    def images(self, scope: Scope, criteria: Criteria) -> list[ImageRecord]:
        """The stored instances of the matching series (series known to the catalogue only
        at series level have none), ordered by series then instance number."""
        series = {r["SeriesInstanceUID"]: r for r in self.series(scope, criteria)}
        if not series:
            return []
        rows = self.catalog.connection().execute(f"""
            SELECT SOPInstanceUID, SeriesInstanceUID, StudyInstanceUID, InstanceNumber,
                   instance_size
            FROM {self.catalog.relation(scope.index.version, "items")}
            WHERE level = 'instance' AND SeriesInstanceUID IN (SELECT unnest(?::VARCHAR[]))
            ORDER BY SeriesInstanceUID, InstanceNumber NULLS LAST, SOPInstanceUID""",
            [list(series)]).fetchall()
        return [ImageRecord(sop, s, study, series[s]["series_pk"], number, size,
                            series[s]["collection"])
                for sop, s, study, number, size in rows]


def highlight(label: str, value: str, text: str) -> str:
    """NBIA's hit text: `<em>label</em>: value` with each whole-word match of `text` in
    <strong>, HTML-escaped."""
    out, last = [], 0
    for m in re.finditer(rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])", value,
                         flags=re.IGNORECASE):
        out += [html.escape(value[last:m.start()]), f"<strong>{html.escape(m.group())}</strong>"]
        last = m.end()
    out.append(html.escape(value[last:]))
    return f"<em>{label}</em>: {''.join(out)}"


def _word_pattern(text: str) -> str:
    """A case-insensitive whole-word pattern for `text` in RE2 (DuckDB), which has no
    look-arounds."""
    return rf"(?i)(?:^|[^0-9A-Za-z]){re.escape(text)}(?:$|[^0-9A-Za-z])"


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


def _of_patients(w: _Where, page: Sequence[tuple]) -> None:
    """Limit `w` to the series of a page's patients (patient_no, collection_id, ...): by their
    numbers, and by their collections as a constant list too, which DuckDB checks against the
    statistics of the index's chunks and row groups (sorted by collection), so that little of
    the index is read (a list of their PatientIDs as well made it slower)."""
    if not page:
        w.add("false")
        return
    collections = sorted({row[1] for row in page})
    w.add(f"collection_id IN ({', '.join('?' * len(collections))})", *collections)
    w.add("patient_no IN (SELECT unnest(?::BIGINT[]))", [row[0] for row in page])


def _records(cursor) -> list[dict]:
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def _batches(cursor, names: Sequence[str]) -> Iterator[list[dict]]:
    while rows := cursor.fetchmany(ROW_BATCH):
        yield [dict(zip(names, row)) for row in rows]
