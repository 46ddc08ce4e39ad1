"""What to tell a person when the archive's disk cannot take a write (read-only, full, or not
the process's to write) or a query needs more memory than the engine's limit.

Such a fault is no bug of the request or the command that met it, so it is never answered with
a traceback: the server answers 503 with the sentence `storage_problem` gives, and the CLI
prints it as its one-line error. The faults come from the operating system (OSError), from
DuckDB (its temporary files, its Parquet writes) and from the accounts database (SQLite through
SQLAlchemy), each of which words them its own way.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

_READ_ONLY = "the archive's storage is read-only"
_FULL = "the archive's disk is full"
_DENIED = "this process may not write (or read) the archive's files"
_MEMORY = "the query needs more memory than the query engine may use"
_FIXES = {
    _READ_ONLY: "mount it read-write (or point --archive at a writable copy) and try again",
    _FULL: "free some space on it and try again",
    _DENIED: "run as the archive's owner, or give this user write access to it",
    _MEMORY: "narrow the query, or raise IMAGING_COMMONS_MEMORY_LIMIT",
}
_BY_ERRNO = {errno.EROFS: _READ_ONLY, errno.ENOSPC: _FULL, errno.EDQUOT: _FULL,
             errno.EACCES: _DENIED, errno.EPERM: _DENIED}
# what DuckDB and SQLite say in place of an errno (lower case); SQLite's "unable to open" is
# what a read-only folder gives it too, where it cannot make its journal files
_BY_TEXT = (("read-only file system", _READ_ONLY), ("readonly database", _READ_ONLY),
            ("no space left on device", _FULL), ("database or disk is full", _FULL),
            ("disk quota exceeded", _FULL), ("permission denied", _DENIED),
            ("unable to open database file", _DENIED), ("out of memory error", _MEMORY))


def storage_problem(exc: BaseException, root: Path | None = None) -> str | None:
    """A one-line account of `exc`, with the fix, when it is the archive's storage refusing a
    write; None for anything else. Given the archive's `root`, the file system it lies on is
    asked too: a read-only or full one is named as such, whatever words the error used."""
    cause = next(filter(None, map(_cause, _chain(exc))), None)
    if cause is None:
        return None
    if root is not None:
        cause = _state_of(root) or cause
    return f"{cause}: {_FIXES[cause]}"


def _cause(e: BaseException) -> str | None:
    if isinstance(e, OSError) and e.errno in _BY_ERRNO:
        return _BY_ERRNO[e.errno]
    text = str(e).lower()
    return next((c for marker, c in _BY_TEXT if marker in text), None)


def _state_of(root: Path) -> str | None:
    try:
        fs = os.statvfs(root)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return _READ_ONLY
    return _FULL if fs.f_bavail == 0 else None


def _chain(exc: BaseException | None):
    """`exc` and the exceptions it was raised from (SQLAlchemy wraps the driver's)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__
