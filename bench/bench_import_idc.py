"""`import-idc` wall time for the full IDC v25 catalogue (idc-index-data) into a fresh archive,
against a baseline measured in the same run: DuckDB merely reading idc_index.parquet into a
table. Goal: import < 60 s on this 2-core machine.

    .venv/bin/python bench/bench_import_idc.py
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.catalog import Catalog  # noqa: E402
from imaging_commons.core.idc_import import import_idc, index_dir  # noqa: E402

GOAL_S = 60.0


def baseline_read_s(repeat: int = 3) -> tuple[float, int]:
    """Best seconds for DuckDB (as many threads as the catalogue's) to load idc_index.parquet
    into a table, and the row count."""
    con = duckdb.connect(config={"threads": os.cpu_count() or 2})
    con.execute("SET enable_progress_bar = false")
    source = index_dir() / "idc_index.parquet"
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        con.execute(f"CREATE OR REPLACE TABLE series AS SELECT * FROM read_parquet('{source}')")
        best = min(best, time.perf_counter() - start)
    return best, con.execute("SELECT count(*) FROM series").fetchone()[0]


def main() -> int:
    for parquet in index_dir().glob("*.parquet"):  # warm the page cache for both sides
        parquet.read_bytes()
    base_s, rows = baseline_read_s()
    with tempfile.TemporaryDirectory() as tmp:
        catalog = Catalog(Archive(Path(tmp)))
        start = time.perf_counter()
        summary = import_idc(catalog)
        import_s = time.perf_counter() - start
        active = Catalog(Archive(Path(tmp))).active_version()  # as a new process sees it
    if (summary.series, active) != (rows, summary.versions):
        print(f"FAILED: imported {summary.series} current series (the Parquet has {rows}), "
              f"active version {active} of {summary.versions}")
        return 1
    print(f"imported {summary.series} series + {summary.prior_series} prior-version series, "
          f"{summary.collections} collections, {summary.analysis_results} analysis results, "
          f"{summary.versions} versions, v{active} active ({os.cpu_count()} CPUs)")
    print(f"baseline: DuckDB reads idc_index.parquet into a table: {base_s:6.2f} s")
    verdict = "ok" if import_s < GOAL_S else "OVER GOAL"
    print(f"import-idc:                                          {import_s:6.2f} s "
          f"(goal < {GOAL_S:.0f} s) {verdict}")
    print(f"ratio import / baseline: {import_s / base_s:.1f}")
    print("reproduce: .venv/bin/python bench/bench_import_idc.py")
    return 0 if import_s < GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
