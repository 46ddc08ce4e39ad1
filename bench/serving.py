"""What the HTTP benchmarks share: a real server process over an archive, on loopback."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]


def start_server(archive: Path, port: int, ready_path: str) -> subprocess.Popen:
    """Start `imaging-commons serve` and return once `ready_path` answers."""
    proc = subprocess.Popen([sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive),
                             "serve", "--port", str(port)], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(600):
        try:
            requests.get(f"http://127.0.0.1:{port}{ready_path}", timeout=120)
            return proc
        except requests.ConnectionError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")
