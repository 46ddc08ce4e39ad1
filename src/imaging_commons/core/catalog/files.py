"""Files of the catalogue written atomically: a reader, or a crash, sees the old file or the
new one, never half of one."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq


def write_json_atomic(path: Path, data) -> None:
    """Replace a JSON file all at once: a reader (or a crash) sees the old file or the new one.
    The folder is synced too, so the rename itself survives a power cut."""
    with _written_aside(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    sync_folder(path.parent)


def sync_folder(folder: Path) -> None:
    """Make the names in a folder (its files, a rename into it) survive a power cut."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)



def parquet_scan(path: Path, extra: str = "") -> str:
    """DuckDB's read of one Parquet file, its path quoted as a SQL string."""
    return "read_parquet('" + str(path).replace("'", "''") + f"'{extra})"


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
