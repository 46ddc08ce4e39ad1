"""Ingest of DICOM files into the staged next version: the per-file work (in forked workers
for large ingests), then the run's rows merged into the stage with what changes the next
version only."""

from __future__ import annotations

import ctypes
import gc
import multiprocessing
import os
import signal
import sys
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..catalog import (
    COLLECTION_COLUMNS,
    ITEM_ORDER,
    Catalog,
    normalise_collection_id,
    write_parquet_atomic,
)
from ..dicom_rows import warm_up
from ..errors import InvalidRequest
from ..schema import SQL_TYPES
from .blobs import BlobWriter, read_and_store
from .files import iter_files, max_file_size
from .writers import exclusive, journal_dir, undo_run


@dataclass
class IngestReport:
    ingested: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def lines(self) -> list[str]:
        head = (f"{self.ingested} instance(s) staged, {self.unchanged} already present, "
                f"{len(self.skipped)} file(s) skipped")
        return [head] + [f"  skipped {_printable(path)}: {_printable(reason)}"
                         for path, reason in self.skipped]


def _printable(text: str) -> str:
    """`text`, or its repr() when it holds a line break or another unprintable character (a
    file name may): one skip, one line of the report."""
    return text if text.isprintable() else repr(text)


@contextmanager
def _rare_collections() -> Iterator[None]:
    """Collect garbage rarely while files are read. Each header makes thousands of objects, so
    the default thresholds run collections every few files, and the older generations hold
    the heap of a process that has DuckDB, Arrow and highdicom loaded (measured: 5-8 % less
    CPU per ingest). The heap as it is now is frozen (forked workers inherit it without ever
    walking it), and collections stay possible, only rarer: reference cycles (a handful per
    hundred files) are still reclaimed."""
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


# Below this many files a worker pool costs more than it saves.
PARALLEL_FROM = 200
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def _die_with(parent: int) -> None:
    """Initializer of ingest's worker processes: a worker dies with the ingest that started
    it. Without this, a killed ingest (SIGKILL, the OOM killer) left its workers running under
    PID 1, writing blobs nobody would stage and holding the writer lock they share. On Linux
    the kernel sends the worker SIGKILL when its parent dies (PR_SET_PDEATHSIG watches the
    thread that forked it: the ingest's own, which waits for its workers); a parent that died
    before that call already made the worker an orphan, which then exits at once."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


@contextmanager
def _per_file_results(files: list[Path], work, workers: int) -> Iterator[Iterator[dict | str]]:
    """`work` over the files, in order; in `workers` processes when that pays. Workers are
    forked (cheap on Linux): they only parse and copy files, never touch DuckDB. Leaving the
    block (a failure included) cancels the files not yet started and waits for the workers to
    finish the rest, so that a failed run's undoing comes after its last write."""
    if workers <= 1:
        yield map(work, files)
        return
    fork = "fork" in multiprocessing.get_all_start_methods()
    if fork:
        warm_up()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_die_with,
                               initargs=(os.getpid(),))
    try:
        yield pool.map(work, files, chunksize=16)
    finally:
        pool.shutdown(cancel_futures=True)


