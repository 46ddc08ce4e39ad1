"""Ingest of DICOM files into the staged next version, and publishing of that version.

Files are read with pydicom (headers only), hashed while they are copied into the blob store
under `<crdc_series_uuid>/<crdc_instance_uuid>.dcm`, and described by one instance row each.
Rows go to the staging area; `publish` turns the stage into a new immutable version.
"""

from __future__ import annotations

import datetime as dt
import gc
import hashlib
import itertools
import multiprocessing
import os
import re
import shutil
import uuid
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .catalog import (
    COLLECTION_COLUMNS,
    Catalog,
    CatalogError,
    _q,
    copy_to_parquet,
    empty_items_sql,
    normalise_collection_id,
    write_parquet_atomic,
)
from .dicom_rows import NotDicom, instance_row, read_header, warm_up
from .schema import SQL_TYPES

# Namespace of the archive's UUIDs: a UID (and, for instances, the content hash) always maps to
# the same UUID, which is what makes re-ingest idempotent.
UUID_NAMESPACE = uuid.UUID("6f0d6b1e-54c2-4a8e-9a52-3f1b1d0c2a77")

STAGED_ITEMS = "items.parquet"


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
        return [head] + [f"  skipped {path}: {reason}" for path, reason in self.skipped]


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every regular file under the given files and folders, in a stable order."""
    for p in map(Path, paths):
        if p.is_dir():
            for root, dirs, files in os.walk(p):
                dirs.sort()
                for name in sorted(files):
                    yield Path(root) / name
        elif p.is_file():
            yield p
        else:
            raise FileNotFoundError(f"No such file or folder: {p}")


_part_numbers = itertools.count()


def _store_blob(chunks: Iterable[bytes], blob_dir: Path, series_uuid: str,
                sop_uid: str) -> tuple[str, str, int, int]:
    """Write a file's bytes (`chunks`) into the blob store while hashing them; return
    (instance uuid, md5, size, CRC-32). The final name depends on the hash, so the copy lands
    under a temporary name first and is renamed: a crash never leaves a partial blob. A blob
    already there has the same name only if it has the same bytes, so renaming over it is safe.
    (Plain os calls: at thousands of files a second, pathlib's overhead shows.)"""
    dest_dir = os.path.join(blob_dir, series_uuid)
    tmp = os.path.join(dest_dir, f".{os.getpid()}-{next(_part_numbers)}.part")
    md5 = hashlib.md5()
    crc = size = 0
    try:  # the series folder exists for all but its first file: make it only then
        fout = open(tmp, "wb")
    except FileNotFoundError:
        os.makedirs(dest_dir, exist_ok=True)
        fout = open(tmp, "wb")
    with fout:
        for chunk in chunks:
            md5.update(chunk)
            crc = zlib.crc32(chunk, crc)
            fout.write(chunk)
            size += len(chunk)
    digest = md5.hexdigest()
    instance_uuid = crdc_uuid("instance", sop_uid, digest)
    os.replace(tmp, os.path.join(dest_dir, f"{instance_uuid}.dcm"))
    return instance_uuid, digest, size, crc


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fin:
        while chunk := fin.read(1 << 20):
            yield chunk


def _staged_base(catalog: Catalog) -> Path | None:
    """The Parquet of local instance rows the stage builds on: the stage's own, else the
    active version's; None when there are none yet."""
    if catalog.stage().get("items"):  # the stage file, not the Parquet's presence, says so
        return catalog.staging_dir / STAGED_ITEMS
    state = catalog._state()
    if state["active"] is None:
        return None
    local = catalog.version(state["active"]).manifest.get("local_items")
    return catalog.segments_dir / local if local else None


# Files up to this size are read into memory once, for the header and the copy alike; larger
# ones (whole-slide images, long multi-frame series) are parsed from disk and copied in chunks.
IN_MEMORY_LIMIT = 64 << 20


def _read_and_store(path: Path, blob_dir: Path, blob_url: str) -> dict | str:
    """The per-file work of ingest: header, row, stored copy. Returns the row, or the reason
    the file is not ingestible. Runs in worker processes for large ingests."""
    with open(path, "rb") as fin:
        whole = fin.read() if os.fstat(fin.fileno()).st_size <= IN_MEMORY_LIMIT else None
    try:
        with warnings.catch_warnings():  # pydicom's complaints about odd files are noise here
            warnings.simplefilter("ignore")
            row = instance_row(read_header(path if whole is None else whole))
    except NotDicom as e:
        return str(e)
    series_uuid = crdc_uuid("series", row["SeriesInstanceUID"])
    instance_uuid, md5, size, crc = _store_blob(
        _file_chunks(path) if whole is None else (whole,), blob_dir, series_uuid,
        row["SOPInstanceUID"])
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


def _per_file_results(files: list[Path], catalog: Catalog, workers: int) -> Iterator[dict | str]:
    """`_read_and_store` over the files, in order; in `workers` processes when that pays.
    Workers are forked (cheap on Linux): they only parse and copy files, never touch DuckDB."""
    work = partial(_read_and_store, blob_dir=catalog.archive.blob_dir,
                   blob_url=catalog.archive.blob_url)
    if workers <= 1:
        yield from map(work, files)
        return
    fork = "fork" in multiprocessing.get_all_start_methods()
    if fork:
        warm_up()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        yield from pool.map(work, files, chunksize=16)


def ingest(catalog: Catalog, paths: Iterable[str | os.PathLike], collection: str, *,
           restricted: bool = False, metadata: dict | None = None,
           progress: bool = False, workers: int | None = None) -> IngestReport:
    """Stage the DICOM files under `paths` as instances of `collection`. `workers`: processes
    for the per-file work (default for large ingests: one per core and one more, which keeps the
    cores busy while a worker waits on the disk; none for small ones)."""
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
    if workers is None:
        workers = (os.cpu_count() or 1) + 1 if len(files) >= PARALLEL_FROM else 1
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(files), unit="file", desc="ingest")
    with _rare_collections():
        for path, result in zip(files, _per_file_results(files, catalog, workers)):
            if isinstance(result, str):
                report.skipped.append((str(path), result))
            else:
                result.update(collection_values)
                rows.append(result)
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    _merge_into_stage(catalog, rows, report)
    # one write stages the rows together with their collection's entry (restricted flag
    # included): a crash can never leave rows staged without it
    stage = catalog.stage()
    stage["items"] = STAGED_ITEMS
    _stage_collection(catalog, stage, collection_id, collection, restricted, meta)
    catalog.write_stage(stage)
    return report


