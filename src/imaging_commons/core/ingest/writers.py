"""The archive's writers (ingest, publish, clinical-import) take turns: each holds the
archive's writer lock (see `writing`). An ingest run notes each blob it creates in a journal
before putting it in place, and deletes the journal once its rows are staged; the journal of a
run that failed or was killed names what it left behind (blobs no row names, temporary .part
copies), which the next writer removes. A run that fails removes its own at once."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..catalog import Catalog


@contextmanager
def writing(catalog: Catalog) -> Iterator[None]:
    """Hold the archive's writer lock (Catalog.writer_lock) for a block. The call that takes it
    first removes what earlier ingest runs that failed or were killed left behind: nothing of
    theirs can be in use then, since they held the lock while they ran."""
    with catalog.writer_lock() as taken:
        if taken:
            for journal in sorted(journal_dir(catalog).glob("*.journal")):
                undo_run(catalog, journal)
            _sweep_stage(catalog)
        yield


def exclusive(function):
    """`function(catalog, ...)` run in `writing(catalog)`."""
    @wraps(function)
    def holding_the_lock(catalog: Catalog, *args, **kwargs):
        with writing(catalog):
            return function(catalog, *args, **kwargs)
    return holding_the_lock


def journal_dir(catalog: Catalog) -> Path:
    return catalog.dir / "ingest-journals"


# The names a journal may give: series folders and blob keys (both made of UUIDs). A line cut
# short by a full disk, or anything else, names nothing outside the blob store.
_JOURNAL_LINE = re.compile(r"(folder|blob) ([0-9a-f-]{36}(?:/[0-9a-f-]{36}\.dcm)?)")


def undo_run(catalog: Catalog, journal: Path) -> None:
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
