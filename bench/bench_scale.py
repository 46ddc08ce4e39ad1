"""The archive at IDC's instance scale (issue #16, item 5): a SYNTHETIC archive of N instance
rows (default 58.8M, IDC v25's instance count), then, through HTTP on loopback: start-up and
warm-up times, the server's memory, dicomMetadata and instance-level manifest pages (first and
deep), NBIA whole-collection and whole-series lists, and an ingest + publish of 1,000 real
DICOM files onto it as a ratio to the same into an empty archive (both measured in this run).

    .venv/bin/python bench/bench_scale.py [--instances 58800000] [--batch 10000000]
        [--archive PATH] [--deep-budget 300]

The archive: the real IDC catalogue imported (`import_idc`), then each real v25 series, in
idc_index.parquet's order until N instances are reached (the last one cut short), fanned out
into its `instanceCount` instance rows, in DuckDB SQL, written as the stage's items Parquet
file, recorded with `catalog.write_stage` and published with `publish`: one segment per
`--batch` instances, as a growing archive would get them. The rows are SYNTHETIC and marked
so: collection `synthetic_<idc collection>` (named "SYNTHETIC ..."), SeriesDescription starting
"SYNTHETIC:", SOPInstanceUID `2.25.<the md5 of "synthetic/<SeriesInstanceUID>/<index>" shifted
right by a bit, in decimal>` (the UUID-derived root, with a number that is no random UUID),
crdc_instance_uuid the md5 of that UID written as a UUID, gcs_url
`s3://synthetic/<series uuid>/<instance uuid>.dcm`, no blob (blob_key NULL). The series'
other columns (PatientID, StudyInstanceUID, SeriesInstanceUID, Modality, BodyPartExamined, ...)
are the real series': so a synthetic series shares its SeriesInstanceUID with the real
series-level row it was made from (in another collection).

With --archive PATH the archive is built there, or reused when it is there already (a marker,
bench_scale.json, says what was built; an interrupted build resumes at its next batch), so a
58.8M build is done once. Without it, a temporary archive is built and removed. The ingest
measurement adds three versions (collection `bench`, 1,000 instances each) to the archive each
run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

from imaging_commons.config import Archive  # noqa: E402
from imaging_commons.core.catalog import Catalog, copy_to_parquet, items_select  # noqa: E402
from imaging_commons.core.idc_import import import_idc, index_dir  # noqa: E402
from imaging_commons.core.ingest import publish, writing  # noqa: E402
from serving import WARMED_PATH  # noqa: E402

IDC_INSTANCES = 58_800_000
SYNTHETIC = "synthetic_"  # collection_id prefix of the synthetic collections
SYNTHETIC_URL = "s3://synthetic"
MARKER = "bench_scale.json"
MAX_PAGE = 262_144  # the server's IMAGING_COMMONS_MAX_PAGE_SIZE here
PAGE = 1000
INGEST_FILES = 1000
INGEST_ROUNDS = 3
FILES_PER_SERIES = 10
SERIES_PER_STUDY = 10
USER = "bench-scale"
# the tail of every page body: {"code", ..., {rows, "rowsReturned", "totalFound"}, "next_page"}
TAIL = re.compile(rb'"rowsReturned":(\d+),"totalFound":(\d+)\},"next_page":(null|"[^"]*")\}\s*$')

FIGURES: list[tuple[str, str]] = []  # (what, figure): the table printed at the end


def figure(what: str, value: str) -> None:
    FIGURES.append((what, value))
    print(f"  {what}: {value}")


def ms(seconds: float) -> str:
    return f"{seconds * 1000:,.1f} ms"


def mb(kb: int) -> str:
    return f"{kb / 1024:,.0f} MB"


# ----- the synthetic archive ------------------------------------------------------------------
def _uuid_sql(hex_sql: str) -> str:
    """A 32-digit hex string as a UUID (8-4-4-4-12)."""
    return " || '-' || ".join(f"substr({hex_sql}, {start}, {length})" for start, length in
                              ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12)))


def make_plan(con, wanted: int) -> int:
    """TEMP TABLE bench_plan: the v25 series fanned out, in idc_index.parquet's order, each with
    the number of its first instance (`first_i`) and the instances it gets (`take`: all of them,
    but for the last series, cut at `wanted`). Returns the instances planned."""
    index = index_dir() / "idc_index.parquet"
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE bench_plan AS
        WITH s AS (
            SELECT file_row_number AS rn, collection_id, SeriesInstanceUID, Modality,
                   BodyPartExamined, instanceCount,
                   CAST(sum(instanceCount) OVER (ORDER BY file_row_number
                                                 ROWS UNBOUNDED PRECEDING) AS BIGINT)
                       - instanceCount AS first_i
            FROM read_parquet('{index}', file_row_number = true) WHERE instanceCount > 0)
        SELECT *, least(instanceCount, {int(wanted)} - first_i)::BIGINT AS take
        FROM s WHERE first_i < {int(wanted)}""")
    return con.execute("SELECT coalesce(sum(take), 0) FROM bench_plan").fetchone()[0]


