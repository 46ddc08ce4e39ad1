"""The NBIA search index of a data version, on disk.

NBIA thinks in patients -> studies -> series; the catalogue holds one row per series (the IDC
import) or per instance (ingested files). Each published version gets an index of Parquet
files beside the catalogue, which `search` reads through DuckDB views: one row per series
with image counts and sizes summed over instance rows and a stable integer key per series
and per patient (`series`), a rollup of series per patient, study and combination of the
facts a simple search filters on (`rollup`), study and series counts per patient
(`patients`) and patients per collection and modality, body part or manufacturer
(`facets`); plus the version's collection facts with species resolved (`collections`).

The tables are cut into chunks, each holding whole collections, a contiguous run of them in
collection order, and about CHUNK_ROWS series (a collection larger than that is a chunk of
its own). Publish builds a version's index from the previous version's (`IndexChange`): the
chunks whose collections the version left alone are hard links to the previous index's
files; only the chunks holding a changed collection are written again, so a publish costs
what its batch touches, not what the archive holds. `chunks.json` lists the chunks in order:
a reader scans their files in that order, which is SERIES_ORDER, so whole lists stream
from the index unsorted.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from .catalog import Catalog, copy_to_parquet, parquet_scan, stable_pk_sql, sync_folder

# The layout of an index folder; a folder of another layout is never read (its name differs).
INDEX_FORMAT = 2
# The chunked tables of an index, each read through a view named nbia_{table}_v{version}.
INDEX_TABLES = ("series", "rollup", "patients", "facets")
# Series per chunk a build aims at: writing a full one again costs ~0.25 s on a 2-core machine
# (a publish into a collection pays it), and a query ~1 ms per chunk (at 131,072 an ingest of
# 1,000 files onto the imported IDC catalogue took 1.42 x the same into an empty archive, at
# 65,536 1.24 x, NBIA search latency the same within its noise).
CHUNK_ROWS = 65_536
# The collection facts a search needs, as the index keeps them (species resolved)
INDEX_COLLECTION_COLUMNS = ("collection_id", "collection_name", "species", "doi", "description",
                            "date_updated", "license_short_name", "license_long_name",
                            "license_url")
FACETS = ("Modality", "BodyPartExamined", "Manufacturer")
# What a simple search filters on, per patient and study: the rollup's grouping columns.
ROLLUP_COLUMNS = ("patient_no", "study_key", "collection_id", "collection", "PatientID",
                  "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
                  "StudyDate", "third_party", "commercial_restricted")
# The order of series in list answers, and of the index's series rows
SERIES_ORDER = "collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID"
# The subject order of patients (the NBIA search's default sort)
SUBJECT_ORDER = ("PatientID", "collection", "collection_id")
_DESCRIPTIVE = (
    "Modality", "BodyPartExamined", "Manufacturer", "ManufacturerModelName",
    "SeriesDescription", "SeriesNumber", "SeriesDate", "StudyDate", "StudyDescription",
    "PatientSex", "PatientAge", "EthnicGroup", "SOPClassUID", "license_short_name",
    "source_DOI", "analysis_result_id",
)
_EMPTY = "empty"  # each table's zero-row file, scanned first: the schema of an index without rows


@dataclass(frozen=True)
class Chunk:
    """Files of every table named `name`, holding these collections' rows (series per
    collection, in collection order)."""

    name: str
    collections: dict[str, int]

    @property
    def rows(self) -> int:
        return sum(self.collections.values())

    @property
    def first(self) -> str:
        return next(iter(self.collections))

    @property
    def last(self) -> str:
        return next(reversed(self.collections))


@dataclass(frozen=True)
class IndexFiles:
    """A built index folder and its chunks, in order."""

    folder: Path
    chunks: tuple[Chunk, ...]

    def paths(self, table: str) -> list[Path]:
        """The files of one table, in the order they are read."""
        return [self.folder / table / f"{name}.parquet"
                for name in (_EMPTY, *(c.name for c in self.chunks))]

    def scan(self, table: str) -> str:
        """DuckDB's read of one table's files, in order."""
        return "read_parquet([" + ", ".join(
            "'" + str(p).replace("'", "''") + "'" for p in self.paths(table)) + "])"


def read_index(folder: Path) -> IndexFiles:
    listed = json.loads((folder / "chunks.json").read_text())
    return IndexFiles(folder, tuple(Chunk(c["name"], c["collections"])
                                    for c in listed["chunks"]))


def index_dir(catalog: Catalog, version: int) -> Path:
    """Where a version's index lies: in the catalogue's folder, beside what it is built from."""
    return catalog.dir / "indexes" / f"nbia-v{version}.{INDEX_FORMAT}"


@dataclass(frozen=True)
class IndexChange:
    """What a version changed of the one before it, for its index to be built from that one's:
    the collections whose item rows or facts it changed (publish knows them)."""

    previous: int
    collections: frozenset[str]


def build_search_index(catalog: Catalog, version: int,
                       change: IndexChange | None = None) -> IndexFiles:
    """A version's index, built first unless it is there already: publish calls this once a
    version is published, so that no server has to build it at start; a server builds it
    itself for a version that has none. A published version never changes its rows, so a built
    index never goes stale. With `change`, and the previous version's index in place, only the
    chunks holding changed collections are written (see `_write_index`).

    The index is written in a temporary folder beside its place, synced and renamed into place
    whole: a crash, or another process, never sees half of one. Builds hold an flock on
    indexes/build.lock, so a process that finds another one building waits for it and takes
    its index; and the temporary folders found while holding it are those of builds that
    died, which are removed. Where the lock does not reach (another host, on a file system
    whose locks are local), two builds may race: the loser finds the index in place and keeps
    it."""
    folder = index_dir(catalog, version)
    if folder.is_dir():
        return read_index(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with _build_lock(folder.parent):
        if folder.is_dir():
            return read_index(folder)  # built by the process this one waited for
        for leftover in folder.parent.glob(".nbia-v*.tmp-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{uuid.uuid4().hex}")
        tmp.mkdir()
        try:
            since = None
            if change is not None and index_dir(catalog, change.previous).is_dir():
                since = (read_index(index_dir(catalog, change.previous)),
                         frozenset(change.collections))
            _write_index(catalog, version, tmp, since)
            for sub in (*INDEX_TABLES, None):
                sync_folder(tmp / sub if sub else tmp)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.is_dir():
                    raise
                shutil.rmtree(tmp)
            sync_folder(folder.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return read_index(folder)


def _write_index(catalog: Catalog, version: int, folder: Path,
                 since: tuple[IndexFiles, frozenset[str]] | None = None) -> None:
    """A version's index in `folder`: chunks.json, collections.parquet and a folder of chunk
    files per table of INDEX_TABLES. The `series` rows of each chunk are written in
    SERIES_ORDER; `rollup`, `patients` and `facets` are computed from a chunk's series file,
    so no table is held in memory. Sums are cast to BIGINT: DuckDB's sums are HUGEINTs, which
    it writes to Parquet as doubles. A patient's number is a hash of (collection, PatientID),
    like a series' key of its UID, so chunks are computed apart.

    `since` (the previous version's index, and the collections this version changed): series
    are worked out from item rows for the changed collections alone (segments are sorted by
    collection: the rest of their row groups are skipped); chunks of the previous index that
    hold none of them are linked, and the others written again from their own series files
    and the fresh rows (see `_plan`)."""
    items = catalog.relation(version, "items")
    collections = catalog.relation(version, "collections")
    con = catalog.connection()
    changed_sql, params = "", []
    if since is not None:
        # (a constant IN list, which DuckDB checks against each row group's statistics)
        params = sorted(since[1])
        changed_sql = (f"AND collection_id IN ({', '.join('?' * len(params))})" if params
                       else "AND false")
    for table in INDEX_TABLES:
        (folder / table).mkdir()
    # (unsorted: each chunk sorts its own rows; a sort of all of them here, 2M series at
    # 58.8M instances, ran past the engine's memory)
    fresh = folder / "fresh.parquet"
    copy_to_parquet(con, _fresh_series_sql(items, collections, changed_sql), fresh,
                    params + params)
    fresh_rows = dict(con.execute(f"SELECT collection_id, count(*) FROM {parquet_scan(fresh)} "
                                  f"GROUP BY 1 ORDER BY 1").fetchall())
    previous = since[0] if since is not None else IndexFiles(folder, ())
    plan = _plan(previous.chunks, since[1] if since is not None else frozenset(), fresh_rows)
    for part in plan:
        if isinstance(part, Chunk):  # left alone by this version: its files are linked
            for table in INDEX_TABLES:
                os.link(previous.folder / table / f"{part.name}.parquet",
                        folder / table / f"{part.name}.parquet")
    written = [part if isinstance(part, Chunk) else _write_chunk(con, folder, part, previous, fresh)
               for part in plan]
    _write_tables(con, "SELECT * FROM " + parquet_scan(fresh) + " LIMIT 0", folder, _EMPTY)
    fresh.unlink()
    (folder / "chunks.json").write_text(json.dumps(
        {"format": INDEX_FORMAT,
         "chunks": [{"name": c.name, "collections": c.collections} for c in written]}, indent=1))
    _write_collections(con, items, collections, folder, since)


def _fresh_series_sql(items: str, collections: str, changed_sql: str) -> str:
    """One row per series of the item rows (of the changed collections only, by
    `changed_sql`), with what the index adds: collection name, license, keys."""
    described = ", ".join(_DESCRIPTIVE)
    first_values = ", ".join(f"any_value({c}) AS {c}" for c in _DESCRIPTIVE)
    return f"""
        WITH series AS (
            SELECT collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID,
                   {described}, instance_count AS image_count,
                   series_size_bytes AS size_bytes, version_min
            FROM {items} WHERE level = 'series' {changed_sql}
            UNION ALL BY NAME
            SELECT collection_id, SeriesInstanceUID, any_value(PatientID) AS PatientID,
                   any_value(StudyInstanceUID) AS StudyInstanceUID, {first_values},
                   sum(instance_count)::BIGINT AS image_count,
                   sum(coalesce(instance_size, series_size_bytes))::BIGINT AS size_bytes,
                   min(version_min) AS version_min
            FROM {items} WHERE level = 'instance' {changed_sql}
            GROUP BY collection_id, SeriesInstanceUID),
        licenses AS (
            SELECT license_short_name, any_value(license_long_name) AS license_long_name,
                   any_value(license_url) AS license_url
            FROM {collections} WHERE license_short_name IS NOT NULL GROUP BY 1)
        SELECT s.*, coalesce(c.collection_name, s.collection_id) AS collection,
               l.license_long_name, l.license_url,
               s.analysis_result_id IS NOT NULL AS third_party,
               coalesce(contains(upper(s.license_short_name), 'NC'), false)
                   AS commercial_restricted,
               {stable_pk_sql("s.collection_id || '/' || coalesce(s.PatientID, chr(0))")}
                   ::BIGINT AS patient_no,
               hash(s.StudyInstanceUID) AS study_key,
               {stable_pk_sql('s.SeriesInstanceUID')} AS series_pk
        FROM series s
        LEFT JOIN {collections} c ON c.collection_id = s.collection_id
        LEFT JOIN licenses l ON l.license_short_name = s.license_short_name"""


# A chunk to write: its collections, each with where its rows come from (the name of a previous
# chunk, or None for the fresh rows) and how many there are
_Group = list[tuple[str, str | None, int]]


def _plan(previous: tuple[Chunk, ...], changed: frozenset[str],
          fresh_rows: dict[str, int]) -> list[Chunk | _Group]:
    """The new index's chunks in order: previous chunks kept as they are, and groups of
    collections to write. A previous chunk is written again when it holds a changed
    collection, when a new collection falls within its range (its rows would be out of
    order), or when it and a neighbour both hold fewer than CHUNK_ROWS / 2 series (so that
    the chunks stay few: at most 4 per CHUNK_ROWS series, plus one). Collections to write
    fill groups of up to CHUNK_ROWS series, in collection order."""
    dirty = {c.name for c in previous
             if changed & c.collections.keys()
             or any(c.first <= cid <= c.last for cid in fresh_rows)}
    while True:
        entries: list[tuple[str, Chunk | tuple[str, str | None, int]]] = []
        for chunk in previous:
            if chunk.name not in dirty:
                entries.append((chunk.first, chunk))
                continue
            entries += [(cid, (cid, chunk.name, n))
                        for cid, n in chunk.collections.items() if cid not in changed]
        entries += [(cid, (cid, None, n)) for cid, n in fresh_rows.items()]
        entries.sort(key=lambda e: e[0])
        plan: list[Chunk | _Group] = []
        for _, entry in entries:
            if isinstance(entry, Chunk):
                plan.append(entry)
            elif (plan and isinstance(plan[-1], list)
                  and _rows(plan[-1]) + entry[2] <= CHUNK_ROWS):
                plan[-1].append(entry)
            else:
                plan.append([entry])
        small = {part.name for pair in pairwise(plan)
                 if all(_rows(p) < CHUNK_ROWS // 2 for p in pair)
                 for part in pair if isinstance(part, Chunk)}
        if not small:
            return plan
        dirty |= small


def _rows(part: Chunk | _Group) -> int:
    return part.rows if isinstance(part, Chunk) else sum(n for _, _, n in part)


def _write_chunk(con, folder: Path, group: _Group, previous: IndexFiles, fresh: Path) -> Chunk:
    """Write one chunk's files from the fresh rows and previous chunks' series files."""
    sources: dict[Path, list[str]] = {}
    for cid, source, _ in group:
        path = fresh if source is None else previous.folder / "series" / f"{source}.parquet"
        sources.setdefault(path, []).append(cid)
    selects, params = [], []
    for path, cids in sources.items():
        selects.append(f"SELECT * FROM {parquet_scan(path)} "
                       f"WHERE collection_id IN ({', '.join('?' * len(cids))})")
        params += cids
    name = uuid.uuid4().hex
    _write_tables(con, f"SELECT * FROM ({' UNION ALL BY NAME '.join(selects)}) "
                       f"ORDER BY {SERIES_ORDER}", folder, name, params)
    return Chunk(name, {cid: n for cid, _, n in group})


def _write_tables(con, series_sql: str, folder: Path, name: str, params: list | None = None):
    """The files `name` of every table: the series of `series_sql`, and the tables computed
    from them."""
    copy_to_parquet(con, series_sql, folder / "series" / f"{name}.parquet", params)
    series = parquet_scan(folder / "series" / f"{name}.parquet")
    copy_to_parquet(con, f"SELECT {', '.join(ROLLUP_COLUMNS)}, count(*) AS series "
                         f"FROM {series} GROUP BY ALL", folder / "rollup" / f"{name}.parquet")
    copy_to_parquet(con, f"""
        SELECT patient_no, any_value(collection_id) AS collection_id,
               any_value(collection) AS collection, any_value(PatientID) AS PatientID,
               count(DISTINCT study_key) AS studies, count(*) AS series
        FROM {series} GROUP BY patient_no""", folder / "patients" / f"{name}.parquet")
    copy_to_parquet(con, " UNION ALL ".join(
        f"SELECT collection_id, '{column}' AS facet, {column} AS value, "
        f"count(DISTINCT patient_no) AS patients FROM {series} "
        f"WHERE {column} IS NOT NULL GROUP BY collection_id, {column}"
        for column in FACETS), folder / "facets" / f"{name}.parquet")


def _write_collections(con, items: str, collections: str, folder: Path,
                       since: tuple[IndexFiles, frozenset[str]] | None) -> None:
    """The version's collection facts. A collection ingested without metadata gets its species
    from its items (those of the collections this version left alone: as the previous index
    resolved them)."""
    facts = ", ".join("coalesce(nullif(c.species, ''), i.species) AS species"
                      if column == "species" else f"c.{column}"
                      for column in INDEX_COLLECTION_COLUMNS)
    changed = sorted(since[1]) if since is not None else []
    item_species = (f"SELECT collection_id, any_value(tcia_species) AS species FROM {items} "
                    f"WHERE tcia_species IS NOT NULL "
                    + (f"AND collection_id IN ({', '.join('?' * len(changed))}) " if changed
                       else "AND false " if since is not None else "")
                    + "GROUP BY 1")
    params: list = list(changed)
    if since is not None:
        item_species += (f" UNION ALL SELECT collection_id, species FROM "
                         f"{parquet_scan(since[0].folder / 'collections.parquet')} "
                         f"WHERE NOT list_contains(?, collection_id)")
        params.append(changed)
    copy_to_parquet(con, f"""
        SELECT {facts} FROM {collections} c
        LEFT JOIN ({item_species}) i ON i.collection_id = c.collection_id""",
                    folder / "collections.parquet", params)


@contextmanager
def _build_lock(folder: Path) -> Iterator[None]:
    """Hold the flock of `folder`/build.lock, waiting for it (see build_search_index); the
    kernel drops it when the process ends, however it ends."""
    fd = os.open(folder / "build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
