"""NBIA getImage zip streaming throughput, as a ratio to reading the same stored files from disk
in the same run.

    .venv/bin/python bench/bench_nbia_zip.py [--copies 400] [--runs 7]

The series is SYNTHESIZED: `--copies` copies of pydicom's examples_overlay.dcm (314 KB each)
given fresh study/series/SOP UIDs, ingested into a temporary archive. The server is the real
CLI (`imaging-commons serve`, uvicorn) in its own process; the client reads the response on
loopback into a reused buffer. The baseline reads the stored blobs 1 MB at a time (they are in
the page cache after ingest, as they would be on a busy server). Medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import pydicom  # noqa: E402
from conftest import SAMPLES, free_port  # noqa: E402
from test_nbia_images import write_copies  # noqa: E402

from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.commons import Commons  # noqa: E402
from imaging_commons.core.ingest import ingest, publish  # noqa: E402

CHUNK = 1 << 20


def read_from_disk(paths: list[Path]) -> int:
    buffer = bytearray(CHUNK)
    total = 0
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                total += n
    return total


def download(port: int, target: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    connection.request("GET", target)
    response = connection.getresponse()
    if response.status != 200:
        raise SystemExit(f"getImage answered {response.status}: {response.read()[:200]!r}")
    buffer = bytearray(CHUNK)
    total = 0
    while n := response.readinto(buffer):
        total += n
    connection.close()
    return total


def median_rate(fn, runs: int) -> tuple[float, int]:
    """Median MB/s of `runs` timed calls (after one warm-up) and the bytes each moved."""
    size = fn()
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        size = fn()
        rates.append(size / (time.perf_counter() - start) / 1e6)
    return statistics.median(rates), size


def start_server(archive: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive), "serve",
         "--port", str(port)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/docs")
            return proc
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--copies", type=int, default=400)
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        archive = Archive(Path(tmp) / "archive")
        catalog = Commons(archive).catalog
        copies = write_copies(SAMPLES / "examples_overlay.dcm", args.copies, Path(tmp) / "copies")
        ingest(catalog, copies, "bench")
        publish(catalog)
        series_uid = pydicom.dcmread(copies[0], stop_before_pixels=True).SeriesInstanceUID
        blobs = sorted(archive.blob_dir.rglob("*.dcm"))
        port = free_port()
        server = start_server(archive.root, port)
        try:
            target = f"/nbia-api/services/v4/getImage?SeriesInstanceUID={series_uid}"
            zip_rate, zip_bytes = median_rate(lambda: download(port, target), args.runs)
        finally:
            server.terminate()
            server.wait()
        disk_rate, disk_bytes = median_rate(lambda: read_from_disk(blobs), args.runs)
    print(f"synthesized series: {args.copies} copies of examples_overlay.dcm, "
          f"{disk_bytes / 1e6:.1f} MB of files, {zip_bytes / 1e6:.1f} MB of zip")
    print(f"read from disk (baseline)   {disk_rate:8.0f} MB/s")
    print(f"getImage zip over HTTP      {zip_rate:8.0f} MB/s")
    print(f"ratio zip / disk            {zip_rate / disk_rate:8.2f}   (goal >= 0.5)")


if __name__ == "__main__":
    main()