@exclusive
def ingest(catalog: Catalog, paths: Iterable[str | os.PathLike], collection: str, *,
           restricted: bool = False, metadata: dict | None = None,
           progress: bool = False, workers: int | None = None) -> IngestReport:
    """Stage the DICOM files under `paths` as instances of `collection`. `workers`: processes
    for the per-file work (default for large ingests: one per core and one more, which keeps the
    cores busy while a worker waits on the disk; none for small ones).

    Only regular files are read (symbolic links to them are followed), and only those of at
    most the archive's max_file_size (IMAGING_COMMONS_MAX_FILE_SIZE, default 64 GiB); anything
    else (devices, FIFOs, sockets, broken links, unreadable files, files whose UIDs or
    identifiers are not what they should be) is reported in the skip list, never fatal.

    The stage is written only when the next version would differ: rows added or changed
    (moved to this collection included), or the collection's metadata or restriction changed;
    ingesting files that are all already there stages nothing. A run that fails removes the
    blobs it created before the error propagates (see BlobWriter)."""
    collection_id = normalise_collection_id(collection)
    if not collection_id:
        raise InvalidRequest("A collection ID is required (--collection).")
    meta = metadata or {}
    collection_values = {
        "collection_id": collection_id,
        "license_short_name": meta.get("license_short_name"),
        "source_DOI": meta.get("doi"),
        "program": meta.get("program"),
        "tcia_species": meta.get("species"),
        "tcia_tumorLocation": meta.get("tumor_location"),
    }
    report = IngestReport()
    rows: list[dict] = []
    files = list(iter_files(paths))
    limit = max_file_size(catalog)
    if workers is None:
        workers = (os.cpu_count() or 1) + 1 if len(files) >= PARALLEL_FROM else 1
    run = uuid.uuid4().hex
    journal = journal_dir(catalog) / f"{run}.journal"
    journal.parent.mkdir(exist_ok=True)
    writer = BlobWriter(catalog.archive.blob_dir, journal)
    work = partial(read_and_store, writer=writer, blob_url=catalog.archive.blob_url, limit=limit)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="ingest")
    try:
        with _rare_collections(), _per_file_results(files, work, workers) as results:
            for path, result in zip(files, results):
                if isinstance(result, str):
                    report.skipped.append((str(path), result))
                else:
                    result.update(collection_values)
                    rows.append(result)
                if bar is not None:
                    bar.update(1)
        if bar is not None:
            bar.close()
        _stage_run(catalog, run, rows, report, collection_id, collection, restricted, meta)
    except BaseException as failure:
        writer.close()
        try:
            undo_run(catalog, journal)
        except Exception as e:
            failure.add_note(f"its new blobs are left for the next ingest or publish to remove "
                             f"({e})")
        raise
    writer.close()
    journal.unlink(missing_ok=True)  # its blobs are staged rows' now
    return report


def _stage_run(catalog: Catalog, run: str, rows: list[dict], report: IngestReport,
               collection_id: str, name: str, restricted: bool, meta: dict) -> None:
    """Stage a run's rows and its collection's entry, if either changes the stage. One write
    of the stage file records both (restricted flag included): a crash can never leave rows
    staged without their collection. The rows go to a file of the run's own, which only that
    write makes the staged one (a killed run's rows are never staged by halves).

    The active version's rows of every instance a run met are kept beside the staged rows
    (`published`, with the version they were read from), added to those of the stage's
    earlier runs: the rows publish retires are among them, so that publish need not look
    them up again in the whole archive."""
    stage = catalog.stage()
    published = catalog.published_instances(list({row["SOPInstanceUID"] for row in rows}))
    merged = _merged_rows(catalog, rows, report, published)
    collection_changed = _stage_collection(catalog, stage, collection_id, name, restricted, meta)
    if merged is None and not collection_changed:
        return
    replaced = None
    if merged is not None:
        items = stage.pop("items", None)
        replaced = [items, _kept_lookups(catalog, stage, run, published, items is not None)]
        if merged.num_rows:
            stage["items"] = f"items-{run}.parquet"
            write_parquet_atomic(merged, catalog.staging_dir / stage["items"])
    catalog.write_stage(stage)
    for name in replaced or ():
        if name:
            (catalog.staging_dir / name).unlink(missing_ok=True)


def _kept_lookups(catalog: Catalog, stage: dict, run: str, published: pa.Table,
                  had_items: bool) -> str | None:
    """Put in `stage` the file of a run's lookups (`published`) with those of the stage's
    earlier runs, all read from the active version; where they are not all (rows staged by
    another means, or a stage older than the active version), a `published` without a file
    tells publish to look the rows up itself. Returns the name of the file it replaces."""
    active = catalog._state()["active"]
    before = stage.get("published")
    complete = (before["version"] == active if before is not None else not had_items)
    if active is None or not complete or (before is not None and before["file"] is None):
        stage["published"] = {"version": None, "file": None}
        return before and before["file"]
    if before is not None:
        published = pa.concat_tables([
            pq.read_table(catalog.staging_dir / before["file"]).cast(published.schema),
            published])
    stage["published"] = {"version": active, "file": f"published-{run}.parquet"}
    write_parquet_atomic(published, catalog.staging_dir / stage["published"]["file"])
    return before and before["file"]