def batch_sql(lo: int, hi: int) -> str:
    """The SYNTHETIC instance rows lo..hi-1 of the plan (not yet in the item schema)."""
    d = index_dir()
    picked = f"""
        SELECT p.first_i, p.take, i.*, c.program_id, c.species, c.tumor_locations
        FROM bench_plan p
        JOIN read_parquet('{d / "idc_index.parquet"}', file_row_number = true) i
          ON i.file_row_number = p.rn
        LEFT JOIN read_parquet('{d / "collections_index.parquet"}') c
          ON c.collection_id = i.collection_id
        WHERE p.first_i < {hi} AND p.first_i + p.take > {lo}"""
    # (127 of the md5's bits: DuckDB 1.5 writes a UHUGEINT out as text ~100x slower than a
    # HUGEINT, 13 s per 100,000 rows)
    instances = f"""
        SELECT x.*, t.k,
               '2.25.' || (md5_number('synthetic/' || x.SeriesInstanceUID || '/' || t.k) >> 1)
                              ::HUGEINT::VARCHAR AS sop
        FROM ({picked}) x,
             range(greatest(0, {lo} - x.first_i), least(x.take, {hi} - x.first_i)) t(k)"""
    hashed = (f"SELECT *, md5(sop) AS h_i, md5('study:' || StudyInstanceUID) AS h_s "
              f"FROM ({instances})")
    return f"""
        SELECT '{SYNTHETIC}' || collection_id AS collection_id, analysis_result_id, PatientID,
               StudyInstanceUID, SeriesInstanceUID, sop AS SOPInstanceUID, source_DOI,
               PatientAge, PatientSex, StudyDate, StudyDescription, BodyPartExamined, Modality,
               SOPClassUID, TransferSyntaxUID, Manufacturer, ManufacturerModelName, SeriesDate,
               'SYNTHETIC: ' || coalesce(SeriesDescription, '') AS SeriesDescription,
               SeriesNumber, k + 1 AS InstanceNumber, license_short_name,
               program_id AS program, species AS tcia_species,
               tumor_locations AS tcia_tumorLocation,
               crdc_series_uuid, {_uuid_sql('h_s')} AS crdc_study_uuid,
               {_uuid_sql('h_i')} AS crdc_instance_uuid,
               '{SYNTHETIC_URL}/' || crdc_series_uuid || '/' || {_uuid_sql('h_i')} || '.dcm'
                   AS gcs_url,
               CAST(round(series_size_MB * 1000000 / instanceCount) AS BIGINT) AS instance_size,
               CAST(round(series_size_MB * 1000000 / instanceCount) AS BIGINT)
                   AS series_size_bytes,
               1 AS instance_count, NULL AS blob_key, 'instance' AS level
        FROM ({hashed})"""


