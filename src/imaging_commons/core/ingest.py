"""Ingest of DICOM files into the staged next version, and publishing of that version.

Files are read with pydicom (headers only), hashed while they are copied into the blob store
under `<crdc_series_uuid>/<crdc_instance_uuid>.dcm`, and described by one instance row each.
Rows go to the staging area; `publish` turns the stage into a new immutable version.

The writers of an archive (ingest, publish, clinical-import) take turns: each holds the
archive's writer lock (see `writing`). An ingest run notes each blob it creates in a journal
before putting it in place, and deletes the journal once its rows are staged; the journal of a
run that failed or was killed names what it left behind (blobs no row names, temporary .part
copies), which the next writer removes. A run that fails removes its own at once.
"""

from __future__ import annotations

import ctypes
import datetime as dt
import errno
import gc
import hashlib
import io
import itertools
import multiprocessing
import os
import re
import shutil
import signal
import stat
import sys
import uuid
import warnings
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial, wraps
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..config import TUNABLE_ENV
from .catalog import (
    COLLECTION_COLUMNS,
    INGESTED_PREFIX,
    ITEM_ORDER,
    Catalog,
    CatalogError,
    _q,
    copy_to_parquet,
    normalise_collection_id,
    parquet_scan,
    write_parquet_atomic,
)
from .dicom_rows import NotDicom, instance_row, read_header, warm_up
from .keyset import write_indexes
from .schema import SQL_TYPES
from .search_index import IndexChange, build_search_index

# Namespace of the archive's UUIDs: a UID (and, for instances, the content hash) always maps to
# the same UUID, which is what makes re-ingest idempotent.
UUID_NAMESPACE = uuid.UUID("6f0d6b1e-54c2-4a8e-9a52-3f1b1d0c2a77")

# Files larger than this many bytes are skipped unread. The default, 64 GiB, is above the
# largest whole-slide images and multi-frame series; a larger "file" is more likely a disk
# image (or a special file posing as a huge one) than an instance.
MAX_FILE_SIZE_ENV = TUNABLE_ENV["max_file_size"][0]


def crdc_uuid(kind: str, *parts: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, ":".join((kind, *parts))))


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


def max_file_size(catalog: Catalog) -> int:
    """The size above which ingest skips a file: the archive's max_file_size
    (IMAGING_COMMONS_MAX_FILE_SIZE, bytes)."""
    limit = catalog.archive.max_file_size
    if limit < 0:
        raise CatalogError(f"{MAX_FILE_SIZE_ENV}={limit} is not a number of bytes")
    return limit


# ----- the writer lock and what killed runs leave behind -----------------------------------
@contextmanager
def writing(catalog: Catalog) -> Iterator[None]:
    """Hold the archive's writer lock (Catalog.writer_lock) for a block. The call that takes it
    first removes what earlier ingest runs that failed or were killed left behind: nothing of
    theirs can be in use then, since they held the lock while they ran."""
    with catalog.writer_lock() as taken:
        if taken:
            for journal in sorted(_journal_dir(catalog).glob("*.journal")):
                _undo_run(catalog, journal)
            _sweep_stage(catalog)
        yield


def _exclusive(function):
    """`function(catalog, ...)` run in `writing(catalog)`."""
    @wraps(function)
    def holding_the_lock(catalog: Catalog, *args, **kwargs):
        with writing(catalog):
            return function(catalog, *args, **kwargs)
    return holding_the_lock


def _journal_dir(catalog: Catalog) -> Path:
    return catalog.dir / "ingest-journals"


# The names a journal may give: series folders and blob keys (both made of UUIDs). A line cut
# short by a full disk, or anything else, names nothing outside the blob store.
_JOURNAL_LINE = re.compile(r"(folder|blob) ([0-9a-f-]{36}(?:/[0-9a-f-]{36}\.dcm)?)")