ITEM_SCHEMA = pa.schema([(name, {"VARCHAR": pa.string(), "DOUBLE": pa.float64(),
                                  "BIGINT": pa.int64(), "VARCHAR[]": pa.list_(pa.string())}[kind])
                         for name, kind in SQL_TYPES.items()])
STAGE_ORDER = [(name, "ascending") for name in ITEM_ORDER]


def _as_items(table: pa.Table) -> pa.Table:
    """`table` in the item schema's columns, order and types (a column it lacks is null)."""
    return pa.table([table[f.name].cast(f.type) if f.name in table.column_names
                     else pa.nulls(table.num_rows, f.type) for f in ITEM_SCHEMA],
                    schema=ITEM_SCHEMA)


def _merged_rows(catalog: Catalog, rows: list[dict], report: IngestReport,
                 published: pa.Table) -> pa.Table | None:
    """The staged rows with `rows` merged in; None when that changes nothing. `published`: the
    active version's rows of the batch's instances (Catalog.published_instances).

    The stage holds only what the next version changes: rows of instances that are new, or
    whose content or collection differ from the active version's. A file present there with
    the same content in the same collection stages nothing (its row, and its version_min,
    stay as they are); one that brings back what is published drops the staged row of its
    SOPInstanceUID. Two files with one SOPInstanceUID in a batch: the one met last wins. The
    published rows are looked up by the batch's SOPInstanceUIDs only, so the work follows the
    batch, not the archive."""
    latest = list({row["SOPInstanceUID"]: row for row in rows}.values())
    staged_name = catalog.stage().get("items")
    staged = (_as_items(pq.read_table(catalog.staging_dir / staged_name)) if staged_name
              else ITEM_SCHEMA.empty_table())
    staged_keys = dict(zip(staged["SOPInstanceUID"].to_pylist(),
                           zip(staged["crdc_instance_uuid"].to_pylist(),
                               staged["collection_id"].to_pylist())))
    found = dict(zip(published["SOPInstanceUID"].to_pylist(),
                     zip(published["crdc_instance_uuid"].to_pylist(),
                         published["collection_id"].to_pylist())))
    changed, reverted = [], []
    for row in latest:
        sop, key = row["SOPInstanceUID"], (row["crdc_instance_uuid"], row["collection_id"])
        if found.get(sop) == key:
            if sop in staged_keys:
                reverted.append(sop)
        elif staged_keys.get(sop) != key:
            changed.append(row)
    report.ingested, report.unchanged = len(changed), len(latest) - len(changed)
    if not changed and not reverted:
        return None
    new = pa.Table.from_pylist(changed, schema=ITEM_SCHEMA)
    dropped = pc.is_in(staged["SOPInstanceUID"], value_set=pa.array(
        new["SOPInstanceUID"].to_pylist() + reverted, pa.string()))
    return pa.concat_tables([staged.filter(pc.invert(dropped)), new]).sort_by(STAGE_ORDER)


def _stage_collection(catalog: Catalog, stage: dict, collection_id: str, name: str,
                      restricted: bool, meta: dict) -> bool:
    """Put the collection's entry in `stage`; return whether it says something new about a
    collection the stage or the active version has (a collection new to both counts only
    with rows, which the caller knows)."""
    collections = stage.setdefault("collections", {})
    entry = dict(collections.get(collection_id, {}))
    entry.update({k: v for k, v in meta.items() if k in COLLECTION_COLUMNS and v is not None})
    entry.setdefault("collection_name", name)
    # restriction is sticky: adding files without --restricted must not make a collection public
    active = catalog._state()["active"]
    was_restricted = active is not None and collection_id in catalog.restricted_collections(active)
    entry["restricted"] = bool(restricted or was_restricted or entry.get("restricted"))
    before = collections.get(collection_id) or _published_collection(catalog, collection_id)
    collections[collection_id] = entry
    return before is not None and any(before.get(k) != v for k, v in entry.items())


def _published_collection(catalog: Catalog, collection_id: str) -> dict | None:
    """The active version's row of a collection, None if it has none."""
    active = catalog._state()["active"]
    if active is None:
        return None
    cur = catalog.connection().execute(
        f"SELECT * FROM {catalog.relation(active, 'collections')} WHERE collection_id = ?",
        [collection_id])
    row = cur.fetchone()
    return dict(zip([d[0] for d in cur.description], row)) if row else None
