"""Reading the files an ingest is given: regular files only (a device, FIFO, socket or
broken link is skipped, never opened for reading), of at most the archive's size cap, read
by position from one descriptor."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from ...config import TUNABLE_ENV
from ..catalog import Catalog
from ..errors import InvalidRequest

# Files larger than this many bytes are skipped unread. The default, 64 GiB, is above the
# largest whole-slide images and multi-frame series; a larger "file" is more likely a disk
# image (or a special file posing as a huge one) than an instance.
MAX_FILE_SIZE_ENV = TUNABLE_ENV["max_file_size"][0]


def max_file_size(catalog: Catalog) -> int:
    """The size above which ingest skips a file: the archive's max_file_size
    (IMAGING_COMMONS_MAX_FILE_SIZE, bytes)."""
    limit = catalog.archive.max_file_size
    if limit < 0:
        raise InvalidRequest(f"{MAX_FILE_SIZE_ENV}={limit} is not a number of bytes")
    return limit


def iter_files(paths: Iterable[str | os.PathLike]) -> Iterator[Path]:
    """Every file under the given files and folders, in a stable order, whatever its kind:
    whether it is a regular file is judged when it is opened (see open_regular), so that a
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
            raise InvalidRequest(f"No such file or folder: {p}", not_found=[str(p)])


# O_NONBLOCK: opening a FIFO must not wait for a writer; O_NOCTTY: nor may a terminal device
# become the process's controlling terminal.
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_KINDS = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device", stat.S_IFIFO: "FIFO",
          stat.S_IFSOCK: "socket", stat.S_IFDIR: "directory"}


def open_regular(path: Path, limit: int) -> tuple[int, int] | str:
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


class FirstBytes(io.RawIOBase):
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
