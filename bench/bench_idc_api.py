"""IDC API v1 over the full imported IDC catalogue, through HTTP on loopback, as ratios against
the same queries run in-process by raw DuckDB over the same data (an in-memory table).

    .venv/bin/python bench/bench_idc_api.py [--archive PATH] [--skip-idc-index]

Without --archive it imports the IDC catalogue into a temporary archive first.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

import duckdb
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from imaging_commons.api.idc.params import MANIFEST_SELECTORS, manifest_fields  # noqa: E402
from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.front_door import Commons  # noqa: E402
from serving import idc_archive, running_server  # noqa: E402

FILTER_SETS = [
    ({"collection_id": ["NLST"], "Modality": ["CT"]}, ["SeriesInstanceUID", "GCS_URL"]),
    ({"Modality": ["MR"]}, ["CRDC_Series_GUID"]),
    ({"collection_id": ["TCGA-LUAD", "TCGA-KIRC"]}, ["Patient_ID", "SeriesInstanceUID"]),
    ({"BodyPartExamined": ["CHEST", "LUNG"], "Modality": ["CT", "PT"]}, ["GCS_URL"]),
    ({"collection_id": ["%cptac%"]}, ["StudyInstanceUID", "Collection_ID"]),
]
BIG = ({"Modality": ["MR"]}, ["SeriesInstanceUID", "GCS_URL"])
UID_LIST = 1000  # a cohort given as a list of SeriesInstanceUIDs
PAGING_RUNS = 15
UNPAGED = 1 << 18


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def manifest(session, base, filters, fields, page_size):
    params = {f: True for f in fields} | {"page_size": page_size, "sql": True}
    r = session.post(f"{base}/v1/cohorts/preview/manifest", params=params,
                     json={"name": "bench", "filters": filters})
    r.raise_for_status()
    return r.json()


_RUN_NUMBERS = itertools.count()


def cold(filters: dict) -> dict:
    """The filters plus one value no series has, different at each call: the same rows and
    query shape, but a query the server has not run, so it cannot reuse a materialised result
    (the baseline runs that same shape)."""
    return {k: v + [f"no-such-value-{next(_RUN_NUMBERS)}"] for k, v in filters.items()}


def page_all(session, base, filters, fields, page_size) -> tuple[int, list[float]]:
    """Every row of a manifest through its first page and nextPage; (rows, nextPage latencies)."""
    body = manifest(session, base, filters, fields, page_size)
    got, latencies, token = len(body["manifest"]["json_manifest"]), [], body["next_page"]
    while token:
        t0 = time.perf_counter()
        r = session.get(f"{base}/v1/cohorts/manifest/nextPage",
                        params={"next_page": token, "page_size": page_size})
        r.raise_for_status()
        latencies.append(time.perf_counter() - t0)
        nxt = r.json()
        got += len(nxt["manifest"]["json_manifest"])
        token = nxt["next_page"]
    return got, latencies


def raw_query(commons: Commons, filters, fields):
    """The manifest's query as our core compiles it (SELECT DISTINCT the columns, in the order
    the server puts them, ... ORDER BY them), pointed at the baseline's in-memory table. The
    server itself sorts a result led by a unique key by that key's rank, which the baseline's
    table does not have: the baseline is the query as plain DuckDB answers it."""
    state = {"kind": "manifest", "version": 25, "filters": filters,
             "fields": manifest_fields([n for n in MANIFEST_SELECTORS if n in fields])}
    compiled = commons.compile_state(state, None)
    sql = compiled.sql().replace(commons.catalog.relation(25, "items"), "items")
    return sql, compiled.params


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--archive")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--skip-idc-index", action="store_true")
    args = ap.parse_args()
    with idc_archive(args.archive) as archive:
        # The SQL of each query, compiled by our core; the Commons that compiles it loads a
        # copy of the catalogue into this process, so it is let go before anything is timed (a
        # process holding gigabytes more makes every allocation slower, the baseline's
        # fetchall() and the client's json.loads alike).
        commons = Commons(Archive(archive))
        segments = [str(commons.catalog.segments_dir / name)
                    for name in commons.catalog.version(25).manifest["items"]]
        first_page_queries = [raw_query(commons, filters, fields)
                              for filters, fields in FILTER_SETS]
        big_sql, big_params = raw_query(commons, cold(BIG[0]), BIG[1])
        con_catalog = commons.catalog.connection()
        uids = [r[0] for r in con_catalog.execute(
            f"SELECT SeriesInstanceUID FROM {commons.catalog.relation(25, 'items')} "
            f"USING SAMPLE {UID_LIST} ROWS (reservoir, 7)").fetchall()]
        del con_catalog
        max_page_size = commons.archive.max_page_size
        del commons
        gc.collect()
        con = duckdb.connect()
        con.execute(f"CREATE TABLE items AS SELECT * FROM read_parquet({segments}) WHERE "
                    "version_min <= 25 AND (version_max IS NULL OR version_max >= 25)")
        # pages up to UNPAGED rows, so the whole manifest also fits one request (a baseline)
        with running_server(archive, args.port, "/v1/about",
                            {"IMAGING_COMMONS_MAX_PAGE_SIZE": str(UNPAGED)}) as base:
            session = requests.Session()
            manifest(session, base, {"Modality": ["XA"]}, ["GCS_URL"], 10)  # load segments once
            print("\nfirst manifest page (page_size 1000), cold, HTTP vs raw DuckDB page+count:")
            ratios = []
            for (filters, fields), (sql, params) in zip(FILTER_SETS, first_page_queries):
                raw_s, _ = timed(lambda: (
                    con.execute(sql + " LIMIT 1000", params).fetchall(),
                    con.execute(f"SELECT count(*) FROM ({sql})", params).fetchone()))
                ours_s, body = timed(lambda: manifest(session, base, filters, fields, 1000))
                ratios.append(ours_s / raw_s)
                print(f"  {json.dumps(filters):60s} total {body['manifest']['totalFound']:>7}  "
                      f"ours {ours_s * 1000:7.1f} ms  raw {raw_s * 1000:7.1f} ms  "
                      f"ratio {ours_s / raw_s:5.2f}")
            p50 = statistics.median(ratios)
            print(f"  p50 ratio {p50:.2f} (goal <= 3)")

            # DuckDB tests an IN list of parameters value by value, row by row; the server
            # passes a long list as one list parameter matched as a set
            in_list = (f"SELECT DISTINCT SeriesInstanceUID AS SeriesInstanceUID FROM items WHERE "
                       f"lower(SeriesInstanceUID) IN ({', '.join('?' * len(uids))}) ORDER BY 1")
            lowered = [u.lower() for u in uids]
            raw_s, raw_rows = timed(lambda: con.execute(in_list, lowered).fetchall())
            ours_s, body = timed(lambda: manifest(session, base, {"SeriesInstanceUID": uids},
                                                  ["SeriesInstanceUID"], UNPAGED))
            assert [r["SeriesInstanceUID"] for r in body["manifest"]["json_manifest"]] == [
                r[0] for r in raw_rows]
            print(f"\na cohort of {len(uids)} SeriesInstanceUIDs, all rows: ours "
                  f"{ours_s * 1000:.0f} ms, raw DuckDB with the UIDs as an IN list "
                  f"{raw_s * 1000:.0f} ms, ratio {ours_s / raw_s:.3f}")

            filters, fields = BIG

            # the baseline and each page size take turns, run after run, so that a change in
            # the machine's speed touches them all; a ratio compares figures of the same run
            page_sizes = (UNPAGED, 1000, max_page_size)
            raw_times, ours = [], {size: [] for size in page_sizes}
            for _ in range(PAGING_RUNS):
                # (only the count is kept: a client holding old results makes every later
                # collection of its garbage slower, the baseline's and ours alike)
                raw_s, row_count = timed(lambda: len(con.execute(big_sql, big_params).fetchall()))
                raw_times.append(raw_s)
                for size in page_sizes:
                    total_s, (got, latencies) = timed(
                        lambda: page_all(session, base, cold(filters), fields, size))
                    assert got == row_count, (got, row_count)
                    ours[size].append(total_s)
                    if size == 1000:
                        latencies_1000 = latencies
            print(f"\npaging a whole manifest of {row_count} rows ({json.dumps(filters)}), "
                  f"{PAGING_RUNS} cold runs, medians (ratios: median of the runs' ratios):")
            print(f"  raw DuckDB, one unpaged query: {statistics.median(raw_times):.2f} s")
            for size in page_sizes:
                to_raw = statistics.median(o / r for o, r in zip(ours[size], raw_times))
                to_one = statistics.median(o / u for o, u in zip(ours[size], ours[UNPAGED]))
                requests_made = -(-row_count // size)
                runs = " ".join(f"{o / r:.2f}" for o, r in zip(ours[size], raw_times))
                print(f"  ours, page_size {size:>6}: {statistics.median(ours[size]):.2f} s in "
                      f"{requests_made:>3} requests, ratio {to_raw:.2f} to raw DuckDB "
                      f"(goal <= 1.5), {to_one:.2f} to one unpaged request\n"
                      f"      each run's ratio to raw DuckDB: {runs}")
            latencies = latencies_1000
            first, last = statistics.median(latencies[:5]), statistics.median(latencies[-5:])
            print(f"\nlast page vs first page (page_size 1000, nextPage, median of 5): "
                  f"{last * 1000:.1f} ms vs {first * 1000:.1f} ms, "
                  f"ratio {last / first:.2f} (goal <= 2)")

            if not args.skip_idc_index:
                from idc_index import IDCClient

                client = IDCClient()
                q = ("SELECT DISTINCT SeriesInstanceUID, series_aws_url FROM index WHERE "
                     "collection_id = 'nlst' AND Modality = 'CT' ORDER BY 1, 2 LIMIT 1000")
                idc_s, _ = timed(lambda: client.sql_query(q))
                print(f"\nidc-index IDCClient().sql_query, first filter set: {idc_s * 1000:.0f} ms "
                      f"(ours over HTTP, same filter set: see the first line above)")
    print("\nreproduce: .venv/bin/python bench/bench_idc_api.py")
    return 0


if __name__ == "__main__":
    sys.exit(main())
