"""What the HTTP benchmarks share: a real server process over an archive, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
WARMED_PATH = "/nbia-api/services/getSimpleSearchWithModalityAndBodyPartPaged?size=1"


@contextmanager
def running_server(archive: Path, port: int, ready_path: str,
                   env: dict | None = None, root: Path = ROOT) -> Iterator[str]:
    """Run `imaging-commons serve` over `archive` (with extra environment `env`) from the
    checkout at `root`; yields its base URL once `ready_path` answers, and stops it on the way
    out."""
    proc = subprocess.Popen([sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive),
                             "serve", "--port", str(port)], cwd=root,
                            env={**os.environ, "PYTHONPATH": str(root / "src"), **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                requests.get(base + ready_path, timeout=120)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        else:
            raise SystemExit("server did not start")
        # the server builds its search index in the background at start; a search waits for
        # it, so measurements start once the server is as it will be for its whole life
        requests.get(base + WARMED_PATH, timeout=600)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@contextmanager
def idc_archive(path: str | None) -> Iterator[Path]:
    """The archive at `path`, or a temporary one the full IDC catalogue is imported into."""
    if path:
        yield Path(path)
        return
    sys.path.insert(0, str(ROOT / "src"))
    from imaging_commons.config import Archive
    from imaging_commons.core.front_door import Commons
    from imaging_commons.core.idc_import import import_idc

    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "archive"
        start = time.perf_counter()
        import_idc(Commons(Archive(archive)).catalog)
        print(f"import-idc into a temporary archive: {time.perf_counter() - start:.1f} s")
        yield archive
