"""NBIA whole-collection lists (`v1/getSeries?Collection=NLST`: 592,600 series, 482 MB of
JSON) over the full imported IDC catalogue, through HTTP on loopback: the server's memory
while it sends one and several at once, and the time of one, against raw DuckDB reading the
same rows in the same order from idc-index-data's Parquet in this process (the baseline, in
the same run).

    .venv/bin/python bench/bench_nbia_lists.py [--archive PATH] [--concurrent 4]

Without --archive it imports the IDC catalogue into a temporary archive first. Goal: the
server's peak memory grows by a small fraction of the answers' size, whatever their number.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import duckdb
import idc_index_data
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from serving import idc_archive, running_server  # noqa: E402

LIST = "/nbia-api/services/v1/getSeries?Collection=NLST"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def server_pid(port: int) -> int:
    """The server process: the one whose command line serves `port`."""
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"serve" in args and str(port).encode() in args:
            return int(proc.name)
    raise SystemExit("server process not found")


def fetch(url: str, sizes: list[int]) -> None:
    with requests.get(url, stream=True, timeout=900) as response:
        sizes.append(sum(len(c) for c in response.iter_content(1 << 20)))


def measure(base: str, pid: int, clients: int) -> tuple[float, float, int]:
    """Seconds until all `clients` answers are read, the server's peak RSS growth (MB) over
    them, and the bytes of one answer."""
    before = rss_mb(pid)
    peak = before
    sizes: list[int] = []
    threads = [threading.Thread(target=fetch, args=(base + LIST, sizes)) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        peak = max(peak, rss_mb(pid))
        time.sleep(0.05)
    return time.perf_counter() - start, peak - before, sizes[0]


def baseline_seconds() -> float:
    con = duckdb.connect()
    start = time.perf_counter()
    rows = con.execute(f"""
        SELECT * FROM read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}')
        WHERE collection_id = 'nlst'
        ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID""").fetchall()
    assert len(rows) > 500_000
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", help="an archive with the IDC catalogue imported")
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--port", type=int, default=8791)
    args = parser.parse_args()
    raw = baseline_seconds()
    with idc_archive(args.archive) as archive, \
            running_server(archive, args.port, "/v1/about",
                           env={"IMAGING_COMMONS_HEAVY_PER_CLIENT": str(args.concurrent)}) as base:
        pid = server_pid(args.port)
        one, one_growth, size = measure(base, pid, 1)
        many, many_growth, _ = measure(base, pid, args.concurrent)
    print(f"command: .venv/bin/python bench/bench_nbia_lists.py --concurrent {args.concurrent}")
    print(f"answer: {size / 1e6:.0f} MB of JSON")
    print(f"one answer: {one:.1f} s (raw DuckDB reading the same rows in order: {raw:.1f} s, "
          f"ratio {one / raw:.1f}); server peak RSS +{one_growth:.0f} MB "
          f"({one_growth * 2**20 / size:.2f} of the answer)")
    print(f"{args.concurrent} at once: {many:.1f} s; server peak RSS +{many_growth:.0f} MB "
          f"({many_growth * 2**20 / (size * args.concurrent):.2f} of the answers)")


if __name__ == "__main__":
    main()
