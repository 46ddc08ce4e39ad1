"""What the HTTP benchmarks share: a real server process over an archive, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import requests

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def running_server(archive: Path, port: int, ready_path: str) -> Iterator[str]:
    """Run `imaging-commons serve` over `archive`; yields its base URL once `ready_path`
    answers, and stops it on the way out."""
    proc = subprocess.Popen([sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive),
                             "serve", "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
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
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)
