"""Compaction: merging an archive's small item segments into larger sorted ones.

Every publish appends a segment of its own, and a tombstone file when it replaces instances
(see the catalog package). Many small segments make every query open many files, and retired
rows are filtered out at every query. Compaction merges the ingested segments smaller than
`merge_below_rows` into one, in ITEM_ORDER, with each retired row's version range closed at the
version before the one that retired it, so that the merged rows need no tombstone. It also
writes the indexes pages by key read (keyset.write_indexes) of any segment that lacks them
(one written by an earlier release), and counts the instance rows of any version whose
manifest lacks them.

What a crash can never do is change what a published version returns:
1. The merged segment is written (temporary name, fsync, rename) while nothing names it.
2. The files it replaces are recorded in `superseded.json` with the generation that replaces
   them, before any manifest names the merged one.
3. Under the archive's writer lock, each version that names them gets a manifest naming the
   merged file instead: each is replaced atomically, and a version returns the same rows from
   either. Then the catalogue's generation is raised, and every process makes its views afresh.
4. A superseded file is deleted by a later compaction once no manifest names it, the generation
   has passed it and `grace_s` has gone by (a query still reading it under the old manifests
   has ended by then). A file in the segments folder that no manifest names and that was
   never superseded was left by a writer that died before naming it; it is deleted at once.
A crash between 1 and 3 leaves an unnamed merged file (deleted later, as in 4); one during 3
leaves some versions on the merged file and some on the old ones, all correct; the next
compaction raises the generation it did not get to raise.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from .catalog import (
    COMPACTED_PREFIX,
    ITEM_ORDER,
    Catalog,
    WriterBusy,
    copy_to_parquet,
    write_json_atomic,
)
from .errors import Conflict
from .keyset import segment_of, write_indexes

log = logging.getLogger(__name__)


class CompactionBusy(Conflict):
    """Another compaction is running on the archive."""


MERGE_BELOW_ROWS = 8_000_000  # segments this large are left as they are
GRACE_S = 600.0  # how long a superseded file outlives the manifests that named it
SWAP_WAIT_S = 30.0  # how long the swap waits for an ingest or publish to end


@dataclass(frozen=True, slots=True)
class Compaction:
    merged: list[str]  # the segments merged
    into: str | None  # the merged segment (None: nothing was merged)
    rows: int
    deleted: list[str]  # files removed (superseded long enough, or never named)

    def line(self) -> str:
        merged = (f"merged {len(self.merged)} segment(s) ({self.rows} rows) into {self.into}"
                  if self.into else "nothing to merge")
        return f"{merged}; removed {len(self.deleted)} file(s) no version names"


def compact(catalog: Catalog, min_segments: int = 4,
            merge_below_rows: int = MERGE_BELOW_ROWS, grace_s: float = GRACE_S) -> Compaction:
    """Merge the ingested segments smaller than `merge_below_rows` rows when there are at least
    `min_segments` of them, then remove the files no version needs any more. Raises
    CompactionBusy when another compaction runs on the archive."""
    with _compaction_lock(catalog):
        _finish_interrupted(catalog)
        small = [f for f in catalog.ingested_segments()
                 if _rows(catalog, f) < merge_below_rows]
        merged, into, rows = [], None, 0
        if len(small) >= max(min_segments, 2):
            folded = sorted({f for v in catalog.versions()
                             for f in v.manifest.get("retired", [])})
            path = catalog.new_segment_path(COMPACTED_PREFIX)
            copy_to_parquet(catalog.connection(), _merged_sql(catalog, small, folded), path)
            write_indexes(catalog, path)
            if _swap(catalog, small, folded, path.name):
                merged, into, rows = small, path.name, _rows(catalog, path.name)
            # (else the merged file is named by nothing, and the next sweep removes it)
        for segment in catalog.ingested_segments():
            if segment not in merged:  # (one written by an earlier release may lack some)
                write_indexes(catalog, catalog.segments_dir / segment)
        _count_instances(catalog)
        deleted = _sweep(catalog, grace_s)
    return Compaction(merged, into, rows, deleted)


def _rows(catalog: Catalog, file_name: str) -> int:
    return pq.ParquetFile(catalog.segments_dir / file_name).metadata.num_rows


def _merged_sql(catalog: Catalog, segments: list[str], retired: list[str]) -> str:
    """The rows of `segments`, in ITEM_ORDER, each retired row's range closed where the first
    tombstone after its start retired it."""
    rows = " UNION ALL BY NAME ".join(f"SELECT * FROM {catalog.segment_sql(f)}" for f in segments)
    order = ", ".join(ITEM_ORDER)
    if not retired:
        return f"SELECT * FROM ({rows}) ORDER BY {order}"
    tombstones = "read_parquet([" + ", ".join(
        f"'{catalog.segments_dir / f}'" for f in retired) + "])"
    first = "list_min(list_filter(r.retired_in, v -> v > i.version_min))"
    return f"""
        SELECT i.* REPLACE (
            CASE WHEN {first} IS NULL THEN i.version_max
                 ELSE least(coalesce(i.version_max, {first} - 1), {first} - 1)
            END AS version_max)
        FROM ({rows}) i
        LEFT JOIN (SELECT SOPInstanceUID, list(retired_in) AS retired_in FROM {tombstones}
                   GROUP BY SOPInstanceUID) r USING (SOPInstanceUID)
        ORDER BY {order}"""


def _swap(catalog: Catalog, merged: list[str], folded: list[str], into: str) -> bool:
    """Point every version that names `merged` segments at `into` instead (steps 2 and 3 of the
    module's description); False when the writer lock could not be had in time."""
    deadline = time.monotonic() + SWAP_WAIT_S
    while True:
        try:
            with catalog.writer_lock():
                manifests = _manifests(catalog)
                changed = {}
                for number, manifest in manifests.items():
                    items = manifest.get("items", [])
                    if not set(items) & set(merged):
                        continue
                    kept = [f for f in items if f not in merged]
                    changed[number] = new = {**manifest, "items": kept + [into]}
                    if not catalog.ingested_segments_of({"items": kept}):
                        # every ingested row of the version is in the merged file, where the
                        # folded tombstones are applied already
                        new["retired"] = [f for f in manifest.get("retired", [])
                                          if f not in folded]
                after = _named({**manifests, **changed})
                _record_superseded(catalog, [f for f in merged + folded if f not in after],
                                   catalog.generation + 1)
                catalog.replace_files(changed)
                return True
        except WriterBusy:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.5)