def _undo_run(catalog: Catalog, journal: Path) -> None:
    """Remove what the ingest run of `journal` put in the blob store and no row names: the
    blobs it created that no staged or published row references (a run's blobs are named by
    rows once its stage is written; a blob is journaled only by the run that created it, so one
    that already existed, such as a published one, is never listed), its .part copies, and the
    series folders that leaves empty. Then the journal itself."""
    try:
        lines = journal.read_text(errors="replace").splitlines()
    except FileNotFoundError:  # the run created no blob
        return
    run = journal.stem
    folders, blobs = set(), set()
    for line in lines:
        m = _JOURNAL_LINE.fullmatch(line)
        if m is None:
            continue
        name = m[2]
        if m[1] == "blob":
            blobs.add(name)
            name = name.partition("/")[0]
        folders.add(name)
    blob_dir = catalog.archive.blob_dir
    for key in blobs - _referenced(catalog, blobs):
        (blob_dir / key).unlink(missing_ok=True)
    for folder in folders:
        for part in (blob_dir / folder).glob(f".{run}-*.part"):
            part.unlink(missing_ok=True)
        try:
            (blob_dir / folder).rmdir()
        except OSError:  # not empty (or gone)
            pass
    journal.unlink(missing_ok=True)


def _referenced(catalog: Catalog, keys: set[str]) -> set[str]:
    """The blob keys among `keys` that a staged or published row names. Only ingest's own item
    segments are read (those of ingest and compaction, and the stage's rows): imported IDC
    series are stored elsewhere and name no blob."""
    if not keys:
        return set()
    files = [catalog.segments_dir / f for f in catalog.ingested_segments()]
    if staged := catalog.stage().get("items"):
        files.append(catalog.staging_dir / staged)
    wanted = pa.array(sorted(keys), pa.string())
    found: set[str] = set()
    for path in files:
        table = pq.read_table(path, columns=["blob_key"],
                              filters=pc.field("blob_key").isin(wanted))
        found.update(table["blob_key"].to_pylist())
    return found


def _sweep_stage(catalog: Catalog) -> None:
    """Remove the staging files the stage does not name: the rows or clinical table of a run
    that stopped before recording them, the staged rows (or lookups) a later ingest replaced,
    temporary copies of writes cut short."""
    stage = catalog.stage()
    named = {catalog.stage_file.name, stage.get("items"),
             (stage.get("published") or {}).get("file"),
             *(entry["file"] for entry in stage.get("clinical", []))}
    for entry in os.scandir(catalog.staging_dir):
        if entry.name not in named and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)


