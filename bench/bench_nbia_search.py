"""NBIA simple search (getSimpleSearchWithModalityAndBodyPartPaged) over the full imported IDC
catalogue, through HTTP on loopback: p50/p90 latency of five criteria sets, each as a ratio
against a baseline in the same run, raw DuckDB counting the matching patients over an
in-memory copy of idc-index-data's series table (the search also pages, nests studies and
counts four facets, so the ratio shows what that costs).

    .venv/bin/python bench/bench_nbia_search.py [--archive PATH] [--runs 15]

Without --archive it imports the IDC catalogue into a temporary archive first. Goal: p50
under 300 ms per criteria set on a 2-core machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import duckdb
import idc_index_data
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from serving import idc_archive, running_server  # noqa: E402

SEARCH = "/nbia-api/services/getSimpleSearchWithModalityAndBodyPartPaged"
# (label, form fields, the same patients as a SQL condition over idc_index)
CRITERIA_SETS = [
    ("no criteria, first page", {}, "true"),
    ("Modality CT, subject descending",
     {"criteriaType0": "ImageModalityCriteria", "value0": "CT", "sortDirection": "descending"},
     "Modality = 'CT'"),
    ("Collection TCGA-LUAD", {"criteriaType0": "CollectionCriteria", "value0": "TCGA-LUAD"},
     "collection_id = 'tcga_luad'"),
    ("MR + BREAST, by series count, page 100",
     {"criteriaType0": "ImageModalityCriteria", "value0": "MR",
      "criteriaType1": "AnatomicalSiteCriteria", "value1": "BREAST",
      "sortField": "totalNumberOfSeries", "sortDirection": "descending", "start": "1000"},
     "Modality = 'MR' AND BodyPartExamined = 'BREAST'"),
    ("study dates 2000, human",
     {"criteriaType0": "DateRangeCriteria", "fromDate0": "01/01/2000", "toDate0": "12/31/2000",
      "criteriaType1": "SpeciesCriteria", "value1": "337915000"},
     "StudyDate BETWEEN '2000-01-01' AND '2000-12-31'"),
]


def latencies(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return sorted(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    with idc_archive(args.archive) as archive:
        con = duckdb.connect()
        index = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent / "idc_index.parquet"
        con.execute(f"CREATE TABLE idc AS SELECT collection_id, PatientID, Modality, "
                    f"BodyPartExamined, StudyDate::VARCHAR AS StudyDate "
                    f"FROM read_parquet('{index}')")
        with running_server(archive, args.port, "/nbia-api/services/getSpeciesTax") as base:
            session = requests.Session()
            url = base + SEARCH
            print(f"simple search over the full catalogue, {args.runs} runs each, HTTP vs raw "
                  f"DuckDB patient count:")
            p50s = []
            for label, form, condition in CRITERIA_SETS:
                def ours():
                    r = session.post(url, data={"size": "10", **form})
                    r.raise_for_status()
                    return r.json()

                total = ours()["totalPatients"]
                ours_s = latencies(ours, args.runs)
                raw_s = latencies(lambda: con.execute(
                    f"SELECT count(DISTINCT (collection_id, PatientID)) FROM idc WHERE {condition}"
                ).fetchone(), args.runs)
                p50, p90 = statistics.median(ours_s), ours_s[int(len(ours_s) * 0.9) - 1]
                p50s.append(p50)
                print(f"  {label:40s} {total:>6} patients  p50 {p50 * 1000:6.1f} ms  "
                      f"p90 {p90 * 1000:6.1f} ms  raw count p50 "
                      f"{statistics.median(raw_s) * 1000:6.1f} ms  "
                      f"ratio {p50 / statistics.median(raw_s):5.1f}")
            print(f"  worst p50 {max(p50s) * 1000:.1f} ms (goal < 300 ms)")
    print("\nreproduce: .venv/bin/python bench/bench_nbia_search.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