def _count_instances(catalog: Catalog) -> None:
    """Give each version an earlier release published its instance rows per collection (what
    a publish counts now; see Catalog.instance_counts): counted from its rows, then written
    under the writer lock into the manifests that still lack them (skipped, for the next
    compaction, while a writer is busy)."""
    missing = [v.version for v in catalog.versions() if "instances" not in v.manifest]
    if not missing:
        return
    con = catalog.connection()
    counts = {number: dict(con.execute(
        f'SELECT collection_id, count(*) FROM "{catalog.relation(number, "items")}" '
        "WHERE level = 'instance' GROUP BY 1 ORDER BY 1").fetchall()) for number in missing}
    try:
        with catalog.writer_lock():
            manifests = _manifests(catalog)
            changed = {number: {**manifests[number], "instances": counts[number]}
                       for number in missing if "instances" not in manifests[number]}
            if changed:
                catalog.replace_files(changed)
    except WriterBusy:
        pass  # counted by the next compaction


def _manifests(catalog: Catalog) -> dict[int, dict]:
    return {v.version: v.manifest for v in catalog.versions()}


def _superseded_file(catalog: Catalog) -> Path:
    return catalog.dir / "superseded.json"


def _superseded(catalog: Catalog) -> list[dict]:
    try:
        return json.loads(_superseded_file(catalog).read_text())
    except FileNotFoundError:
        return []


def _record_superseded(catalog: Catalog, files: list[str], generation: int) -> None:
    now = time.time()
    entries = _superseded(catalog) + [{"file": f, "at": now, "generation": generation}
                                      for f in files]
    write_json_atomic(_superseded_file(catalog), entries)


def _finish_interrupted(catalog: Catalog) -> None:
    """Raise the generation a compaction that died during its swap did not get to raise."""
    pending = [e["generation"] for e in _superseded(catalog)]
    if pending and max(pending) > catalog.generation:
        catalog.raise_generation()


def _named(manifests: dict[int, dict]) -> set[str]:
    """Every file the manifests name."""
    names: set[str] = set()
    for manifest in manifests.values():
        for kind in ("items", "retired", "collections", "analysis_results"):
            names.update(manifest.get(kind) or [])
        names.update(entry["file"] for entry in manifest.get("clinical", []))
    return names


def _sweep(catalog: Catalog, grace_s: float) -> list[str]:
    """Delete the segment files no version needs (step 4 of the module's description), under
    the writer lock: a publish under way has written files it has not named yet."""
    try:
        with catalog.writer_lock():
            named = _named(_manifests(catalog))
            now, generation = time.time(), catalog.generation
            entries = _superseded(catalog)
            waiting = {e["file"] for e in entries
                       if e["file"] not in named and (now - e["at"] < grace_s
                                                      or generation < e["generation"])}
            deleted = []
            for entry in os.scandir(catalog.segments_dir):
                segment = segment_of(entry.name)  # (an index's, its segment's)
                if segment in named or segment in waiting or not entry.is_file():
                    continue
                os.unlink(entry.path)
                deleted.append(entry.name)
            kept = [e for e in entries if e["file"] in waiting or e["file"] in named]
            if kept != entries:
                write_json_atomic(_superseded_file(catalog), kept)
            return sorted(deleted)
    except WriterBusy:
        return []  # a writer is busy: the next compaction sweeps


@contextmanager
def _compaction_lock(catalog: Catalog) -> Iterator[None]:
    """One compaction at a time per archive, across processes (an flock, dropped by the kernel
    when its process ends)."""
    fd = os.open(catalog.dir / "compaction.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CompactionBusy("another compaction is running on this archive") from None
        yield
    finally:
        os.close(fd)


class Compactor:
    """A server's background compaction: every `every_s` seconds, a compaction of the archive
    (skipped while a writer or another compaction holds it)."""

    def __init__(self, catalog: Catalog, every_s: float):
        self.catalog = catalog
        self.every_s = every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="compaction", daemon=True)

    def start(self) -> None:
        if self.every_s > 0:
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                done = compact(self.catalog)
                if done.into or done.deleted:
                    log.info("compaction: %s", done.line())
            except CompactionBusy:
                continue  # another compaction runs; this one waits for its next turn
            except Exception:
                log.exception("compaction failed; published versions are unchanged")