# ----- reading files -----------------------------------------------------------------------
def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every file under the given files and folders, in a stable order, whatever its kind:
    whether it is a regular file is judged when it is opened (see _open_regular), so that a
    FIFO, device, socket or broken link is reported as skipped, never read. Folders are walked
    without following links to folders."""
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif os.path.lexists(p):
            yield p
        else:
            raise FileNotFoundError(f"No such file or folder: {p}")


# O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: nor may a terminal device
# become the process's controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO",
          stat.S_IFSOCK: "socket", stat.S_IFDIR: "directory"}


def _open_regular(path: Path, limit: int) -> tuple[int, int] | str:
    """(descriptor, size) of `path` opened, if it is a regular file (a symbolic link to one is
    followed) of at most `limit` bytes; else the reason it is skipped. The path is stat'ed
    before it is opened, so that a device is never opened (opening some has effects: a tape
    rewinds, a watchdog arms), and the opened descriptor is checked again, which is what
    counts: the path may have been swapped for something else in between."""
    try:
        refusal = _refusal(os.stat(path), limit)
        if refusal:
            return refusal
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "broken symbolic link"
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"cannot open: {(exc.strerror or str(exc)).lower()}"
    info = os.fstat(fd)
    refusal = _refusal(info, limit)
    if refusal:
        os.close(fd)
        return refusal
    return fd, info.st_size


def _refusal(info: os.stat_result, limit: int) -> str | None:
    """Why a file of this status is not read, if it is not."""
    if not stat.S_ISREG(info.st_mode):
        return f"not a regular file ({_KINDS.get(stat.S_IFMT(info.st_mode), 'unknown kind')})"
    if info.st_size > limit:
        return f"too large: {info.st_size:,} bytes, over {MAX_FILE_SIZE_ENV} ({limit:,})"
    return None


class _FirstBytes(io.RawIOBase):
    """The first `size` bytes of an open file (what fstat gave when it was opened), read by
    position. A file that grows meanwhile is read no further, so ingest never reads more than
    it measured; one that shrinks reads short (its header then reads as truncated). Closing
    it closes the descriptor."""

    def __init__(self, fd: int, size: int):
        self._fd, self._size, self._pos = fd, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer) -> int:
        wanted = max(0, min(len(buffer), self._size - self._pos))
        got = os.preadv(self._fd, [memoryview(buffer)[:wanted]], self._pos) if wanted else 0
        self._pos += got
        return got

    def readall(self) -> bytes:
        """The rest, in as few reads as the file allows (one, for a local file)."""
        parts = []
        while self._pos < self._size:
            part = os.pread(self._fd, self._size - self._pos, self._pos)
            if not part:
                break
            parts.append(part)
            self._pos += len(part)
        return b"".join(parts)

    def close(self) -> None:
        if not self.closed:
            os.close(self._fd)
        super().close()

    def __reduce_ex__(self, protocol):
        """Not copied (a copy would close the descriptor when collected): pydicom, whose
        datasets highdicom copies, then drops its reference to the file from the copy."""
        raise TypeError("an ingest's open file is not copied")


_part_numbers = itertools.count()


class _BlobWriter:
    """Puts stored copies in the blob store for one ingest run, noting in the run's journal
    (one line each, appended with O_APPEND by whichever process writes it) every series folder
    before it gets a .part copy of the run, and every blob before it is put in place if it
    did not exist: a run's journal names everything of its own that it may leave behind. Only
    blobs the run creates are noted: content-addressed names mean a later run may reuse a blob,
    and only its creator's undoing may remove it. Nothing is fsynced per file (that would cost
    more than the copy): a journal outlives a killed process, not a power cut.

    Sent to the worker processes with each batch of files: there its journal descriptor and
    the folders it noted are that batch's."""

    def __init__(self, blob_dir: str | os.PathLike, journal: str | os.PathLike):
        self.blob_dir, self.journal = os.fspath(blob_dir), os.fspath(journal)
        self.run = Path(journal).stem
        self._fd: int | None = None
        self._noted: set[str] = set()

    def __getstate__(self) -> tuple[str, str]:
        return self.blob_dir, self.journal

    def __setstate__(self, state: tuple[str, str]) -> None:
        _BlobWriter.__init__(self, *state)

    def __del__(self) -> None:
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _note(self, line: str) -> None:
        if self._fd is None:
            self._fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                               0o644)
        os.write(self._fd, f"{line}\n".encode())

    def store(self, chunks: Iterable[bytes], series_uuid: str,
              sop_uid: str) -> tuple[str, str, int, int]:
        """Write a file's bytes (`chunks`) into the blob store while hashing them; return
        (instance uuid, md5, size, CRC-32). The final name depends on the hash, so the copy
        lands under a temporary name first and is renamed: a crash never leaves a partial blob.
        A blob already there has the same name only if it has the same bytes, so it is kept
        and the copy dropped. (Plain os calls: at thousands of files a second, pathlib's
        overhead shows.)"""
        dest_dir = os.path.join(self.blob_dir, series_uuid)
        if series_uuid not in self._noted:
            self._note(f"folder {series_uuid}")
            self._noted.add(series_uuid)
        tmp = os.path.join(dest_dir, f".{self.run}-{os.getpid()}-{next(_part_numbers)}.part")
        md5 = hashlib.md5()
        crc = size = 0
        # (the file is closed by the `with` below)
        try:  # the series folder exists for all but its first file: make it only then
            fout = open(tmp, "wb")  # noqa: SIM115
        except FileNotFoundError:
            os.makedirs(dest_dir, exist_ok=True)
            fout = open(tmp, "wb")  # noqa: SIM115
        with fout:
            for chunk in chunks:
                md5.update(chunk)
                crc = zlib.crc32(chunk, crc)
                fout.write(chunk)
                size += len(chunk)
        digest = md5.hexdigest()
        instance_uuid = crdc_uuid("instance", sop_uid, digest)
        dest = os.path.join(dest_dir, f"{instance_uuid}.dcm")
        if os.path.exists(dest):
            os.unlink(tmp)
        else:
            self._note(f"blob {series_uuid}/{instance_uuid}.dcm")
            os.replace(tmp, dest)
        return instance_uuid, digest, size, crc