def batch_collections(con, lo: int, hi: int) -> dict[str, dict]:
    """The stage's collection entries of a batch's synthetic collections."""
    rows = con.execute(f"""
        SELECT DISTINCT '{SYNTHETIC}' || i.collection_id, c.collection_name, c.cancer_types,
               c.tumor_locations, c.species, c.subjects, c.program_id,
               c.sources[1].license.license_short_name
        FROM bench_plan p
        JOIN read_parquet('{index_dir() / "idc_index.parquet"}', file_row_number = true) i
          ON i.file_row_number = p.rn
        LEFT JOIN read_parquet('{index_dir() / "collections_index.parquet"}') c
          ON c.collection_id = i.collection_id
        WHERE p.first_i < {hi} AND p.first_i + p.take > {lo}""").fetchall()
    return {cid: {"collection_name": f"SYNTHETIC {name or cid}",
                  "description": f"SYNTHETIC instance rows made by bench/bench_scale.py from the "
                                 f"IDC v25 series of {name or cid}; no files.",
                  "cancer_type": cancer, "tumor_location": tumor, "species": species,
                  "subject_count": subjects, "program": program, "license_short_name": lic,
                  "location": "US", "restricted": False}
            for cid, name, cancer, tumor, species, subjects, program, lic in rows}


def build(archive: Path, wanted: int, batch: int) -> dict:
    """Make (or finish, or reuse) the synthetic archive; returns its marker."""
    marker_path = archive / MARKER
    catalog = Catalog(Archive.from_env(archive))
    marker = json.loads(marker_path.read_text()) if marker_path.exists() else None
    if marker is None and catalog.versions():
        raise SystemExit(f"{archive} holds published versions but no {MARKER}: not an archive "
                         f"this benchmark built; give a new or empty --archive")
    con = catalog.connection()
    planned = make_plan(con, wanted)
    if marker is not None:
        if marker["instances"] != planned:
            raise SystemExit(f"{archive} was built with {marker['instances']:,} SYNTHETIC "
                             f"instances, not {planned:,}: give another --archive")
        if marker["complete"]:
            print(f"reusing {archive}: {planned:,} SYNTHETIC instances in "
                  f"{len(marker['batches'])} segment(s)")
            con.execute("DROP TABLE bench_plan")
            return {**marker, "reused": True}
        batch = marker["batch"]
        print(f"resuming the build of {archive} at SYNTHETIC instance {marker['done']:,}")
    else:
        start = time.perf_counter()
        with writing(catalog):
            summary = import_idc(catalog)
        marker = {"instances": planned, "batch": batch, "done": 0, "complete": False,
                  "import_s": time.perf_counter() - start, "batches": []}
        marker_path.write_text(json.dumps(marker, indent=1))
        print(f"import-idc: {summary.series:,} series, {marker['import_s']:.1f} s")
    if planned < wanted:
        print(f"  (IDC v25 holds {planned:,} instances in all: that many SYNTHETIC ones)")
    total_batches = -(-planned // batch)
    while marker["done"] < planned:
        lo, hi = marker["done"], min(marker["done"] + batch, planned)
        t0 = time.perf_counter()
        with writing(catalog):
            name = f"items-bench-scale-{lo}.parquet"
            copy_to_parquet(con, items_select(con, batch_sql(lo, hi)), catalog.staging_dir / name)
            catalog.write_stage({"items": name, "collections": batch_collections(con, lo, hi)})
            t1 = time.perf_counter()
            version = publish(catalog)
        t2 = time.perf_counter()
        marker["batches"].append({"version": version, "instances": hi - lo,
                                  "stage_s": t1 - t0, "publish_s": t2 - t1})
        marker["done"] = hi
        marker["complete"] = hi >= planned
        marker_path.write_text(json.dumps(marker, indent=1))
        print(f"  batch {len(marker['batches'])}/{total_batches}: {hi - lo:,} SYNTHETIC instances "
              f"staged in {t1 - t0:.1f} s, published as version {version} in {t2 - t1:.1f} s")
    con.execute("DROP TABLE bench_plan")
    return marker


def facts(wanted: int) -> dict:
    """What the measurements ask for, from the plan (no scan of the archive): the largest
    synthetic collection, its commonest modality, the commonest modality of all synthetic
    instances, the largest synthetic series."""
    import duckdb

    con = duckdb.connect(config={"threads": 2, "memory_limit": "1GB"})
    make_plan(con, wanted)
    one = lambda sql: con.execute(sql).fetchone()  # noqa: E731
    collection, in_collection = one(
        "SELECT collection_id, sum(take) FROM bench_plan GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")
    collection_modality, in_pair = one(
        f"SELECT Modality, sum(take) FROM bench_plan WHERE collection_id = '{collection}' "
        "GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")
    modality, in_modality = one(
        "SELECT Modality, sum(take) FROM bench_plan GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")
    series, series_collection, in_series = one(
        "SELECT SeriesInstanceUID, collection_id, take FROM bench_plan "
        "ORDER BY take DESC, rn LIMIT 1")
    collections = one("SELECT count(DISTINCT collection_id) FROM bench_plan")[0]
    con.close()
    return {"instances": wanted, "collection": SYNTHETIC + collection,
            "in_collection": int(in_collection), "collection_modality": collection_modality,
            "in_pair": int(in_pair),
            "modality": modality, "in_modality": int(in_modality),
            "series": series, "series_collection": SYNTHETIC + series_collection,
            "in_series": int(in_series), "collections": collections}


# ----- the server -------------------------------------------------------------------------------
def status_kb(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in kB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


@contextmanager
def server(archive: Path, port: int, env: dict, log: Path) -> Iterator[tuple[str, int, dict]]:
    """`imaging-commons serve` over `archive`, as bench/serving.py runs it, but with its pid and
    its start-up times: (base URL, pid, {"answers_s", "warmed_s"}) once warmed up."""
    start = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive), "serve",
             "--port", str(port)], cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "src"), **env},
            stdout=subprocess.DEVNULL, stderr=err)
    base = f"http://127.0.0.1:{port}"
    try:
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}):\n"
                                 + log.read_text(errors="replace")[-3000:])
            try:
                if requests.get(base + "/v1/versions", timeout=60).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.perf_counter() - start > 3600:
                raise SystemExit("the server did not answer within an hour")
            time.sleep(0.05)
        answers = time.perf_counter() - start
        requests.get(base + WARMED_PATH, timeout=7200).raise_for_status()
        warmed = time.perf_counter() - start
        yield base, proc.pid, {"answers_s": answers, "warmed_s": warmed}
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End a server: asked to, then killed after a minute."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def get_page(session: requests.Session, method: str, url: str, **kw) -> dict:
    """One paged answer read to its end without parsing its rows (a page can be hundreds of
    megabytes): {"status", "rows", "total", "next_page", "bytes"}; a 202 gives its token."""
    with session.request(method, url, stream=True, timeout=(30, 7200), **kw) as r:
        if r.status_code == 202:
            return {"status": 202, "next_page": r.json()["next_page"]}
        if r.status_code != 200:
            raise SystemExit(f"{method} {url}: {r.status_code} {r.text[:500]}")
        tail, size = b"", 0
        for chunk in r.iter_content(1 << 20):
            size += len(chunk)
            tail = (tail + chunk)[-65536:]
    m = TAIL.search(tail)
    if m is None:
        raise SystemExit(f"{method} {url}: the body does not end as a page does: {tail[-300:]!r}")
    token = json.loads(m[3])
    return {"status": 200, "rows": int(m[1]), "total": int(m[2]), "next_page": token,
            "bytes": size}


