"""NBIA getImage zip streaming throughput, as a ratio to reading the same stored files from disk
in the same run.

    .venv/bin/python bench/bench_nbia_zip.py [--copies 400] [--runs 7]

The series is SYNTHESIZED: `--copies` copies of pydicom's examples_overlay.dcm (314 KB each)
given fresh study/series/SOP UIDs, ingested into a temporary archive. The server is the real
CLI (`imaging-commons serve`, uvicorn) in its own process; the client reads the response on
loopback into a reused buffer. The baseline reads the stored blobs 1 MB at a time. Both are
measured warm (files in the page cache, as on a busy server) and, where this process may drop
the page cache (root on Linux), cold: files read from the disk itself. Medians of `--runs` runs.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests"), str(ROOT / "bench")]

import pydicom  # noqa: E402

from conftest import SAMPLES, free_port  # noqa: E402
from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.front_door import Commons  # noqa: E402
from imaging_commons.core.ingest import ingest, publish  # noqa: E402
from serving import running_server  # noqa: E402
from test_nbia_images import write_copies  # noqa: E402

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


DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def drop_page_cache() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def can_drop_page_cache() -> bool:
    try:
        drop_page_cache()
        return True
    except OSError:
        return False


def median_rate(fn, runs: int, cold: bool = False) -> tuple[float, int]:
    """Median MB/s of `runs` timed calls (after one warm-up) and the bytes each moved; `cold`
    drops the page cache before each call."""
    size = fn()
    rates = []
    for _ in range(runs):
        if cold:
            drop_page_cache()
        start = time.perf_counter()
        size = fn()
        rates.append(size / (time.perf_counter() - start) / 1e6)
    return statistics.median(rates), size


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
        rates = {}
        with running_server(archive.root, free_port(), "/docs") as base:
            port = int(base.rsplit(":", 1)[1])
            target = f"/nbia-api/services/v4/getImage?SeriesInstanceUID={series_uid}"
            for cold in (False, True) if can_drop_page_cache() else (False,):
                rates[cold] = (median_rate(lambda: download(port, target), args.runs, cold),
                               median_rate(lambda: read_from_disk(blobs), args.runs, cold))
    (zip_rate, zip_bytes), (disk_rate, disk_bytes) = rates[False]
    print(f"synthesized series: {args.copies} copies of examples_overlay.dcm, "
          f"{disk_bytes / 1e6:.1f} MB of files, {zip_bytes / 1e6:.1f} MB of zip")
    for cold, ((zip_rate, _), (disk_rate, _)) in rates.items():
        label = "cold (page cache dropped)" if cold else "warm (files in page cache)"
        print(f"{label}: read from disk {disk_rate:6.0f} MB/s, getImage zip over HTTP "
              f"{zip_rate:6.0f} MB/s, ratio {zip_rate / disk_rate:.2f} (goal >= 0.5)")
    if True not in rates:
        print("cold: not measured (this process may not drop the page cache)")
    print("reproduce: .venv/bin/python bench/bench_nbia_zip.py")


if __name__ == "__main__":
    main()