ITEM_SCHEMA = pa.schema([(name, {"VARCHAR": pa.string(), "DOUBLE": pa.float64(),
                                  "BIGINT": pa.int64(), "VARCHAR[]": pa.list_(pa.string())}[kind])
                         for name, kind in SQL_TYPES.items()])
STAGE_ORDER = [(name, "ascending") for name in
               ("collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                "SOPInstanceUID")]


def _as_items(table: pa.Table) -> pa.Table:
    """`table` in the item schema's columns, order and types (a column it lacks is null)."""
    return pa.table([table[f.name].cast(f.type) if f.name in table.column_names
                     else pa.nulls(table.num_rows, f.type) for f in ITEM_SCHEMA],
                    schema=ITEM_SCHEMA)


def _merge_into_stage(catalog: Catalog, rows: list[dict], report: IngestReport) -> None:
    """Write the staged rows: base rows, replaced by the new rows with the same
    SOPInstanceUID. The caller records them in the stage file.

    Two files with one SOPInstanceUID in a batch: the one met last wins. A file already
    present with the same content in the same collection keeps its row (and its
    version_min); anything else replaces the row of its SOPInstanceUID. Done in Arrow: for a
    batch of new rows that is several times quicker than a DuckDB statement over 84 columns."""
    latest = list({row["SOPInstanceUID"]: row for row in rows}.values())
    base_path = _staged_base(catalog)
    base = _as_items(pq.read_table(base_path)) if base_path else ITEM_SCHEMA.empty_table()
    new_uuids = pa.array([row["crdc_instance_uuid"] for row in latest], pa.string())
    stored = base.filter(pc.is_in(base["crdc_instance_uuid"], value_set=new_uuids))
    present = set(zip(stored["crdc_instance_uuid"].to_pylist(),
                      stored["collection_id"].to_pylist()))
    changed = [row for row in latest
               if (row["crdc_instance_uuid"], row["collection_id"]) not in present]
    report.ingested, report.unchanged = len(changed), len(latest) - len(changed)
    new = pa.Table.from_pylist(changed, schema=ITEM_SCHEMA)
    replaced = pc.is_in(base["SOPInstanceUID"], value_set=new["SOPInstanceUID"])
    merged = pa.concat_tables([base.filter(pc.invert(replaced)), new]).sort_by(STAGE_ORDER)
    write_parquet_atomic(merged, catalog.staging_dir / STAGED_ITEMS)


def _stage_collection(catalog: Catalog, stage: dict, collection_id: str, name: str,
                      restricted: bool, meta: dict) -> None:
    collections = stage.setdefault("collections", {})
    entry = collections.get(collection_id, {})
    entry.update({k: v for k, v in meta.items() if k in COLLECTION_COLUMNS and v is not None})
    entry.setdefault("collection_name", name)
    # restriction is sticky: adding files without --restricted must not make a collection public
    active = catalog._state()["active"]
    was_restricted = active is not None and collection_id in catalog.restricted_collections(active)
    entry["restricted"] = bool(restricted or was_restricted or entry.get("restricted"))
    collections[collection_id] = entry


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


def publish(catalog: Catalog, date_active: str | None = None) -> int:
    """Turn the stage into the next version, atomically, and make it active."""
    stage = catalog.stage()
    if not stage:
        raise CatalogError("Nothing is staged: ingest or clinical-import something first.")
    state = catalog._state()
    previous = catalog.version(state["active"]).manifest if state["active"] else {}
    if previous.get("stage_id") == stage.get("id"):
        # a publish that stopped between the flip and clearing the stage: it is done already
        catalog.clear_stage()
        return state["active"]
    number = max(state["versions"], default=0) + 1
    con = catalog.connection()

    shared_items = [f for f in previous.get("items", []) if f != previous.get("local_items")]
    local_items = previous.get("local_items")
    if stage.get("items"):
        local_path = catalog.new_segment_path("local-items")
        copy_to_parquet(con, f"""
            SELECT * REPLACE (coalesce(version_min, {number}) AS version_min)
            FROM read_parquet('{catalog.staging_dir / stage["items"]}')""", local_path)
        local_items = local_path.name
    items = shared_items + ([local_items] if local_items else [])

    clinical = [c for c in previous.get("clinical", [])
                if (c["source"], c["collection_id"]) not in
                {(s["source"], s["collection_id"]) for s in stage.get("clinical", [])}]
    for entry in stage.get("clinical", []):
        dest = catalog.segments_dir / entry["file"]
        shutil.copyfile(catalog.staging_dir / entry["file"], dest)
        clinical.append(entry)

    present = f"(SELECT DISTINCT {{key}} FROM ({_union_items(catalog, items, number)}))"
    collections = _next_membership_table(
        catalog, previous.get("collections", []), stage.get("collections", {}),
        present.format(key="collection_id"), "collection_id", number, "collections")
    analysis = _next_membership_table(
        catalog, previous.get("analysis_results", []), {},
        present.format(key="analysis_result_id"), "analysis_result_id", number,
        "analysis-results") if previous.get("analysis_results") else None

    manifest = {
        "date_active": date_active or dt.date.today().isoformat(),
        "source": "ingest",
        "items": items,
        "local_items": local_items,
        "collections": [collections],
        "analysis_results": [analysis] if analysis else [],
        "clinical": clinical,
        "stage_id": stage["id"],
    }
    published = catalog.publish_version(manifest, number=number)
    catalog.clear_stage()
    return published


def _union_items(catalog: Catalog, files: list[str], number: int) -> str:
    parts = [f"SELECT * FROM read_parquet('{catalog.segments_dir / f}') "
             f"WHERE version_min <= {number} "
             f"AND (version_max IS NULL OR version_max >= {number})" for f in files]
    return " UNION ALL BY NAME ".join(parts) if parts else empty_items_sql()


def _next_membership_table(catalog: Catalog, previous_files: list[str], staged: dict,
                           present_sql: str, key: str, number: int, prefix: str) -> str:
    """Carry a collections-like table forward: staged rows override, and every row whose key has
    items in the new version gets that version appended to idc_data_versions."""
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
            SELECT * REPLACE (CASE WHEN {_q(key)} IN {present_sql}
                              THEN list_append(idc_data_versions, {number})
                              ELSE idc_data_versions END AS idc_data_versions)
            FROM ({prev}) ORDER BY {_q(key)}""", path)
    finally:
        if staged:
            con.unregister("staged_rows")
    return path.name