def middle_token(archive: Path, first_token: str, total: int,
                 caller: str | None) -> tuple[str, int]:
    """A token for the rows after about the middle one of a paged answer, made with the
    archive's own token key from the state of its first page's token: walking there by tokens
    would send tens of GB of JSON. The key there is the median of the granule keys (every
    GRANULE_ROWS-th row's) of the files the answer is read in the order of: for dicomMetadata,
    the segments (ITEM_ORDER; the rows before it are then known: half the granules); for a
    manifest led by an instance key, the segments' key orders by it (about half the rows, if
    the filter matches alike across the key's range). The token is `caller`'s, as the first
    page's was. Returns the token and the rows before."""
    import pyarrow.parquet as pq

    from imaging_commons.core.catalog import ITEM_ORDER
    from imaging_commons.core.front_door import Commons
    from imaging_commons.core.keyset import _KEY, GRANULE_ROWS, granules_file, key_order_file
    from imaging_commons.core.query import leading_column

    commons = Commons(Archive.from_env(archive))
    state = commons.tokens.open(first_token, caller)
    catalog = commons.catalog
    segments = catalog.ingested_segments_of(catalog.version(state["version"]).manifest)
    if state["kind"] == "dicomMetadata":
        files, columns, prefix = [catalog.segments_dir / s for s in segments], ITEM_ORDER, ""
    else:
        key, prefix = leading_column(commons.compile_state(state, None).tree)
        files = [key_order_file(catalog.segments_dir / s, key) for s in segments]
        columns = (key,)
    keys = []
    for path in files:
        table = pq.read_table(granules_file(path), columns=list(columns))
        keys += zip(*(table[k].to_pylist() for k in columns))
    keys.sort(key=_KEY)
    half = len(keys) // 2
    if state["kind"] == "dicomMetadata":
        after, offset = list(keys[half]), half * GRANULE_ROWS
    else:
        after, offset = [prefix + keys[half][0]] + [None] * (len(state["fields"]) - 1), total // 2
    token = commons.tokens.mint({**state, "after": after, "offset": offset}, caller)
    commons.accounts.close()
    return token, offset


