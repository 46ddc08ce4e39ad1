"""The stored copies of ingested files: read once, hashed while they are copied into the
blob store under `<crdc_series_uuid>/<crdc_instance_uuid>.dcm`, each described by one
instance row."""

from __future__ import annotations

import hashlib
import itertools
import os
import uuid
import warnings
import zlib
from collections.abc import Iterable
from functools import partial
from pathlib import Path

from ..dicom_rows import NotDicom, instance_row, read_header
from .files import FirstBytes, open_regular

# Namespace of the archive's UUIDs: a UID (and, for instances, the content hash) always maps to
# the same UUID, which is what makes re-ingest idempotent.
UUID_NAMESPACE = uuid.UUID("6f0d6b1e-54c2-4a8e-9a52-3f1b1d0c2a77")


def crdc_uuid(kind: str, *parts: str) -> str:
    return str(uuid.uuid5(UUID_NAMESPACE, ":".join((kind, *parts))))


_part_numbers = itertools.count()


class BlobWriter:
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
        BlobWriter.__init__(self, *state)

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


def read_and_store(path: Path, writer: BlobWriter, blob_url: str, limit: int) -> dict | str:
    """The per-file work of ingest: header, row, stored copy. Returns the row, or the reason
    the file is not ingestible. Runs in worker processes for large ingests. The header and the
    copy are read from one descriptor, opened once: the path is never opened again, so it
    cannot be swapped for something else in between."""
    opened = open_regular(path, limit)
    if isinstance(opened, str):
        return opened
    with FirstBytes(*opened) as source:
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