# Files up to this size are read into memory once, for the header and the copy alike; larger
# ones (whole-slide images, long multi-frame series) are parsed from disk and copied in chunks.
IN_MEMORY_LIMIT = 64 << 20


def _read_and_store(path: Path, writer: _BlobWriter, blob_url: str, limit: int) -> dict | str:
    """The per-file work of ingest: header, row, stored copy. Returns the row, or the reason
    the file is not ingestible. Runs in worker processes for large ingests. The header and the
    copy are read from one descriptor, opened once: the path is never opened again, so it
    cannot be swapped for something else in between."""
    opened = _open_regular(path, limit)
    if isinstance(opened, str):
        return opened
    with _FirstBytes(*opened) as source:
        whole = source.readall() if opened[1] <= IN_MEMORY_LIMIT else None
        try:
            with warnings.catch_warnings():  # pydicom's complaints about odd files are noise
                warnings.simplefilter("ignore")
                # (not through io.BufferedReader: pydicom takes one for a file to reopen by
                # name; a read per element costs little next to copying a file this large)
                row = instance_row(read_header(whole if whole is not None else source))
        except NotDicom as e:
            return str(e)
        if whole is None:
            source.seek(0)
        series_uuid = crdc_uuid("series", row["SeriesInstanceUID"])
        instance_uuid, md5, size, crc = writer.store(
            (whole,) if whole is not None else iter(partial(source.read, 1 << 20), b""),
            series_uuid, row["SOPInstanceUID"])
    row.update(
        crdc_study_uuid=crdc_uuid("study", row["StudyInstanceUID"]),
        crdc_series_uuid=series_uuid,
        crdc_instance_uuid=instance_uuid,
        blob_key=f"{series_uuid}/{instance_uuid}.dcm",
        gcs_url=f"{blob_url}/{series_uuid}/{instance_uuid}.dcm",
        instance_md5=md5,
        instance_size=size,
        instance_crc32=crc,
        instance_count=1,
        series_size_bytes=size,
        level="instance",
    )
    return row


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


