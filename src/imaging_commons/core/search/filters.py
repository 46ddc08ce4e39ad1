"""The SQL conditions of a search over a version's index: the series-level filters (the
caller's visibility included), the matching patients with their counts, and the sort.

The queries are DuckDB-specific aggregations (materialised CTEs, list aggregates) over the
index's own tables, which no other store has, so they are written as SQL templates with fixed
fragments and `?` values rather than through the portable cohort query layer."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..catalog import normalise_collection_id
from ..search_index import FACETS, ROLLUP_COLUMNS, SUBJECT_ORDER
from .models import Criteria, Scope, Sort

# Up to this many values, a filter that must keep the index's row order tests a list.
ORDERED_LIST_MAX = 64


class Where:
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


@dataclass(frozen=True, slots=True)
class Matched:
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


def where(scope: Scope, criteria: Criteria, keep_order: bool = False) -> Where:
    """The series-level conditions of a search, visibility included."""
    w = Where(keep_order)
    if scope.hidden:
        w.add("NOT list_contains(?, collection_id)", sorted(scope.hidden))
    collections = collection_ids(scope, criteria)
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


def collection_ids(scope: Scope, criteria: Criteria) -> list[str] | None:
    """Collections the search is limited to: named ones, narrowed by species and phantom
    criteria (both are collection-level facts). None means no limit."""
    infos = scope.index.collections.values()
    chosen: set[str] | None = None
    if criteria.collections:
        chosen = {normalise_collection_id(c) for c in criteria.collections}
    if criteria.species:
        wanted = {s.strip().lower() for s in criteria.species}
        by_species = {c.collection_id for c in infos if any(
            s.code.lower() in wanted or s.name.lower() in wanted for s in c.species)}
        chosen = by_species if chosen is None else chosen & by_species
    if criteria.phantom is not None:
        by_phantom = {c.collection_id for c in infos if c.phantom == criteria.phantom}
        chosen = by_phantom if chosen is None else chosen & by_phantom
    return sorted(chosen) if chosen is not None else None


def matches(scope: Scope, criteria: Criteria) -> Matched:
    """CTE `p`: the matching patients with their study and series counts (after the
    patient-level criteria), and how to count patients per facet value among them."""
    index, w = scope.index, where(scope, criteria)
    if criteria.collection_level:
        return Matched(
            f"p AS MATERIALIZED (SELECT * FROM {index.patients} WHERE {w.sql}), "
            f"f AS MATERIALIZED (SELECT * FROM {index.facets} WHERE {w.sql})",
            w.params + w.params,
            "SELECT value AS v, sum(patients) AS n FROM f WHERE facet = '{column}' "
            "GROUP BY 1")
    # a series row counts as one series, a rollup row as `series` of them
    source, series = ((index.series, "1 AS series") if criteria.needs_series_rows
                      else (index.rollup, "series"))
    having = Where()
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
    return Matched(ctes, w.params + having.params,
                   "SELECT {column} AS v, count(DISTINCT patient_no) AS n FROM m "
                   "WHERE {column} IS NOT NULL GROUP BY 1")


def order_by(sort: Sort) -> str:
    """Patients (of `p`) in the sort's order, ties in subject order."""
    direction = "DESC" if sort.descending else "ASC"
    keys = {"subject": [], "collection": ["collection"], "studies": ["studies"],
            "series": ["series"]}[sort.field] + list(SUBJECT_ORDER)
    return ", ".join(f"{key} {direction}" for key in keys)


def of_patients(w: Where, page: Sequence[tuple]) -> None:
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
