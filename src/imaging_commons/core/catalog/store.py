"""Catalogue storage and data versions.

The catalogue is a set of immutable Parquet files ("segments") plus one JSON manifest per
published version naming the files it is made of. Every item row carries the range of
versions it belongs to (`version_min`..`version_max`, open-ended when null), so one segment can
serve many versions (the IDC import holds 25 releases in one file) and a version is the union
of its segments filtered by that range. The archive grows by appending: each publish adds one
segment with the rows it brings and, when it replaces instances, a small tombstone file that
retires their old rows from then on (see items_sql); compaction merges small segments into
larger ones in the background (compaction.py). Publishing writes new files, then flips
`published.json` with one atomic rename: a crash at any moment leaves the published versions
exactly as they were.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from ...config import Archive
from ..errors import Conflict, InvalidRequest, NotFound, Unavailable
from .files import parquet_scan, write_json_atomic
from .tables import (
    COMPACTED_PREFIX,
    INGESTED_PREFIX,
    PUBLISHED_COLUMNS,
    _q,
    empty_items_sql,
    rank_column,
)

WRITER_BUSY = "another ingest or publish is running on this archive"


class WriterBusy(Conflict):
    """Another writer (ingest, publish, clinical-import, a compaction's swap) holds the
    archive's writer lock; waiting for it and trying again works."""

    def __init__(self) -> None:
        super().__init__(WRITER_BUSY)


class NothingPublished(Unavailable):
    """The archive has no published version yet: nothing can be answered from it."""


@dataclass(frozen=True, slots=True)
class Version:
    version: int
    date_active: str
    active: bool
    manifest: dict

    @property
    def label(self) -> str:
        """The wire form of a version, as IDC writes it ("25.0")."""
        return f"{self.version}.0"


class Catalog:
    """Reads and writes the catalogue of one archive. Thread-safe for readers.

    Nothing of the catalogue is held in memory: a version's tables are DuckDB views over its
    Parquet segments, read as queries need them within the engine's memory limit
    (IMAGING_COMMONS_MEMORY_LIMIT). Published versions never change what they return, but a
    compaction may change the files a version is made of: it then raises the catalogue's
    `generation`, and every process makes its views afresh (see compaction.py)."""

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
        self._views: dict[str, int] = {}  # view name -> the generation it was made at
        self._view_versions: dict[str, int] = {}  # items view -> its version
        self._published_mtime: float | None = None
        self._published: dict = {}
        self._manifests: dict[int, dict] = {}  # read once per generation
        self._manifests_generation = 0
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
            raise NothingPublished("No published version yet: run `imaging-commons import-idc` or "
                               "`imaging-commons ingest ... --publish` first.")
        return active

    def version(self, number: int) -> Version:
        state = self._state()
        if number not in state["versions"]:
            raise InvalidRequest(f"Unknown data version {number}", not_found=[str(number)])
        generation = int(state.get("generation", 0))
        if generation != self._manifests_generation:
            with self._lock:  # a compaction changed some versions' files: read them afresh
                self._manifests, self._manifests_generation = {}, generation
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
        m = (None if isinstance(label, bool)
             else re.fullmatch(r"v?([0-9]+)(\.0*)?", str(label).strip().lower(), re.ASCII))
        if m is None or int(m[1]) not in self._state()["versions"]:
            raise InvalidRequest(f"Unknown data version {label}", not_found=[str(label)])
        return int(m[1])

    def publish_version(self, manifest: dict, number: int | None = None,
                        active: bool = True) -> int:
        """Make a version visible. Files named by the manifest must already be in place."""
        with self._lock:
            state = dict(self._state())
            versions = list(state["versions"])
            number = number if number is not None else (max(versions, default=0) + 1)
            if number in versions:
                raise Conflict(f"Version {number} is already published and is immutable")
            manifest = {**manifest, "version": number}
            manifest.setdefault("date_active", dt.date.today().isoformat())
            write_json_atomic(self.versions_dir / f"{number}.json", manifest)
            versions.append(number)
            versions.sort()
            new_active = number if active or state["active"] is None else state["active"]
            write_json_atomic(self.published_file, {**state, "versions": versions,
                                                    "active": new_active})
            return number

    def replace_files(self, manifests: dict[int, dict]) -> None:
        """Give published versions new manifests that name other files holding the same rows
        (a compaction's work), then raise the generation so every process reads them afresh.
        Each manifest is replaced atomically; a version returns the same rows from either."""
        with self._lock:
            for number, manifest in sorted(manifests.items()):
                write_json_atomic(self.versions_dir / f"{number}.json", manifest)
            self.raise_generation()

    def raise_generation(self) -> None:
        with self._lock:
            state = dict(self._state())
            state["generation"] = int(state.get("generation", 0)) + 1
            write_json_atomic(self.published_file, state)

    def new_segment_path(self, prefix: str) -> Path:
        return self.segments_dir / f"{prefix}-{uuid.uuid4().hex[:12]}.parquet"

    # ----- query engine -------------------------------------------------------------------
    def connection(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the shared in-memory DuckDB database that holds the catalogue's views."""
        with self._lock:
            if self._con is None:
                self._con = duckdb.connect(":memory:", config={
                    "threads": os.cpu_count() or 2,
                    # (DuckDB's default, relied on: a query without ORDER BY gives a file's
                    # rows in the order they were written, which NBIA's lists stream in)
                    "preserve_insertion_order": True,
                    "memory_limit": self.archive.memory_limit,
                    # sorts and results larger than memory spill here (DuckDB's default is
                    # .tmp in whatever directory the process was started from)
                    "temp_directory": str(self.archive.process_scratch_dir() / "duckdb")})
                # every Parquet file read is immutable (segments and index chunks are
                # written under new names), so each one's footer is parsed once, not per
                # query (a search reads a file per index chunk)
                self._con.execute("SET parquet_metadata_cache = true")
            return self._con.cursor()

    @property
    def generation(self) -> int:
        """Raised by each compaction that changed the files versions are made of."""
        return int(self._state().get("generation", 0))

    def segment_sql(self, file_name: str, row_numbers: bool = False) -> str:
        """A segment's rows; with `row_numbers`, each row's place in the file as
        `file_row_number` too (a filter on it skips the row groups before)."""
        return parquet_scan(self.segments_dir / file_name,
                            ", file_row_number = true" if row_numbers else "")

    def items_sql(self, manifest: dict, number: int, row_numbers: bool = False) -> str:
        """The item rows of version `number` as made of `manifest`'s files: each segment's rows
        whose version range holds the version, less those a later publish retired (the
        `retired` files: an instance replaced or moved to another collection is retired in the
        version that replaced it, and its old row stays in its segment for older versions)."""
        files = manifest.get("items") or []
        parts = [f"SELECT * FROM {self.segment_sql(f, row_numbers)} "
                 f"WHERE version_min <= {int(number)} "
                 f"AND (version_max IS NULL OR version_max >= {int(number)})" for f in files]
        union = " UNION ALL BY NAME ".join(parts) if parts else empty_items_sql()
        retired = manifest.get("retired") or []
        if not retired:
            return union
        tombstones = "read_parquet([" + ", ".join(
            f"'{self.segments_dir / f}'" for f in retired) + "])"
        return (f"SELECT * FROM ({union}) i WHERE NOT EXISTS (SELECT 1 FROM {tombstones} t "
                f"WHERE t.SOPInstanceUID = i.SOPInstanceUID AND t.retired_in > i.version_min "
                f"AND t.retired_in <= {int(number)})")

    def relation(self, number: int, kind: str) -> str:
        """Name of a view over one kind of table ('items', 'collections', 'analysis_results')
        of a version; made on first use, and again after a compaction."""
        view = f"{kind}_v{number}"
        with self._lock:
            manifest = self.version(number).manifest  # (re-reads manifests of a new generation)
            if self._views.get(view) == self._manifests_generation:
                return view
            files = manifest.get(kind) or []
            if kind == "items":
                sql = self.items_sql(manifest, number)
            else:
                if not files:
                    raise NotFound(f"Version {number} has no {kind} table")
                sql = " UNION ALL BY NAME ".join(
                    f"SELECT * FROM {self.segment_sql(f)} "
                    f"WHERE list_contains(idc_data_versions, {int(number)})" for f in files)
            self.connection().execute(f"CREATE OR REPLACE VIEW {_q(view)} AS {sql}")
            self._views[view] = self._manifests_generation
            if kind == "items":
                self._view_versions[view] = number
            return view

    def segment_relation(self, number: int, *file_names: str) -> str:
        """Name of a view over the rows in a version of some of its item segments (or of a
        segment's copy in another order; see keyset.py), tombstones applied, with
        `file_row_number`: what keyset pages read a segment from a row on through."""
        view = f"items_v{number} " + (  # (no dot: a query names the view as it is)
            Path(file_names[0]).stem.replace(".", " ") if len(file_names) == 1
            else hashlib.sha256("/".join(file_names).encode()).hexdigest())
        with self._lock:
            manifest = self.version(number).manifest
            if self._views.get(view) != self._manifests_generation:
                sql = self.items_sql({**manifest, "items": list(file_names)}, number,
                                     row_numbers=True)
                self.connection().execute(f"CREATE OR REPLACE VIEW {_q(view)} AS {sql}")
                self._views[view] = self._manifests_generation
            return view

    def key_ranks(self, relation: str) -> dict[str, str]:
        """{key: its rank column} for the keys that are present, unique and ranked in every row
        of an items view (of relation()): ordering its rows by such a key's rank orders them by
        the key, and any selection that includes the key is already distinct. The IDC import
        works them out for each release it makes (its segments carry the ranks); a version
        made by ingest has none."""
        number = self._view_versions.get(relation)
        if number is None:
            return {}
        return {key: rank_column(key)
                for key in self.version(number).manifest.get("unique_keys", [])}

    def instance_counts(self, number: int) -> dict[str, int] | None:
        """A version's instance rows per collection, as its publish counted them, without a
        scan (None for a version an earlier release published, until a compaction counts
        it)."""
        return self.version(number).manifest.get("instances")

    def ingested_segments(self) -> list[str]:
        """The item segments of ingest (or of compaction) that any published version names."""
        return sorted({f for v in self.versions() for f in self.ingested_segments_of(v.manifest)})

    @staticmethod
    def ingested_segments_of(manifest: dict) -> list[str]:
        return [f for f in manifest.get("items", [])
                if f.startswith((INGESTED_PREFIX, COMPACTED_PREFIX))]

    def published_instances(self, sops: list[str]) -> pa.Table:
        """The active version's rows of the given instances (those it holds): SOPInstanceUID,
        crdc_instance_uuid, collection_id and analysis_result_id."""
        active = self._state()["active"]
        if active is None or not sops:
            return pa.table({c: pa.array([], pa.string()) for c in PUBLISHED_COLUMNS})
        return self.connection().execute(
            f"SELECT {', '.join(PUBLISHED_COLUMNS)} FROM {_q(self.relation(active, 'items'))} "
            f"WHERE SOPInstanceUID IN (SELECT unnest(?))", [sops]).to_arrow_table()

    def clinical_tables(self, number: int) -> list[dict]:
        """Clinical sources of a version: [{source, collection_id, table, columns:{name:type}}]."""
        out = []
        for entry in self.version(number).manifest.get("clinical", []):
            table = "clinical_" + Path(entry["file"]).stem.replace("-", "_")
            with self._lock:
                if table not in self._views:
                    self.connection().execute(f"CREATE OR REPLACE VIEW {_q(table)} AS "
                                              f"SELECT * FROM {self.segment_sql(entry['file'])}")
                    self._views[table] = 0  # (clinical files are never compacted)
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
        second writer, in any process (or another thread of this one), gets WriterBusy. The
        lock is an flock on catalog/writer.lock, which the kernel drops when the process ends,
        however it ends; processes forked while it is held share it (ingest's workers), so it
        lasts until the last of them is gone."""
        if not self._writer.acquire(blocking=False):
            raise WriterBusy()
        try:
            if self._writer_fd is not None:
                yield False
                return
            fd = os.open(self.dir / "writer.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise WriterBusy() from None
            self._writer_fd = fd
            try:
                yield True
            finally:
                self._writer_fd = None
                os.close(fd)
        finally:
            self._writer.release()
