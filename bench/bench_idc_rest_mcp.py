"""Our series-level first pages against IDC's own current server, IDC-REST-MCP (issue #16).

The first page (page_size 1000) of bench_idc_api.py's five filter sets, cold, asked of one of
our servers over the imported IDC catalogue and of IDC-REST-MCP over the same idc-index-data
Parquet, both running at once on loopback, taking turns round by round (who goes first
alternates). Goal: ours <= 0.7 x theirs on each filter set.

    .venv/bin/python bench/bench_idc_rest_mcp.py --idc-rest-mcp PATH [--archive PATH] [--runs 15]

PATH is a checkout of ImagingDataCommons/IDC-REST-MCP, kept outside this repository, prepared
with `python3.11 -m venv .venv && .venv/bin/pip install -e .` in it (its idc-index-data should
be the release ours has). It is run from PATH/.venv with IDC_API_INCLUDE_INDICES=none (only the
bundled index tables, so it needs no network); its first start builds its DuckDB file in the
temporary directory. It is asked POST /v3/cohort/manifest (page 0); its filters match values
exactly, so collection ids are given normalised and a `%` pattern as the collections it
matches. Each round adds to both sides' filters a value no series has, a new one each time, so
neither server answers from a result it has kept (IDC-REST-MCP keeps none; ours materialises
results); a lone `%` pattern of ours (matched by LIKE; a list is matched by IN) is made new by
trailing `%`s instead. Without --archive the IDC catalogue is imported into a temporary archive
first.
With no arguments at all (as `make bench` runs it) it prints "skipped: ..." and exits 0.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_idc_api import FILTER_SETS, cold, manifest  # noqa: E402
from bench_scale import stop  # noqa: E402
from imaging_commons.core.catalog import normalise_collection_id  # noqa: E402
from imaging_commons.core.idc_import import index_dir  # noqa: E402
from serving import idc_archive, running_server  # noqa: E402

PAGE = 1000
GOAL = 0.7
_PATTERN_RUNS = itertools.count(1)


def cold_ours(filters: dict) -> dict:
    """bench_idc_api.cold(filters), but for a filter of one LIKE pattern: our server matches a
    lone value holding '%' by LIKE and a list by IN, so cold() would make it an IN list that
    matches nothing; the pattern is made new at each call by trailing '%'s instead (matching
    the same rows)."""
    lone = {k: v for k, v in filters.items() if len(v) == 1 and "%" in v[0]}
    colder = cold({k: v for k, v in filters.items() if k not in lone})
    more = "%" * next(_PATTERN_RUNS)
    return {k: [lone[k][0] + more] if k in lone else colder[k] for k in filters}


def terms(filters: dict, collection_ids: list[str]) -> dict:
    """Our filters as IDC-REST-MCP's `terms`, whose values match exactly (IN): collection ids
    normalised, a LIKE pattern spelled out as the collections (of `collection_ids`) it matches."""
    out = {}
    for key, values in filters.items():
        if key == "collection_id":
            values = [c for v in values for c in (
                [i for i in collection_ids if re.fullmatch(
                    re.escape(v.lower()).replace("%", ".*"), i)] if "%" in v
                else [normalise_collection_id(v)])]
        out[key] = values
    return out


@contextmanager
def their_server(checkout: Path, port: int) -> Iterator[str]:
    """IDC-REST-MCP from `checkout` on loopback; yields its base URL once /v3/health answers
    200, and stops it on the way out."""
    env = {**os.environ, "PYTHONPATH": str(checkout / "src"), "IDC_API_INCLUDE_INDICES": "none"}
    proc = subprocess.Popen([str(checkout / ".venv" / "bin" / "python"), "-m", "uvicorn",
                             "idc_api.rest.app:app", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning"], cwd=checkout, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    try:
        while True:
            if proc.poll() is not None or time.perf_counter() - start > 600:
                raise SystemExit(f"IDC-REST-MCP ({checkout}) exited or did not answer "
                                 f"(exit status {proc.poll()})")
            try:
                if requests.get(base + "/v3/health", timeout=60).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.1)
        print(f"IDC-REST-MCP answered {time.perf_counter() - start:.1f} s after its start")
        yield base
    finally:
        stop(proc)


def theirs_page(session, base, their_terms: dict) -> tuple[int, int]:
    """Their first page (page 0, PAGE series); its (total_series, counts.studies)."""
    r = session.post(base + "/v3/cohort/manifest", timeout=600,
                     json={"filters": {"terms": their_terms}, "page": 0, "page_size": PAGE})
    r.raise_for_status()
    body = r.json()
    return body["total_series"], body["counts"]["studies"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idc-rest-mcp", type=Path,
                    help="a checkout of ImagingDataCommons/IDC-REST-MCP with PATH/.venv")
    ap.add_argument("--archive", help="an archive holding the imported IDC catalogue")
    ap.add_argument("--runs", type=int, default=15, help="rounds per filter set")
    ap.add_argument("--port", type=int, default=8767, help="ours; theirs on the next one")
    if len(sys.argv) == 1:
        print("bench_idc_rest_mcp: skipped: no --idc-rest-mcp PATH (a checkout of "
              "ImagingDataCommons/IDC-REST-MCP) was given")
        return 0
    args = ap.parse_args()
    if args.idc_rest_mcp is None:
        ap.error("--idc-rest-mcp PATH is required: a checkout of ImagingDataCommons/IDC-REST-MCP")
    checkout = args.idc_rest_mcp.resolve()
    if not (checkout / ".venv" / "bin" / "python").exists():
        ap.error(f"{checkout}/.venv/bin/python is missing: run `python3.11 -m venv .venv && "
                 f".venv/bin/pip install -e .` in {checkout}")
    if args.runs < 1:
        ap.error("--runs must be positive")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_idc_rest_mcp.py",
                                                *sys.argv[1:]])
    index = index_dir() / "idc_index.parquet"
    ids = [r[0] for r in duckdb.connect().execute(
        f"SELECT DISTINCT collection_id FROM read_parquet('{index}') ORDER BY 1").fetchall()]
    met = 0
    with idc_archive(args.archive) as archive, their_server(checkout, args.port + 1) as theirs, \
            running_server(archive, args.port, "/v1/about") as ours:
        session = requests.Session()
        # each side's data read once before anything is timed
        manifest(session, ours, {"Modality": ["XA"]}, ["GCS_URL"], 10)
        theirs_page(session, theirs, {"Modality": ["XA"]})
        print(f"\nfirst page (page_size {PAGE}), cold, {args.runs} rounds per filter set, "
              f"ours (POST /v1/cohorts/preview/manifest) vs IDC-REST-MCP "
              f"(POST /v3/cohort/manifest), who goes first alternating:")
        for number, (filters, fields) in enumerate(FILTER_SETS, 1):
            ours_s, theirs_s, totals = [], [], (set(), set(), set())

            def run_ours():
                t0 = time.perf_counter()
                body = manifest(session, ours, cold_ours(filters), fields, PAGE)
                ours_s.append(time.perf_counter() - t0)
                totals[0].add(body["manifest"]["totalFound"])

            def run_theirs():
                t0 = time.perf_counter()
                total, studies = theirs_page(session, theirs, terms(cold(filters), ids))
                theirs_s.append(time.perf_counter() - t0)
                totals[1].add(total)
                totals[2].add(studies)

            for turn in range(args.runs):
                for run in ((run_ours, run_theirs) if turn % 2 == 0 else (run_theirs, run_ours)):
                    run()
            ratios = [o / t for o, t in zip(ours_s, theirs_s)]
            ratio = statistics.median(ratios)
            met += ratio <= GOAL
            ours_total, their_total, their_studies = (", ".join(f"{t:,}" for t in sorted(s))
                                                      for s in totals)
            print(f"  S{number}: {json.dumps(filters)} {'+'.join(fields)}\n"
                  f"      as theirs: {json.dumps(terms(filters, ids))}\n"
                  f"      ours p50 {statistics.median(ours_s) * 1000:,.1f} ms, theirs p50 "
                  f"{statistics.median(theirs_s) * 1000:,.1f} ms, ratio ours/theirs p50 "
                  f"{ratio:.2f} (rounds {min(ratios):.2f}-{max(ratios):.2f}), goal <= {GOAL}: "
                  f"{'met' if ratio <= GOAL else 'NOT met'}\n"
                  f"      totals: our totalFound {ours_total} (distinct rows of the fields "
                  f"asked for), their total_series {their_total} (their studies "
                  f"{their_studies})" + ("" if totals[0] in totals[1:] else "  (DIFFER)"))
    print(f"\ngoal ours <= {GOAL} x theirs met on {met} of {len(FILTER_SETS)} filter sets")
    print(f"\nreproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
