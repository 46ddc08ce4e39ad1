"""Where an archive lives and how it is configured: one object every command and the server
share."""

from __future__ import annotations

import atexit
import glob
import os
import shutil
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

ARCHIVE_ENV = "IMAGING_COMMONS_ARCHIVE"
ACCOUNTS_URL_ENV = "IMAGING_COMMONS_ACCOUNTS_URL"
SECRET_ENV = "IMAGING_COMMONS_SECRET"
BLOB_URL_ENV = "IMAGING_COMMONS_BLOB_URL"
# Archive settings a deployment may set from the environment: field -> (variable, type)
TUNABLE_ENV = {
    "token_lifetime_s": ("IMAGING_COMMONS_TOKEN_LIFETIME", int),
    "query_deadline_s": ("IMAGING_COMMONS_QUERY_DEADLINE", float),
    "max_page_size": ("IMAGING_COMMONS_MAX_PAGE_SIZE", int),
    "max_body_bytes": ("IMAGING_COMMONS_MAX_BODY", int),
    "cors_origins": ("IMAGING_COMMONS_CORS_ORIGINS", str),
    "login_free_failures": ("IMAGING_COMMONS_LOGIN_FREE_FAILURES", int),
    "login_max_delay_s": ("IMAGING_COMMONS_LOGIN_MAX_DELAY", int),
    "heavy_per_client": ("IMAGING_COMMONS_HEAVY_PER_CLIENT", int),
    "max_list_rows": ("IMAGING_COMMONS_MAX_LIST_ROWS", int),
    "max_file_size": ("IMAGING_COMMONS_MAX_FILE_SIZE", int),
    "memory_limit": ("IMAGING_COMMONS_MEMORY_LIMIT", str),
    "compact_every_s": ("IMAGING_COMMONS_COMPACT_EVERY", float),
}


_SCRATCH_LOCK = threading.Lock()
_SCRATCH_MADE: set[Path] = set()


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        pass
    return True


@dataclass
class Archive:
    """An archive directory: catalogue (Parquet segments + version manifests), blobs, accounts."""

    root: Path
    accounts_url: str | None = None
    token_lifetime_s: int = 7200
    query_deadline_s: float = 30.0
    max_page_size: int = 65536
    # request bodies over this are refused (413) as they arrive, never read whole first
    max_body_bytes: int = 16 << 20
    # origins allowed to call the APIs from a browser page ("*" for any); none by default
    cors_origins: str = ""
    # sign-in failures per user name and per address before each further failure doubles
    # the wait (1 s, 2 s, 4 s, ... up to login_max_delay_s), refused with 429 until it passes
    login_free_failures: int = 5
    login_max_delay_s: int = 900
    # heavy answers (whole lists, zips) one client may have running at once
    heavy_per_client: int = 4
    # the most rows one NBIA list answer holds (the whole IDC catalogue is ~1.04M series)
    max_list_rows: int = 2_000_000
    # bytes of the largest file ingest reads (larger ones are reported and skipped)
    max_file_size: int = 64 << 30
    # memory the query engine may use (DuckDB's memory_limit: "2GB", "512MB"); queries larger
    # than it spill to the archive's disk
    memory_limit: str = "2GB"
    # how often a server looks for small segments to merge (seconds; 0: never, leaving it to
    # `imaging-commons compact`)
    compact_every_s: float = 300.0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = Path(self.root).resolve()

    @classmethod
    def from_env(cls, root: str | os.PathLike | None = None, **overrides) -> Archive:
        """The archive at `root` (else IMAGING_COMMONS_ARCHIVE, else ./archive), with the
        settings of TUNABLE_ENV taken from the environment where set."""
        root = root or os.environ.get(ARCHIVE_ENV) or "archive"
        if overrides.get("accounts_url") is None:
            overrides["accounts_url"] = os.environ.get(ACCOUNTS_URL_ENV)
        for field_name, (variable, kind) in TUNABLE_ENV.items():
            raw = os.environ.get(variable)
            if raw and field_name not in overrides:
                try:
                    overrides[field_name] = kind(raw)
                except ValueError:
                    raise ValueError(f"{variable}={raw!r} is not a {kind.__name__}") from None
        return cls(Path(root), **overrides)

    @property
    def catalog_dir(self) -> Path:
        return self.root / "catalog"

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def scratch_dir(self) -> Path:
        """Work files of running processes (results too large for memory, DuckDB's spills): on
        the archive's disk, which is sized for the data, not in /tmp, which may be memory."""
        return self.root / "tmp"

    def process_scratch_dir(self) -> Path:
        """This process's own folder of scratch_dir, made on first use and removed when the
        process ends; the folders of processes of this host that no longer run (killed ones)
        are removed then too. Named by host and process, so several servers, even in
        containers, can share an archive."""
        host = socket.gethostname()
        mine = self.scratch_dir / f"{host}-{os.getpid()}"
        with _SCRATCH_LOCK:
            if mine not in _SCRATCH_MADE:
                self.scratch_dir.mkdir(parents=True, exist_ok=True)
                for other in self.scratch_dir.glob(f"{glob.escape(host)}-*"):
                    pid = other.name.rpartition("-")[2]
                    if pid.isdigit() and other != mine and not _running(int(pid)):
                        shutil.rmtree(other, ignore_errors=True)
                mine.mkdir(exist_ok=True)
                atexit.register(shutil.rmtree, mine, True)
                _SCRATCH_MADE.add(mine)
        return mine

    @property
    def blob_url(self) -> str:
        """The storage URL prefix manifests give for stored files (GCS_URL). The local store's
        own is a file:// URL; an archive whose blob folder is synced to a bucket or served over
        HTTP sets IMAGING_COMMONS_BLOB_URL (e.g. s3://my-bucket) before ingesting."""
        return (os.environ.get(BLOB_URL_ENV) or self.blob_dir.as_uri()).rstrip("/")

    @property
    def database_url(self) -> str:
        return self.accounts_url or f"sqlite:///{self.root / 'accounts.sqlite'}"

    @property
    def secret_file(self) -> Path:
        return self.root / "secret.key"

    def secret(self) -> bytes:
        """The server's signing/encryption key (Fernet format), made once per archive."""
        env = os.environ.get(SECRET_ENV)
        if env:
            return env.encode()
        if not self.secret_file.exists():
            from cryptography.fernet import Fernet

            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.secret_file.with_suffix(".tmp")
            tmp.write_bytes(Fernet.generate_key())
            tmp.chmod(0o600)
            os.replace(tmp, self.secret_file)
        return self.secret_file.read_bytes().strip()