class Pager:
    """Pages of one kind of paged answer (manifest or dicomMetadata): a first page, and pages
    by token; a 202 (deadline passed) is resubmitted until the page comes, within the time."""

    def __init__(self, session: requests.Session, base: str, next_path: str):
        self.session, self.base, self.next_path = session, base, next_path

    def settle(self, page: dict, page_size: int) -> dict:
        while page["status"] == 202:
            page = self.by_token(page["next_page"], page_size)
        return page

    def by_token(self, token: str, page_size: int) -> dict:
        return self.settle(get_page(self.session, "GET", self.base + self.next_path,
                                    params={"next_page": token, "page_size": page_size}),
                           page_size)

    def deep(self, first: dict, budget_s: float) -> tuple[dict, int, float, bool]:
        """From a first page, follow tokens with large pages until about half the rows, or
        until `budget_s` has passed; then one page of PAGE rows there. Returns (that page, the
        rows before it, the seconds the walk took, whether it got to half)."""
        half = first["total"] // 2
        step = max(PAGE, min(MAX_PAGE, half // 4))
        offset, token = first["rows"], first["next_page"]
        start = time.perf_counter()
        while token and offset < half - PAGE and time.perf_counter() - start < budget_s:
            page = self.by_token(token, min(step, half - offset))
            offset += page["rows"]
            token = page["next_page"]
        walked = time.perf_counter() - start
        if not token:  # all its rows on the first page: no deep page
            return {"rows": 0, "total": first["total"], "seconds": None}, offset, walked, True
        t0 = time.perf_counter()
        page = self.by_token(token, PAGE)
        page["seconds"] = time.perf_counter() - t0
        return page, offset, walked, offset >= half - PAGE


def manifest_first(pager: Pager, filters: dict, fields: list[str]) -> dict:
    params = {f: True for f in fields} | {"page_size": PAGE}
    t0 = time.perf_counter()
    page = pager.settle(get_page(pager.session, "POST",
                                 pager.base + "/v1/cohorts/preview/manifest", params=params,
                                 json={"name": "bench-scale", "filters": filters}), PAGE)
    page["seconds"] = time.perf_counter() - t0
    return page


def measure_server(archive: Path, port: int, known: dict, budget_s: float,
                   log: Path) -> None:
    """Every HTTP figure."""
    from bench_idc_api import FILTER_SETS
    from imaging_commons.core.front_door import Commons

    accounts = Commons(Archive.from_env(archive)).accounts
    user = accounts.get_user(USER) or accounts.add_user(USER, os.urandom(16).hex())
    token = accounts.issue_tokens(user).access_token
    accounts.close()
    del accounts
    gc.collect()
    env = {"IMAGING_COMMONS_COMPACT_EVERY": "0", "IMAGING_COMMONS_MAX_PAGE_SIZE": str(MAX_PAGE)}
    print("\nserver (IMAGING_COMMONS_COMPACT_EVERY=0, IMAGING_COMMONS_MAX_PAGE_SIZE="
          f"{MAX_PAGE}):")
    with server(archive, port, env, log) as (base, pid, started):
        figure("server start to first answer (GET /v1/versions)", f"{started['answers_s']:.1f} s")
        figure("server start to NBIA warm-up done", f"{started['warmed_s']:.1f} s")
        time.sleep(1)
        warm = status_kb(pid)
        figure("server RSS after warm-up", mb(warm["VmRSS"]))
        figure("server peak RSS over start and warm-up", mb(warm["VmHWM"]))
        session = requests.Session()

        print("\n/v1/dicomMetadata (SYNTHETIC instances):")
        dicom = Pager(session, base, "/v1/dicomMetadata/nextPage")
        session.headers["Authorization"] = f"Bearer {token}"
        t0 = time.perf_counter()
        first = dicom.settle(get_page(session, "GET", base + "/v1/dicomMetadata",
                                      params={"page_size": PAGE}), PAGE)
        first_s = time.perf_counter() - t0
        others = first["total"] - known["instances"]  # earlier runs' ingests
        figure("dicomMetadata first page, cold",
               f"{ms(first_s)} ({PAGE:,} rows of {first['total']:,} instance rows: "
               f"{known['instances']:,} SYNTHETIC"
               + (f", {others:,} ingested by earlier runs)" if others else ")"))
        t0 = time.perf_counter()
        dicom.settle(get_page(session, "GET", base + "/v1/dicomMetadata",
                              params={"page_size": PAGE}), PAGE)
        figure("dicomMetadata first page again", ms(time.perf_counter() - t0))
        page, offset, walked, reached = dicom.deep(first, budget_s)
        how = "" if reached else f", capped by --deep-budget {budget_s:.0f} s"
        figure("dicomMetadata walk by next_page to the middle",
               f"{walked:.1f} s to SYNTHETIC instance {offset:,}{how}")
        figure("dicomMetadata deep page",
               "none (one page holds them all)" if page["seconds"] is None else
               f"{ms(page['seconds'])} ({PAGE:,} rows after SYNTHETIC instance {offset:,})")
        if not reached:
            middle, offset = middle_token(archive, first["next_page"], first["total"], USER)
            t0 = time.perf_counter()
            dicom.by_token(middle, PAGE)
            figure("dicomMetadata page at the middle",
                   f"{ms(time.perf_counter() - t0)} ({PAGE:,} rows after about "
                   f"{offset:,} rows; its token made here, for the key there)")
        del session.headers["Authorization"]

        print("\ninstance-level manifest previews of SYNTHETIC instances (a filter that reaches "
              "real series counts their series-level rows too), first page "
              f"(page_size {PAGE}) and a deep page:")
        manifests = Pager(session, base, "/v1/cohorts/manifest/nextPage")
        coll = known["collection"]
        previews = [
            ({"collection_id": [coll]}, ["SOPInstanceUID"]),
            ({"collection_id": [coll], "Modality": [known["collection_modality"]]},
             ["CRDC_Instance_GUID", "GCS_URL"]),
            ({"Modality": [known["modality"]]}, ["SOPInstanceUID", "GCS_URL"]),
            ({"collection_id": [SYNTHETIC.rstrip("_") + "%"]},
             ["SOPInstanceUID", "CRDC_Instance_GUID"]),
            ({"collection_id": [known["series_collection"]],
              "SeriesInstanceUID": [known["series"]]},
             ["SOPInstanceUID", "CRDC_Instance_GUID", "GCS_URL"]),
        ]
        for number, (filters, fields) in enumerate(previews, 1):
            print(f"  M{number}: {json.dumps(filters)} {'+'.join(fields)}")
            first = manifest_first(manifests, filters, fields)
            page, offset, walked, reached = manifests.deep(first, budget_s)
            how = "" if reached else ", capped by --deep-budget"
            deep = ("no deep page (one page holds them all)" if page["seconds"] is None else
                    f"deep page (row {offset:,}) {ms(page['seconds'])}, walk there "
                    f"{walked:.1f} s{how}")
            figure(f"manifest M{number}, {first['total']:,} rows",
                   f"first page {ms(first['seconds'])}, {deep}")
            if not reached:
                middle, offset = middle_token(archive, first["next_page"], first["total"],
                                              None)
                t0 = time.perf_counter()
                manifests.by_token(middle, PAGE)
                figure(f"manifest M{number} page at the middle",
                       f"{ms(time.perf_counter() - t0)} (after about row {offset:,}; its token "
                       f"made here, for the median key of its key orders' granules)")

        print("\nNBIA lists:")
        for what, path, params in (
                (f"NBIA v1/getSeries?Collection={coll}", "/nbia-api/services/v1/getSeries",
                 {"Collection": coll}),
                ("NBIA v1/getSOPInstanceUIDs, largest series",
                 "/nbia-api/services/v1/getSOPInstanceUIDs",
                 {"SeriesInstanceUID": known["series"]})):
            t0 = time.perf_counter()
            with session.get(base + path, params=params, stream=True, timeout=7200) as r:
                r.raise_for_status()
                body = b"".join(r.iter_content(1 << 20))
            took = time.perf_counter() - t0
            rows = len(json.loads(body)) if body else 0
            figure(what, f"{ms(took)}, {rows:,} SYNTHETIC rows, {len(body) / 2**20:,.1f} MB")

        print("\nseries-level first pages of bench_idc_api.py's filter sets (ours, "
              "over this archive):")
        for i, (filters, fields) in enumerate(FILTER_SETS):
            print(f"  S{i + 1}: {json.dumps(filters)} {'+'.join(fields)}")
            first = manifest_first(manifests, filters, fields)
            figure(f"ours S{i + 1} first page", f"{ms(first['seconds'])}, "
                                               f"totalFound {first['total']:,}")

        after = status_kb(pid)
        print()
        figure("server RSS after the measurements", mb(after["VmRSS"]))
        figure("server peak RSS over the run", mb(after["VmHWM"]))


# ----- ingest onto the archive vs into an empty one ---------------------------------------------
def make_files(dest: Path, count: int) -> list[Path]:
    """`count` copies of pydicom's CT_small.dcm, FILES_PER_SERIES per new series and
    SERIES_PER_STUDY series per new study, each with its own SOPInstanceUID."""
    import pydicom
    import pydicom.data
    from pydicom.uid import generate_uid

    sample = pydicom.dcmread(pydicom.data.get_testdata_file("CT_small.dcm"))
    files = []
    for i in range(count):
        if i % (FILES_PER_SERIES * SERIES_PER_STUDY) == 0:
            study = generate_uid()
        if i % FILES_PER_SERIES == 0:
            series = generate_uid()
        sample.StudyInstanceUID, sample.SeriesInstanceUID = study, series
        sample.SOPInstanceUID = generate_uid()
        sample.file_meta.MediaStorageSOPInstanceUID = sample.SOPInstanceUID
        sample.InstanceNumber = i % FILES_PER_SERIES + 1
        files.append(dest / f"ct-{i:04d}.dcm")
        sample.save_as(files[-1])
    return files


def ingest_once(archive: Path, folder: Path, files: list[Path],
                rss_file: Path) -> tuple[float, int, str]:
    """`imaging-commons ingest FOLDER --collection bench --publish --no-progress` as a
    subprocess: (seconds, peak RSS in kB of its largest process, its last output line). The
    peak is /usr/bin/time's: a child forked by this process and exec'ed starts its maximum RSS
    from this process's own (Linux keeps the pre-exec high-water mark in ru_maxrss), which is
    gigabytes after the build; /usr/bin/time is a small parent."""
    os.sync()  # (the last run's blobs written out, the files in the page cache: see bench_ingest)
    for f in files:
        f.read_bytes()
    start = time.perf_counter()
    proc = subprocess.run(
        ["/usr/bin/time", "-f", "%M", "-o", str(rss_file), sys.executable, "-m",
         "imaging_commons.cli", "--archive", str(archive), "ingest", str(folder),
         "--collection", "bench", "--publish", "--no-progress"], cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "IMAGING_COMMONS_COMPACT_EVERY": "0"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    took = time.perf_counter() - start
    out = proc.stdout.decode(errors="replace")
    if proc.returncode != 0 or "published version" not in out:
        raise SystemExit(f"ingest into {archive} failed ({proc.returncode}):\n{out[-3000:]}")
    return took, int(rss_file.read_text().split()[-1]), out.strip().splitlines()[-1]


def measure_ingest(archive: Path, scratch: Path, count: int) -> None:
    """INGEST_ROUNDS rounds, each with its own new files: into an empty archive, then onto the
    big one; a round's ratio is the one over the other, and the median of the rounds' ratios is
    the figure (single runs spread by ±0.1 on a 2-core machine)."""
    print(f"\ningest + publish of {count:,} real DICOM files (copies of CT_small.dcm, new UIDs "
          "each round), `imaging-commons ingest DIR --collection bench --publish "
          "--no-progress`, into an empty archive and then onto the SYNTHETIC one, "
          f"{INGEST_ROUNDS} rounds:")
    rounds = []
    for r in range(INGEST_ROUNDS):
        folder = scratch / f"files-{r}"
        folder.mkdir()
        files = make_files(folder, count)
        empty = scratch / f"empty-{r}"
        small = ingest_once(empty, folder, files, scratch / "rss")
        shutil.rmtree(empty, ignore_errors=True)
        big = ingest_once(archive, folder, files, scratch / "rss")
        shutil.rmtree(folder)
        rounds.append((small, big))
        print(f"  round {r + 1}: empty {small[0]:.2f} s, SYNTHETIC {big[0]:.2f} s "
              f"({big[2]}), ratio {big[0] / small[0]:.2f}")
    figure("ingest+publish, empty archive",
           ", ".join(f"{s[0]:.2f}" for s, _ in rounds) + f" s, peak RSS "
           f"{mb(max(s[1] for s, _ in rounds))}")
    figure("ingest+publish, SYNTHETIC archive",
           ", ".join(f"{b[0]:.2f}" for _, b in rounds) + f" s, peak RSS "
           f"{mb(max(b[1] for _, b in rounds))} (the archive keeps each)")
    figure("ingest+publish ratio, SYNTHETIC / empty (median of rounds)",
           f"{statistics.median(b[0] / s[0] for s, b in rounds):.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=IDC_INSTANCES,
                    help="SYNTHETIC instance rows to make (default: IDC v25's 58.8M)")
    ap.add_argument("--batch", type=int, default=10_000_000,
                    help="instances per publish (one segment each)")
    ap.add_argument("--archive", help="build the archive here, or reuse the one built here")
    ap.add_argument("--port", type=int, default=8766)
    ap.add_argument("--deep-budget", type=float, default=300.0,
                    help="seconds a walk by tokens to a deep page may take")
    ap.add_argument("--ingest-files", type=int, default=INGEST_FILES)
    args = ap.parse_args()
    if args.instances < 1 or args.batch < 1:
        raise SystemExit("--instances and --batch must be positive")
    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "bench/bench_scale.py",
                                                *sys.argv[1:]])
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        scratch = Path(tmp)
        archive = Path(args.archive).resolve() if args.archive else scratch / "archive"
        archive.mkdir(parents=True, exist_ok=True)
        print(f"SYNTHETIC archive of {args.instances:,} instances at {archive}, "
              f"{args.batch:,} per publish:")
        marker = build(archive, args.instances, args.batch)
        gc.collect()
        n = marker["instances"]
        figure("SYNTHETIC instances", f"{n:,} in {len(marker['batches'])} segment(s)")
        figure("build" + (" (when it was made)" if marker.get("reused") else ""),
               f"import-idc {marker['import_s']:.1f} s, then per batch stage+publish: "
                        + ", ".join(f"{b['stage_s']:.1f}+{b['publish_s']:.1f} s"
                                    for b in marker["batches"]))
        size = sum(f.stat().st_size for f in (archive / "catalog").rglob("*") if f.is_file())
        figure("catalogue on disk", f"{size / 2**30:,.2f} GiB")
        try:
            from imaging_commons.core.keyset import KEYSET_FROM_ROWS
            mode = ("paged by key" if n > KEYSET_FROM_ROWS else "materialised, paged by offset")
            figure("instance-level manifests", f"{mode} (KEYSET_FROM_ROWS "
                                               f"{KEYSET_FROM_ROWS:,})")
        except ImportError:
            pass
        known = facts(n)
        print(f"  largest SYNTHETIC collection {known['collection']} "
              f"({known['in_collection']:,} instances), commonest modality "
              f"{known['modality']} ({known['in_modality']:,}), largest series "
              f"{known['in_series']:,} instances, {known['collections']} collection(s)")
        measure_server(archive, args.port, known, args.deep_budget, scratch / "server.log")
        measure_ingest(archive, scratch, args.ingest_files)
    width = max(len(w) for w, _ in FIGURES)
    print(f"\nfigures ({n:,} SYNTHETIC instances):")
    for what, value in FIGURES:
        print(f"  {what:<{width}}  {value}")
    print(f"\nreproduce: {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
