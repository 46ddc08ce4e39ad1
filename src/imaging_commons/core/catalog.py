"""Catalogue storage and data versions.

The catalogue is a set of immutable Parquet files ("segments") plus one JSON manifest per
published version naming the files it is made of. Every item row carries the range of
versions it belongs to (`version_min`..`version_max`, open-ended when null), so one segment can
serve many versions (the IDC import holds 25 releases in one file) and a version is the union
of its segments filtered by that range. Publishing writes new files, then flips
`published.json` with one atomic rename: a crash at any moment leaves the published versions
exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import threading
import uuid
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from ..config import Archive
from .schema import COLUMNS, SQL_TYPES

ITEM_COLUMNS = [c.name for c in COLUMNS]
log = logging.getLogger(__name__)

# Columns that can single out an item row, which manifests and queries are often ordered by.
# Loaded item segments carry each one's rank: its place in the sort order of that column's
# values across every loaded segment, worked out in the background once segments load. A result
# led by one of them, where it is unique in the version, is then sorted by integers instead of
# long strings that share long prefixes.
RANKED_KEYS = ("SeriesInstanceUID", "SOPInstanceUID", "crdc_series_uuid", "crdc_instance_uuid",
               "gcs_url")


def rank_column(key: str) -> str:
    """The rank of `key`'s value (a name no attribute can have: it holds a space)."""
    return f"{key} rank"

COLLECTION_COLUMNS = {
    "collection_id": "VARCHAR",
    "collection_name": "VARCHAR",
    "cancer_type": "VARCHAR",
    "tumor_location": "VARCHAR",
    "species": "VARCHAR",
    "subject_count": "BIGINT",
    "doi": "VARCHAR",
    "description": "VARCHAR",
    "program": "VARCHAR",
    "image_types": "VARCHAR",
    "supporting_data": "VARCHAR",
    "status": "VARCHAR",
    "date_updated": "VARCHAR",
    "license_short_name": "VARCHAR",
    "license_long_name": "VARCHAR",
    "license_url": "VARCHAR",
    "location": "VARCHAR",
    "restricted": "BOOLEAN",
}

ANALYSIS_RESULT_COLUMNS = {
    "analysis_result_id": "VARCHAR",
    "title": "VARCHAR",
    "doi": "VARCHAR",
    "location": "VARCHAR",
    "subject_count": "BIGINT",
    "collections": "VARCHAR",
    "modalities": "VARCHAR",
    "cancer_type": "VARCHAR",
    "date_updated": "VARCHAR",
    "license_short_name": "VARCHAR",
    "description": "VARCHAR",
}


class CatalogError(Exception):
    """A catalogue operation that cannot be done as asked (unknown version, nothing staged...)."""


WRITER_BUSY = "another ingest or publish is running on this archive"


@dataclass(frozen=True)
class Version:
    version: int
    date_active: str
    active: bool
    manifest: dict

    @property
    def label(self) -> str:
        """The wire form of a version, as IDC writes it ("25.0")."""
        return f"{self.version}.0"


def items_select(con: duckdb.DuckDBPyConnection, source_sql: str) -> str:
    """A SELECT that shapes any relation into the item schema, in schema column order:
    columns the source lacks become typed NULLs."""
    present = {d[0] for d in con.execute(f"SELECT * FROM ({source_sql}) LIMIT 0").description}
    cols = ", ".join(
        f"CAST({_q(c) if c in present else 'NULL'} AS {SQL_TYPES[c]}) AS {_q(c)}"
        for c in ITEM_COLUMNS
    )
    return f"SELECT {cols} FROM ({source_sql})"


def empty_items_sql() -> str:
    return "SELECT " + ", ".join(
        f"CAST(NULL AS {SQL_TYPES[c]}) AS {_q(c)}" for c in ITEM_COLUMNS
    ) + " WHERE false"