@_exclusive
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
    blobs it created before the error propagates (see _BlobWriter)."""
    collection_id = normalise_collection_id(collection)
    if not collection_id:
        raise CatalogError("A collection ID is required (--collection).")
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
    journal = _journal_dir(catalog) / f"{run}.journal"
    journal.parent.mkdir(exist_ok=True)
    writer = _BlobWriter(catalog.archive.blob_dir, journal)
    work = partial(_read_and_store, writer=writer, blob_url=catalog.archive.blob_url, limit=limit)
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
            _undo_run(catalog, journal)
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


@_exclusive
def stage_clinical(catalog: Catalog, file: str | os.PathLike, collection: str, source: str,
                   patient_column: str | None = None) -> dict:
    """Register a clinical table (CSV or Parquet keyed by patient) for the next version."""
    path = Path(file)
    if not path.is_file():
        raise CatalogError(f"No such file: {path}")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,62}", source):
        raise CatalogError("--source must be a name of letters, digits and '_' "
                           "starting with a letter")
    con = catalog.connection()
    # CSV values stay as written unless they are numbers: the sniffer would otherwise turn
    # yes/no into true/false (and dates into DATE), and a filter on "yes" would match nothing
    src = (f"read_parquet('{path}')" if path.suffix.lower() == ".parquet" else
           f"read_csv('{path}', auto_type_candidates=['BIGINT', 'DOUBLE', 'VARCHAR'])")
    try:
        columns = {d[0]: d[1] for d in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
    except Exception as e:  # duckdb raises several types for unreadable input
        raise CatalogError(f"Cannot read {path}: {e}") from None
    key = patient_column or next(
        (c for c in columns if c.lower() in
         ("patientid", "dicom_patient_id", "case_barcode", "submitter_id", "patient_id")), None)
    if key is None or key not in columns:
        raise CatalogError(f"No patient column found in {path}; name it with --patient-column")
    collection_id = normalise_collection_id(collection)
    name = f"clinical-{uuid.uuid4().hex[:12]}.parquet"
    others = ", ".join(_q(c) for c in columns if c != key)
    copy_to_parquet(
        con, f"SELECT CAST({_q(key)} AS VARCHAR) AS PatientID, ? AS collection_id"
             f"{', ' + others if others else ''} FROM {src}",
        catalog.staging_dir / name, [collection_id])
    entry = {"source": source, "collection_id": collection_id, "file": name,
             "columns": {c: t for c, t in columns.items() if c != key}}
    stage = catalog.stage()
    stage["clinical"] = [c for c in stage.get("clinical", [])
                         if (c["source"], c["collection_id"]) != (source, collection_id)]
    stage["clinical"].append(entry)
    catalog.write_stage(stage)
    return entry


@_exclusive
def publish(catalog: Catalog, date_active: str | None = None) -> int:
    """Turn the stage into the next version, atomically, and make it active.

    The work follows the stage, not the archive: the staged rows become one new segment, and
    the instances they replace in the previous version are retired from this one by a small
    tombstone file; no segment already published is read whole or rewritten."""
    stage = catalog.stage()
    if not stage:
        raise CatalogError("Nothing is staged: ingest or clinical-import something first.")
    state = catalog._state()
    previous_number = state["active"]
    previous = catalog.version(previous_number).manifest if previous_number else {}
    if previous.get("stage_id") == stage.get("id"):
        # a publish that stopped between the flip and clearing the stage: it is done already
        catalog.clear_stage()
        return state["active"]
    number = max(state["versions"], default=0) + 1
    con = catalog.connection()

    items, retired = list(previous.get("items", [])), list(previous.get("retired", []))
    touched: dict[str, set] = {"collection_id": set(), "analysis_result_id": set()}
    # instance rows per collection: the previous version's, with the staged rows added and
    # those they replace taken away (unknown while a version of an earlier release is active)
    counts = dict(previous.get("instances", {}) if previous_number else {})
    known = not previous_number or "instances" in previous
    if stage.get("items"):
        staged = f"read_parquet('{catalog.staging_dir / stage['items']}')"
        segment = catalog.new_segment_path(INGESTED_PREFIX)
        copy_to_parquet(con, f"""
            SELECT * REPLACE ({number}::BIGINT AS version_min, NULL::BIGINT AS version_max)
            FROM {staged} ORDER BY {', '.join(ITEM_ORDER)}""", segment)
        write_indexes(catalog, segment)
        items.append(segment.name)
        for key, values in touched.items():
            values.update(r[0] for r in con.execute(f"SELECT DISTINCT {key} FROM {staged}")
                          .fetchall() if r[0] is not None)
        for collection, n in con.execute(f"SELECT collection_id, count(*) FROM {staged} "
                                         "WHERE level = 'instance' GROUP BY 1").fetchall():
            counts[collection] = counts.get(collection, 0) + n
        if previous_number:
            # the previous version's rows of the staged instances: retired in this one (among
            # those ingest looked up, when it read them from that version; see _stage_run)
            lookups = stage.get("published") or {}
            rows = (parquet_scan(catalog.staging_dir / lookups["file"])
                    if lookups.get("version") == previous_number and lookups.get("file")
                    else catalog.relation(previous_number, "items"))
            replaced = con.execute(f"""
                SELECT SOPInstanceUID, collection_id, analysis_result_id FROM {rows}
                WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM {staged})""").to_arrow_table()
            for collection in replaced["collection_id"].to_pylist():
                counts[collection] = counts.get(collection, 0) - 1
            if replaced.num_rows:
                tombstones = catalog.new_segment_path("retired")
                write_parquet_atomic(pa.table({
                    "SOPInstanceUID": replaced["SOPInstanceUID"],
                    "retired_in": pa.array([number] * replaced.num_rows, pa.int64())}),
                    tombstones)
                retired.append(tombstones.name)
                for key, values in touched.items():
                    values.update(v for v in replaced[key].to_pylist() if v is not None)

    clinical = [c for c in previous.get("clinical", [])
                if (c["source"], c["collection_id"]) not in
                {(s["source"], s["collection_id"]) for s in stage.get("clinical", [])}]
    for entry in stage.get("clinical", []):
        dest = catalog.segments_dir / entry["file"]
        shutil.copyfile(catalog.staging_dir / entry["file"], dest)
        clinical.append(entry)

    manifest = {
        "date_active": date_active or dt.date.today().isoformat(),
        "source": "ingest",
        "items": items,
        "retired": retired,
        "clinical": clinical,
        "stage_id": stage["id"],
    }
    if known:
        manifest["instances"] = {c: n for c, n in sorted(counts.items()) if n}
    present = _present(catalog, previous_number, manifest, number, touched)
    manifest["collections"] = [_next_membership_table(
        catalog, previous.get("collections", []), stage.get("collections", {}),
        present["collection_id"], "collection_id", number, "collections")]
    manifest["analysis_results"] = [_next_membership_table(
        catalog, previous["analysis_results"], {}, present["analysis_result_id"],
        "analysis_result_id", number, "analysis-results")] if previous.get(
        "analysis_results") else []
    published = catalog.publish_version(manifest, number=number)
    catalog.clear_stage()
    build_search_index(catalog, published, IndexChange(previous_number, frozenset(
        touched["collection_id"] | set(stage.get("collections", {})))) if previous_number
        else None)
    return published


def _present(catalog: Catalog, previous: int | None, manifest: dict, number: int,
             touched: dict[str, set]) -> dict[str, list[str]]:
    """For each key (collection_id, analysis_result_id): the values that have item rows in the
    new version. Those the publish did not touch are as in the previous version; the touched
    ones are looked up in the new version's rows, by value (segments are sorted by
    collection, so the lookup reads little)."""
    con = catalog.connection()
    out = {}
    for key, values in touched.items():
        kind = "collections" if key == "collection_id" else "analysis_results"
        before: set[str] = set()
        if previous and catalog.version(previous).manifest.get(kind):
            before = {r[0] for r in con.execute(
                f"SELECT {key} FROM {catalog.relation(previous, kind)}").fetchall()}
        found = {r[0] for r in con.execute(
            f"SELECT DISTINCT {key} FROM ({catalog.items_sql(manifest, number)}) "
            f"WHERE list_contains(?, {key})", [sorted(values)]).fetchall()} if values else set()
        out[key] = sorted((before - values) | found)
    return out


def _next_membership_table(catalog: Catalog, previous_files: list[str], staged: dict,
                           present: list[str], key: str, number: int, prefix: str) -> str:
    """Carry a collections-like table forward: staged rows override, and every row whose key
    is `present` (has items in the new version) gets that version appended to
    idc_data_versions."""
    con = catalog.connection()
    prev = " UNION ALL BY NAME ".join(
        f"SELECT * FROM read_parquet('{catalog.segments_dir / f}')" for f in previous_files)
    if staged:
        cols = list(COLLECTION_COLUMNS)
        new = pa.table({c: [({**{"collection_id": k}, **v}).get(c) for k, v in staged.items()]
                        for c in cols})
        con.register("staged_rows", new)
        casts = ", ".join(f"CAST({_q(c)} AS {t}) AS {_q(c)}" for c, t in COLLECTION_COLUMNS.items())
        staged_sql = f"SELECT {casts} FROM staged_rows"
        if prev:
            # metadata given at ingest wins; what it leaves out is kept from before
            merged_cols = ", ".join(
                f"coalesce(s.{_q(c)}, p.{_q(c)}) AS {_q(c)}" for c in cols if c != key)
            prev = f"""
                SELECT p.* REPLACE (p.{_q(key)} AS {_q(key)})
                FROM ({prev}) p WHERE p.{_q(key)} NOT IN (SELECT {_q(key)} FROM ({staged_sql}))
                UNION ALL BY NAME
                SELECT s.{_q(key)}, {merged_cols},
                       coalesce(p.idc_data_versions, []::BIGINT[]) AS idc_data_versions
                FROM ({staged_sql}) s LEFT JOIN ({prev}) p USING ({_q(key)})"""
        else:
            prev = f"SELECT *, []::BIGINT[] AS idc_data_versions FROM ({staged_sql})"
    path = catalog.new_segment_path(prefix)
    try:
        copy_to_parquet(con, f"""
            SELECT * REPLACE (CASE WHEN list_contains(?, {_q(key)})
                              THEN list_append(idc_data_versions, {number})
                              ELSE idc_data_versions END AS idc_data_versions)
            FROM ({prev}) ORDER BY {_q(key)}""", path, [present])
    finally:
        if staged:
            con.unregister("staged_rows")
    return path.name
