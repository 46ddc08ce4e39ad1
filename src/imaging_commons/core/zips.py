"""Streaming ZIP archives of stored files (NBIA's getImage downloads).

The standard library's zipfile, writing to a stream it cannot seek, computes each member's
CRC-32 while it copies the bytes and puts CRC and sizes in a data descriptor after the data.
Two things follow: a download costs a CRC pass over every byte (here the slowest step of the
stream), and Java's ZipInputStream, which NBIA's own tools are built on, refuses stored members
with data descriptors. Ingest records each file's CRC-32 along with its md5, so this writer
puts CRC and sizes in the local headers up front and streams the files' bytes untouched.
"""

from __future__ import annotations

import re
import struct
import time
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Above this, sizes and offsets go in ZIP64 extra fields (a module value so tests can lower it).
ZIP64_LIMIT = 0xFFFFFFFF - 1
_UTF8_NAMES = 0x0800
_UNIX_FILE = 0o100644 << 16


@dataclass(frozen=True, slots=True)
class Member:
    """One archive member: a file on disk (with its CRC-32 if known) or bytes in memory."""

    name: str
    source: Path | bytes
    crc32: int | None = None


def safe_file_name(name: str) -> str:
    """A file name made from identifiers, safe to save as given: any character but letters,
    digits, '.', '-' and '_' becomes '_' and leading dots are dropped, so it cannot reach
    outside the folder it is saved or extracted in ('../', '/etc', 'C:\\'), hide itself, or
    carry a quote or a control character into a header or a listing. Downloads are offered
    under such names."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def member_path(name: str) -> str:
    """The path a member is written under: `name`'s '/'-separated parts, each made a safe
    file name, so it extracts inside the folder it is extracted in, whatever it was."""
    return "/".join(safe_file_name(part) for part in name.split("/"))


def _dos_time(epoch: float) -> tuple[int, int]:
    t = time.localtime(epoch)
    year = min(max(t.tm_year, 1980), 2107)
    return (t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2,
            (year - 1980) << 9 | t.tm_mon << 5 | t.tm_mday)


def _file_crc32(path: Path, chunk_size: int) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            crc = zlib.crc32(chunk, crc)
    return crc


@dataclass
class _Written:
    name: bytes
    crc: int
    size: int
    offset: int
    dos_time: tuple[int, int]

    @property
    def zip64(self) -> bool:
        return self.size > ZIP64_LIMIT or self.offset > ZIP64_LIMIT


def _local_header(m: _Written) -> bytes:
    extra = struct.pack("<HHQQ", 1, 16, m.size, m.size) if m.zip64 else b""
    size = 0xFFFFFFFF if m.zip64 else m.size
    return struct.pack("<IHHHHHIIIHH", 0x04034B50, 45 if m.zip64 else 20, _UTF8_NAMES, 0,
                       *m.dos_time, m.crc, size, size, len(m.name), len(extra)) + m.name + extra


def _central_header(m: _Written) -> bytes:
    values = [v for v in (m.size, m.size, m.offset) if m.zip64]
    extra = struct.pack(f"<HH{len(values)}Q", 1, 8 * len(values), *values) if values else b""
    size = 0xFFFFFFFF if m.zip64 else m.size
    offset = 0xFFFFFFFF if m.zip64 else m.offset
    version = 45 if m.zip64 else 20
    return struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 3 << 8 | version, version, _UTF8_NAMES,
                       0, *m.dos_time, m.crc, size, size, len(m.name), len(extra), 0, 0, 0,
                       _UNIX_FILE, offset) + m.name + extra


def _end_records(count: int, start: int, size: int) -> bytes:
    if count < 0xFFFF and start <= ZIP64_LIMIT and size <= ZIP64_LIMIT:
        return struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, size, start, 0)
    zip64_end = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, count, count, size, start)
    locator = struct.pack("<IIQI", 0x07064B50, 0, start + size, 1)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0)
    return zip64_end + locator + end


def iter_zip(members: Iterable[Member], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield a ZIP archive (stored members, in the given order) in blocks of about
    `chunk_size`. Memory stays around one block whatever the archive size; a file member
    without a known CRC-32 is read once more to compute it."""
    written: list[_Written] = []
    pending: list[bytes] = []
    held = offset = 0

    def emit(data: bytes) -> Iterator[bytes]:
        nonlocal held, offset
        pending.append(data)
        held += len(data)
        offset += len(data)
        if held >= chunk_size:
            yield b"".join(pending)
            pending.clear()
            held = 0

    for member in members:
        if isinstance(member.source, bytes):
            size, stamp = len(member.source), time.time()
            crc = zlib.crc32(member.source) if member.crc32 is None else member.crc32
        else:
            stat = member.source.stat()
            size, stamp = stat.st_size, stat.st_mtime
            crc = _file_crc32(member.source, chunk_size) if member.crc32 is None else member.crc32
        entry = _Written(member_path(member.name).encode(), crc, size, offset,
                         _dos_time(stamp))
        written.append(entry)
        yield from emit(_local_header(entry))
        if isinstance(member.source, bytes):
            yield from emit(member.source)
        else:
            with open(member.source, "rb") as f:
                while chunk := f.read(chunk_size):
                    yield from emit(chunk)
    start = offset
    for entry in written:
        yield from emit(_central_header(entry))
    yield b"".join(pending) + _end_records(len(written), start, offset - start)