def normalise_collection_id(name: str) -> str:
    """IDC's collection_id form: lower case, '-' and ' ' become '_' (TCGA-LUAD -> tcga_luad)."""
    return re.sub(r"[-\s]", "_", name.strip().lower())


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def write_json_atomic(path: Path, data) -> None:
    """Replace a JSON file all at once: a reader (or a crash) sees the old file or the new one.
    The folder is synced too, so the rename itself survives a power cut."""
    with _written_aside(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def copy_to_parquet(con: duckdb.DuckDBPyConnection, select_sql: str, path: Path,
                    params: list | None = None) -> None:
    """Write a query result to a Parquet file atomically (temp name, fsync, rename)."""
    with _written_aside(path) as tmp:
        con.execute(f"COPY ({select_sql}) TO '{tmp}' (FORMAT parquet, COMPRESSION zstd)",
                    params or [])


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write an Arrow table to a Parquet file atomically, as copy_to_parquet does."""
    with _written_aside(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


@contextmanager
def _written_aside(path: Path) -> Iterator[Path]:
    """A temporary name beside `path` for the caller to write; synced and renamed over `path`
    once written, removed if the writing fails (a full disk must not keep the partial copy)."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        _sync_and_rename(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def _sync_and_rename(tmp: Path, path: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Catalog:
    """Reads and writes the catalogue of one archive. Thread-safe for readers."""

    def __init__(self, archive: Archive):
        self.archive = archive
        self.dir = archive.catalog_dir
        self.segments_dir = self.dir / "segments"
        self.versions_dir = self.dir / "versions"
        self.staging_dir = self.dir / "staging"
        for d in (self.segments_dir, self.versions_dir, self.staging_dir):
            d.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._loaded: dict[str, str] = {}  # file name -> in-memory table name
        self._item_tables: list[str] = []  # the loaded item segments, which share key ranks
        self._item_views: list[str] = []
        self._ranks_stale = False  # an item segment was loaded since the last ranking
        self._key_ranks: dict[str, dict[str, str]] = {}  # items view -> {unique key: rank}
        self._ranker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="key-ranks")
        self._ranking: Future | None = None  # the last ranking started
        self._ranking_active = False
        self._published_mtime: float | None = None
        self._published: dict = {}
        self._manifests: dict[int, dict] = {}  # published versions never change
        self._restricted: dict[int, frozenset[str]] = {}
        self._writer = threading.RLock()
        self._writer_fd: int | None = None  # the writer lock's file, while this catalogue holds it

    # ----- published versions -------------------------------------------------------------
    @property
    def published_file(self) -> Path:
        return self.dir / "published.json"

    def _state(self) -> dict:
        try:
            mtime = self.published_file.stat().st_mtime_ns
        except FileNotFoundError:
            return {"versions": [], "active": None}
        if mtime != self._published_mtime:
            self._published = json.loads(self.published_file.read_text())
            self._published_mtime = mtime
        return self._published

    def versions(self) -> list[Version]:
        state = self._state()
        return [self.version(v) for v in state["versions"]]

    def active_version(self) -> int:
        active = self._state()["active"]
        if active is None:
            raise CatalogError("No published version yet: run `imaging-commons import-idc` or "
                               "`imaging-commons ingest ... --publish` first.")
        return active

    def version(self, number: int) -> Version:
        state = self._state()
        if number not in state["versions"]:
            raise CatalogError(f"Unknown data version {number}")
        manifest = self._manifests.get(number)
        if manifest is None:
            manifest = json.loads((self.versions_dir / f"{number}.json").read_text())
            self._manifests[number] = manifest
        return Version(number, manifest["date_active"], number == state["active"], manifest)

    def parse_version(self, label: str | int | None) -> int:
        """Accept "25", "25.0", "v25" or 25; None means the active version. Nothing looser
        (float() would read "1_0" or "1e1" as 10: a cohort pinned to a version nobody meant)."""
        if label is None or label == "":
            return self.active_version()
        if isinstance(label, bool):
            raise CatalogError(f"Unknown data version {label}")
        m = re.fullmatch(r"v?([0-9]+)(\.0*)?", str(label).strip().lower(), re.ASCII)
        if m is None or int(m[1]) not in self._state()["versions"]:
            raise CatalogError(f"Unknown data version {label}")
        return int(m[1])

    def publish_version(self, manifest: dict, number: int | None = None,
                        active: bool = True) -> int:
        """Make a version visible. Files named by the manifest must already be in place."""
        with self._lock:
            state = dict(self._state())
            versions = list(state["versions"])
            number = number if number is not None else (max(versions, default=0) + 1)
            if number in versions:
                raise CatalogError(f"Version {number} is already published and is immutable")
            manifest = {**manifest, "version": number}
            manifest.setdefault("date_active", dt.date.today().isoformat())
            write_json_atomic(self.versions_dir / f"{number}.json", manifest)
            versions.append(number)
            versions.sort()
            new_active = number if active or state["active"] is None else state["active"]
            write_json_atomic(self.published_file, {"versions": versions, "active": new_active})
            return number

    def new_segment_path(self, prefix: str) -> Path:
        return self.segments_dir / f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"

    # ----- query engine -------------------------------------------------------------------
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the shared in-memory DuckDB database that holds the loaded segments."""
        with self._lock:
            if self._con is None:
                self._con = duckdb.connect(":memory:", config={
                    "threads": os.cpu_count() or 2,
                    # (DuckDB's default, relied on: a query without ORDER BY gives a table's
                    # rows in the order they were inserted, which NBIA's lists stream in)
                    "preserve_insertion_order": True,
                    # sorts and results larger than memory spill here (DuckDB's default is
                    # .tmp in whatever directory the process was started from)
                    "temp_directory": str(self.archive.process_scratch_dir() / "duckdb")})
            return self._con.cursor()

    def _table_for(self, file_name: str, items: bool = False) -> str:
        """Load a segment into memory once; segments are immutable so the copy never goes stale.
        An item segment gets a column for each key's rank, filled in by _rank_keys."""
        with self._lock:
            if file_name not in self._loaded:
                table = "seg_" + Path(file_name).stem.replace("-", "_").replace(".", "_")
                con = self.connection()
                path = self.segments_dir / file_name
                ranks = "".join(f", NULL::INTEGER AS {_q(rank_column(k))}" for k in RANKED_KEYS)
                con.execute(f"CREATE OR REPLACE TABLE {_q(table)} AS "
                            f"SELECT *{ranks if items else ''} FROM read_parquet('{path}')")
                self._loaded[file_name] = table
                if items:
                    self._item_tables.append(table)
                    self._ranks_stale = True
            return self._loaded[file_name]

    def _rank_in_background(self) -> None:
        """Start ranking unless it is under way (it goes on while there is more to do). Called
        with the lock held."""
        if not self._ranking_active:
            self._ranking_active = True
            self._ranking = self._ranker.submit(self._rank_while_needed)

    def _rank_while_needed(self) -> None:
        """Rank the loaded segments again if one came since the last ranking, then find the
        unique keys of the views that have not had them found. A failure (memory, say) leaves
        those views sorting by their values, and the next segment to load tries again."""
        while True:
            with self._lock:
                stale, self._ranks_stale = self._ranks_stale, False
                tables = list(self._item_tables)  # (each view's segments are among them)
                views = [view for view in self._item_views if view not in self._key_ranks]
                if not stale and not views:
                    self._ranking_active = False
                    return
            try:
                if stale:
                    self._rank_keys(tables)
                found = {view: self._unique_keys(view) for view in views}
            except Exception:
                log.exception("ranking the catalogue's keys failed; results led by a key are "
                              "sorted by its values until another segment loads")
                with self._lock:
                    self._ranks_stale = self._ranks_stale or stale
                    self._ranking_active = False
                return
            with self._lock:
                self._key_ranks.update(found)

    def _rank_keys(self, tables: list[str]) -> None:
        """Rank every key's values across the loaded item segments (dense: equal values, equal
        ranks), so that ranks compare across the segments a version is made of. A new segment
        shifts the others' ranks: all are rewritten in one transaction, and a query running
        meanwhile sees the old ranks or the new ones, never a mix."""
        con = self.connection()
        con.execute("BEGIN TRANSACTION")
        try:
            for key in RANKED_KEYS:
                values = " UNION ALL ".join(
                    f"SELECT {part} AS part, rowid AS row, {_q(key)} AS value FROM {_q(table)} "
                    f"WHERE {_q(key)} IS NOT NULL" for part, table in enumerate(tables))
                con.execute("CREATE OR REPLACE TEMP TABLE key_ranks AS SELECT part, row, "
                            f"dense_rank() OVER (ORDER BY value)::INTEGER AS rank FROM ({values})")
                for part, table in enumerate(tables):
                    con.execute(f"UPDATE {_q(table)} SET {_q(rank_column(key))} = r.rank FROM "
                                f"key_ranks r WHERE r.part = {part} AND {_q(table)}.rowid = r.row")
            con.execute("DROP TABLE key_ranks")
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    def settle_ranks(self) -> None:
        """Wait for the ranking under way, if any: a server's warm-up does, so that its first
        requests are served as all later ones will be."""
        with self._lock:
            ranking = self._ranking
        if ranking is not None:
            ranking.result()

    def key_ranks(self, relation: str) -> dict[str, str]:
        """{key: its rank column} for the keys that are present, unique and ranked in every row
        of an items view (of relation()): ordering its rows by such a key's rank orders them by
        the key, and any selection that includes the key is already distinct. Empty until the
        view's segments are ranked."""
        return self._key_ranks.get(relation, {})

    def relation(self, number: int, kind: str) -> str:
        """Name of a view over one kind of table ('items', 'collections', 'analysis_results')
        of a version; created on first use."""
        view = f"{kind}_v{number}"
        with self._lock:
            if view in self._loaded:
                return view
            manifest = self.version(number).manifest
            files = manifest.get(kind) or []
            if kind == "items":
                parts = [
                    f"SELECT * FROM {_q(self._table_for(f, items=True))} "
                    f"WHERE version_min <= {int(number)} "
                    f"AND (version_max IS NULL OR version_max >= {int(number)})"
                    for f in files
                ] or [empty_items_sql()]
            else:
                parts = [
                    f"SELECT * FROM {_q(self._table_for(f))} "
                    f"WHERE list_contains(idc_data_versions, {int(number)})"
                    for f in files
                ]
                if not parts:
                    raise CatalogError(f"Version {number} has no {kind} table")
            self.connection().execute(
                f"CREATE OR REPLACE VIEW {_q(view)} AS " + " UNION ALL BY NAME ".join(parts))
            self._loaded[view] = view
            if kind == "items" and files:
                self._item_views.append(view)
                self._rank_in_background()
            return view

    def _unique_keys(self, view: str) -> dict[str, str]:
        """The keys whose values are all there, all different and all ranked in the view."""
        counts = self.connection().execute(
            "SELECT count(*), " + ", ".join(
                f"count({_q(rank_column(k))}), count(DISTINCT {_q(k)})" for k in RANKED_KEYS)
            + f" FROM {_q(view)}").fetchone()
        rows, per_key = counts[0], counts[1:]
        return {key: rank_column(key) for key, ranked, distinct
                in zip(RANKED_KEYS, per_key[::2], per_key[1::2]) if rows == ranked == distinct > 0}

    def clinical_tables(self, number: int) -> list[dict]:
        """Clinical sources of a version: [{source, collection_id, table, columns:{name:type}}]."""
        out = []
        for entry in self.version(number).manifest.get("clinical", []):
            table = self._table_for(entry["file"])
            out.append({**entry, "table": table})
        return out

    def restricted_collections(self, number: int) -> frozenset[str]:
        """Asked on every request (visibility), and fixed for a published version: read once."""
        restricted = self._restricted.get(number)
        if restricted is None:
            rows = self.connection().execute(
                f"SELECT collection_id FROM {self.relation(number, 'collections')} "
                "WHERE restricted").fetchall()
            restricted = self._restricted[number] = frozenset(r[0] for r in rows)
        return restricted

    # ----- staging ------------------------------------------------------------------------
    @property
    def stage_file(self) -> Path:
        return self.staging_dir / "stage.json"

    def stage(self) -> dict:
        if self.stage_file.exists():
            return json.loads(self.stage_file.read_text())
        return {}

    def write_stage(self, stage: dict) -> None:
        """Every stage carries an id, which the version it becomes records (see publish)."""
        stage.setdefault("id", uuid.uuid4().hex)
        write_json_atomic(self.stage_file, stage)

    def clear_stage(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        self.staging_dir.mkdir(parents=True, exist_ok=True)

    @contextmanager
    def writer_lock(self) -> Iterator[bool]:
        """Hold the archive's writer lock for a block; yields whether this call took it (False
        when the same thread holds it already: `ingest --publish` holds it across both).

        Ingest, publish and clinical-import rewrite the stage and put files in the archive: two
        at once would lose one's stage, publish a stage another is still writing, or take the
        other's new blobs for leftovers. So they take this lock first, without waiting: a
        second writer, in any process (or another thread of this one), gets CatalogError. The
        lock is an flock on catalog/writer.lock, which the kernel drops when the process ends,
        however it ends; processes forked while it is held share it (ingest's workers), so it
        lasts until the last of them is gone."""
        if not self._writer.acquire(blocking=False):
            raise CatalogError(WRITER_BUSY)
        try:
            if self._writer_fd is not None:
                yield False
                return
            fd = os.open(self.dir / "writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CatalogError(WRITER_BUSY) from None
            self._writer_fd = fd
            try:
                yield True
            finally:
                self._writer_fd = None
                os.close(fd)
        finally:
            self._writer.release()


def stable_pk(uid: str) -> int:
    """A stable integer key for a UID (NBIA's APIs address series and images by integer id):
    52 bits of its md5, so it survives any re-import and fits a JSON number exactly."""
    import hashlib

    return int.from_bytes(hashlib.md5(uid.encode()).digest()[:8], "little") >> 12


def stable_pk_sql(column_sql: str) -> str:
    """The same key computed inside DuckDB, so a query can filter on it."""
    return f"(md5_number_upper({column_sql}) >> 12)"
