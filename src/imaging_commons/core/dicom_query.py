"""DICOM queries (what QIDO-RS asks) over a version's item rows: studies, series or instances
matched on DICOM attributes, in pages by limit and offset, within the caller's visibility.

Attributes are named by their DICOM keywords, which are the catalogue's own column names. A
study is the group of a version's rows that share a StudyInstanceUID, a series of those that
share a SeriesInstanceUID; imported IDC series are series rows with an instance count and no
instance rows, ingested files are instance rows. An attribute the catalogue does not hold
has no value anywhere: matching on it finds nothing (but a universal match, `*`).

A page is made in two steps so that a request never aggregates the whole catalogue: the
page's keys are chosen first (a top-k over the matching rows' keys), then only those
studies or series are summarised."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from .catalog import Catalog

STUDY, SERIES, INSTANCE = "study", "series", "instance"
LEVELS = (STUDY, SERIES, INSTANCE)
MAX_ROWS = 10_000  # the most one answer holds, asked for or not

# Attributes the catalogue holds, by the level whose entity they describe; the value type
# decides how a match compares: UIDs (lists of values), dates (ranges), text (wildcards),
# numbers (equality).
_UID, _DATE, _TEXT, _NUMBER = "uid", "date", "text", "number"
_STUDY_ATTRIBUTES = {"StudyInstanceUID": _UID, "StudyDate": _DATE, "StudyDescription": _TEXT,
                     "PatientID": _TEXT, "PatientSex": _TEXT}
_SERIES_ATTRIBUTES = {"SeriesInstanceUID": _UID, "Modality": _TEXT, "SeriesNumber": _TEXT,
                      "SeriesDescription": _TEXT, "BodyPartExamined": _TEXT,
                      "SeriesDate": _DATE}
_INSTANCE_ATTRIBUTES = {"SOPInstanceUID": _UID, "SOPClassUID": _UID,
                        "InstanceNumber": _NUMBER}
# what a study-level match on these means: a study having a series that matches
_STUDY_OF_SERIES = {"ModalitiesInStudy": "Modality"}
# summaries, returned but never matched on
SUMMARIES = frozenset({"NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances",
                       "NumberOfSeriesRelatedInstances"})
_INSTANCES = "CASE WHEN level = 'series' THEN coalesce(instance_count, 0) ELSE 1 END"


@dataclass(frozen=True, slots=True)
class Match:
    """One attribute's condition: any of `values` (one value, or a list of UIDs), or a
    `pattern` (`*` any run of characters, `?` any one), or a date range (either end open)."""
    keyword: str
    values: tuple[str, ...] = ()
    pattern: str | None = None
    earliest: date | None = None
    latest: date | None = None


@dataclass(frozen=True, slots=True)
class DicomQuery:
    level: str
    matches: tuple[Match, ...] = ()
    limit: int | None = None  # None: as many as MAX_ROWS
    offset: int = 0


@dataclass(frozen=True, slots=True)
class Study:
    study_uid: str
    study_date: date | None
    description: str | None
    patient_id: str | None
    patient_sex: str | None
    modalities: tuple[str, ...]
    series_count: int
    instance_count: int


@dataclass(frozen=True, slots=True)
class Series:
    study_uid: str
    series_uid: str
    modality: str | None
    number: str | None
    description: str | None
    body_part: str | None
    series_date: date | None
    instance_count: int


@dataclass(frozen=True, slots=True)
class Instance:
    study_uid: str
    series_uid: str
    sop_class_uid: str | None
    sop_instance_uid: str
    number: int | None


@dataclass(frozen=True, slots=True)
class Found:
    """A page of matches, and whether more matched beyond MAX_ROWS than were asked for."""
    rows: tuple[Study, ...] | tuple[Series, ...] | tuple[Instance, ...]
    truncated: bool


def matchable(level: str) -> frozenset[str]:
    """The keywords a query at `level` can match on and the catalogue holds."""
    held = {**_STUDY_ATTRIBUTES}
    if level == STUDY:
        held.update(_STUDY_OF_SERIES)
    else:
        held.update(_SERIES_ATTRIBUTES)
    if level == INSTANCE:
        held.update(_INSTANCE_ATTRIBUTES)
    return frozenset(held)


def _type_of(keyword: str) -> str | None:
    keyword = _STUDY_OF_SERIES.get(keyword, keyword)
    return {**_STUDY_ATTRIBUTES, **_SERIES_ATTRIBUTES, **_INSTANCE_ATTRIBUTES}.get(keyword)


def _like(pattern: str) -> str:
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


def _condition(match: Match, level: str) -> tuple[str, list]:
    """SQL over item rows for one match, with its parameters."""
    kind = _type_of(match.keyword) if match.keyword in matchable(level) else None
    if match.pattern is not None and set(match.pattern) <= {"*"}:
        return "TRUE", []  # universal match, even on what the catalogue does not hold
    if kind is None:
        return "FALSE", []
    column = _STUDY_OF_SERIES.get(match.keyword, match.keyword)
    if match.pattern is not None:
        return f'"{column}" LIKE ? ESCAPE \'\\\'', [_like(match.pattern)]
    if kind == _DATE:
        parts, params = [], []
        if match.earliest is not None:
            parts.append(f'"{column}" >= ?')
            params.append(match.earliest.isoformat())
        if match.latest is not None:
            parts.append(f'"{column}" <= ?')
            params.append(match.latest.isoformat())
        return " AND ".join(parts) or "TRUE", params
    if kind == _NUMBER:
        return f'CAST("{column}" AS VARCHAR) = ?', [match.values[0]]
    return f'list_contains(?, "{column}")', [list(match.values)]


_KEY = {STUDY: "StudyInstanceUID", SERIES: "SeriesInstanceUID", INSTANCE: "SOPInstanceUID"}


def search(catalog: Catalog, version: int, query: DicomQuery,
           hidden: frozenset[str]) -> Found:
    """The studies, series or instances of `version` that `query` matches, leaving out the
    `hidden` collections, in the order of their UIDs."""
    items = catalog.relation(version, "items")
    where: list[str] = ["NOT list_contains(?, collection_id)"]
    params: list = [sorted(hidden)]
    if query.level == INSTANCE:
        where.append("level = 'instance'")
    for match in query.matches:
        sql, values = _condition(match, query.level)
        where.append(sql)
        params.extend(values)
    key = _KEY[query.level]
    limit = min(query.limit if query.limit is not None else MAX_ROWS, MAX_ROWS)
    page = (f'SELECT DISTINCT "{key}" AS k FROM {items} WHERE {" AND ".join(where)} '
            f"ORDER BY k LIMIT ? OFFSET ?")
    params += [limit + 1, query.offset]
    con = catalog.connection()
    if query.level == STUDY:
        rows = con.execute(
            f"WITH page AS ({page}) SELECT StudyInstanceUID, any_value(StudyDate), "
            "any_value(StudyDescription), any_value(PatientID), any_value(PatientSex), "
            "list_sort(list_distinct(list(Modality))), count(DISTINCT SeriesInstanceUID), "
            f"sum({_INSTANCES}) FROM {items} WHERE StudyInstanceUID IN (SELECT k FROM page) "
            "AND NOT list_contains(?, collection_id) "
            "GROUP BY StudyInstanceUID ORDER BY StudyInstanceUID",
            [*params, sorted(hidden)]).fetchall()
        found: tuple = tuple(Study(r[0], _day(r[1]), r[2], r[3], r[4], tuple(r[5]), r[6],
                                   int(r[7] or 0)) for r in rows)
    elif query.level == SERIES:
        rows = con.execute(
            f"WITH page AS ({page}) SELECT any_value(StudyInstanceUID), SeriesInstanceUID, "
            "any_value(Modality), any_value(SeriesNumber), any_value(SeriesDescription), "
            f"any_value(BodyPartExamined), any_value(SeriesDate), sum({_INSTANCES}) "
            f"FROM {items} WHERE SeriesInstanceUID IN (SELECT k FROM page) "
            "AND NOT list_contains(?, collection_id) "
            "GROUP BY SeriesInstanceUID ORDER BY SeriesInstanceUID",
            [*params, sorted(hidden)]).fetchall()
        found = tuple(Series(r[0], r[1], r[2], r[3], r[4], r[5], _day(r[6]), int(r[7] or 0))
                      for r in rows)
    else:
        rows = con.execute(
            f"SELECT StudyInstanceUID, SeriesInstanceUID, SOPClassUID, SOPInstanceUID, "
            f"InstanceNumber FROM {items} WHERE {' AND '.join(where)} "
            "ORDER BY SOPInstanceUID LIMIT ? OFFSET ?", params).fetchall()
        found = tuple(Instance(*r) for r in rows)
    truncated = len(found) > limit and (query.limit is None or query.limit > MAX_ROWS)
    return Found(found[:limit], truncated)


def _day(value) -> date | None:
    if value is None or isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        return None
