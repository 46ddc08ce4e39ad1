"""IDC API v1 against a live server on 127.0.0.1 (contract: docs/specs/idc-api-v1.md)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import re
import sqlite3
import sys
import threading
import time

import anyio.to_thread
import duckdb
import idc_index_data
import pytest
import requests
from click.testing import CliRunner

from conftest import SAMPLES, LiveServer, postgres_schema_url
from imaging_commons.api.app import warm_up_and_settle
from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.api.idc.streaming import PageResponse
from imaging_commons.cli import main as cli
from imaging_commons.config import Archive
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish
from imaging_commons.core.results import BATCH_ROWS, Result

IDC_DIR = idc_index_data.IDC_INDEX_PARQUET_FILEPATH.parent
LUNG = {"collection_id": ["4D-Lung"], "Modality": ["CT"]}


def auth(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def page_through(url: str, first: dict, page_size: int, headers=None) -> list[dict]:
    """Follow next_page to the end through the nextPage endpoint, collecting manifest rows."""
    rows = list(first["manifest"]["json_manifest"])
    token = first["next_page"]
    while token:
        r = requests.get(url, params={"next_page": token, "page_size": page_size}, headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["cohort"] == {}
        rows += body["manifest"]["json_manifest"]
        token = body["next_page"]
    return rows


# ----- the notebook's flow ---------------------------------------------------------------
def test_about_and_swagger(server):
    body = requests.get(f"{server.url}/v1/about").json()
    assert body["code"] == 200 and "Version 1" in body["message"]
    assert f"{server.url}/v1/swagger/" in body["documentation"]
    page = requests.get(f"{server.url}/v1/swagger")
    assert page.status_code == 200 and "swagger-ui" in page.text
    spec = requests.get(f"{server.url}/v1/openapi.json").json()
    assert "/v1/cohorts/manifest/preview" in spec["paths"]


def test_about_documentation_is_the_seed_sentence(server):
    """The notebook prints this string: the URLs sit in angle brackets."""
    body = requests.get(f"{server.url}/v1/about").json()
    assert re.fullmatch(rf"SwaggerUI interface available at <{re.escape(server.url)}/v1/swagger/>\. "
                        r"Documentation is available at <https?://[^<> ]+>", body["documentation"])
    assert re.fullmatch(r"Welcome to the .+ API, Version 1", body["message"])


def test_versions_lists_idc_releases_and_the_local_one(server):
    body = requests.get(f"{server.url}/v1/versions").json()
    assert body["versions"] == body["idc_data_versions"]
    labels = [v["idc_data_version"] for v in body["versions"]]
    assert labels[:25] == [f"{n}.0" for n in range(1, 26)] and labels[-1] == "26.0"
    assert [v["active"] for v in body["versions"]].count(True) == 1 and body["versions"][-1]["active"]
    expected = duckdb.sql(f"SELECT idc_version, version_timestamp FROM "
                          f"'{IDC_DIR / 'version_metadata_index.parquet'}' WHERE idc_version = 20").fetchone()
    v20 = body["versions"][19]
    assert v20["date_active"] == str(expected[1])[:10]
    assert {"name": "dicom_pivot", "data_type": "Image Data"} in v20["data_sources"]
    assert {"short_name": "tcga", "name": "tcga", "description": None} in v20["programs"]


def test_collections_per_version(server):
    r = requests.get(f"{server.url}/v1/collections", params={"idc_data_version": "20.0"})
    assert r.status_code == 200
    ids = {c["collection_id"] for c in r.json()["collections"]}
    expected = {row[0] for row in duckdb.sql(f"""
        SELECT DISTINCT collection_id FROM '{IDC_DIR / 'idc_index.parquet'}'
        WHERE series_revised_idc_version <= 20
        UNION SELECT DISTINCT collection_id FROM '{IDC_DIR / 'prior_versions_index.parquet'}'
        WHERE min_idc_version <= 20 AND max_idc_version >= 20""").fetchall()}
    assert ids == expected
    current = {c["collection_id"] for c in
               requests.get(f"{server.url}/v1/collections").json()["collections"]}
    for c in r.json()["collections"]:  # active: still part of the active data version
        assert c["active"] is (c["collection_id"] in current)
    lung = next(c for c in r.json()["collections"] if c["collection_id"] == "4d_lung")
    assert lung["doi"].lower() == "10.7937/k9/tcia.2016.eln8ygle" and lung["subject_count"] == 20
    assert "20.0" in lung["idc_data_versions"] and "21.0" not in lung["idc_data_versions"]
    current = requests.get(f"{server.url}/v1/collections").json()["collections"]
    assert "pydicom_samples" in {c["collection_id"] for c in current}


def test_analysis_results_per_version(server):
    old = requests.get(f"{server.url}/v1/analysis_results", params={"idc_data_version": "5"})
    assert old.status_code == 200, old.text
    current = {r["analysis_result_id"] for r in
               requests.get(f"{server.url}/v1/analysis_results").json()["analysisResults"]}
    results = old.json()["analysisResults"]
    assert results and current
    for r in results:  # the documented keys; active: still part of the active data version
        assert {"active", "analysis_result_id", "analysisArtifacts", "cancer_type", "collections",
                "date_updated", "description", "doi", "location", "subject_count",
                "idc_data_versions"} <= set(r)
        assert r["active"] is (r["analysis_result_id"] in current)
        assert "5.0" in r["idc_data_versions"] and "6.0" not in r["idc_data_versions"]


def test_manifest_preview_pages_to_the_end(server):
    spec = {"name": "lung", "description": "4D lung CT", "filters": LUNG}
    params = {"SeriesInstanceUID": True, "GCS_URL": "True", "CRDC_Series_GUID": 1, "page_size": 40}
    r = requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params, json=spec)
    assert r.status_code == 200, r.text
    first = r.json()
    assert first["code"] == 200 and first["cohort"]["name"] == "lung"
    assert first["cohort"]["filterSet"]["filters"]["collection_id"] == ["4d_lung"]
    assert first["manifest"]["rowsReturned"] == 40 and first["next_page"].startswith("gAAAAA")
    rows = page_through(f"{server.url}/v1/cohorts/manifest/nextPage", first, 40)
    expected = duckdb.sql(f"""SELECT count(*) FROM '{IDC_DIR / 'idc_index.parquet'}'
        WHERE collection_id = '4d_lung' AND Modality = 'CT'""").fetchone()[0]
    assert len(rows) == first["manifest"]["totalFound"] == expected
    # distinct rows, ordered by the selected columns in the manifest's column order
    keys = [(r["CRDC_Series_GUID"], r["GCS_URL"], r["SeriesInstanceUID"]) for r in rows]
    assert len(set(keys)) == len(keys) and keys == sorted(keys)
    assert all(r["GCS_URL"] == f"s3://idc-open-data/{r['CRDC_Series_GUID'][8:]}/*" for r in rows)
    # the notebook also resubmits the preview itself with the token
    again = requests.post(f"{server.url}/v1/cohorts/manifest/preview",
                          params={"next_page": first["next_page"], "page_size": 40}, json=spec)
    assert again.json()["manifest"]["json_manifest"] == rows[40:80]


def test_a_page_larger_than_a_write_slice_arrives_whole_and_in_order(server):
    """Pages are written in 1 MB slices straight from the result's buffer: a page of several
    slices (and of several of the result's Arrow batches) must be the query's rows, in order.
    The first request writes them as they arrive (chunked, its length unknown); the same page
    of the complete result is the same bytes up to its token (tokens differ), with a length."""
    params = {"SeriesInstanceUID": True, "GCS_URL": True, "page_size": 40000}
    first, r = (requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params,
                              json={"name": "mr", "filters": {"Modality": ["MR"]}})
                for _ in range(2))
    assert first.status_code == r.status_code == 200, r.text
    assert first.headers["transfer-encoding"] == "chunked"
    before_token = r.content.rindex(b'"next_page":"')
    assert first.content[:before_token] == r.content[:before_token]
    assert int(r.headers["content-length"]) == len(r.content) > 3 * PageResponse.slice_bytes
    manifest = r.json()["manifest"]
    catalog = server.commons.catalog
    # (columns in the manifest's column order, GCS_URL before SeriesInstanceUID)
    expected = catalog.connection().execute(f"""SELECT DISTINCT gcs_url, SeriesInstanceUID
        FROM {catalog.relation(catalog.active_version(), 'items')} WHERE Modality = 'MR'
        ORDER BY 1, 2 LIMIT 40000""").fetchall()
    assert manifest["rowsReturned"] == len(manifest["json_manifest"]) == 40000 > BATCH_ROWS
    assert [tuple(row.items()) for row in manifest["json_manifest"]] == [
        (("GCS_URL", url), ("SeriesInstanceUID", uid)) for url, uid in expected]


def new_mr_page(test: str) -> tuple[dict, dict]:
    """A page of 40,000 MR rows from a query no other test ran (a value matching nothing
    makes it new): its result is made by this test's request."""
    return ({"SeriesInstanceUID": True, "GCS_URL": True, "page_size": 40000},
            {"name": "mr", "filters": {"Modality": ["MR", f"not-a-modality-{test}"]}})


def test_the_first_page_of_a_new_query_is_written_while_its_result_is_being_made(
        server, monkeypatch):
    """The client reads a new query's rows before the result is complete; the counts and the
    token after them wait for it, with a space sent now and then meanwhile (valid JSON), and the
    body is the page the complete result gives."""
    _, release = held(Result, "finish", monkeypatch)  # no result completes till released
    monkeypatch.setattr(PageResponse, "keepalive_s", 0.05)
    params, spec = new_mr_page("written-while-made")
    with requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params, json=spec,
                       stream=True, timeout=30) as r:
        assert r.status_code == 200 and r.headers["transfer-encoding"] == "chunked"
        pieces, received = r.iter_content(chunk_size=None), b""
        while len(received) < 3 * PageResponse.slice_bytes:
            received += next(pieces)
        assert b'"json_manifest":[{' in received
        assert b"totalFound" not in received  # it waits for the whole result
        time.sleep(0.5)
        release.set()
        raw = received + b"".join(pieces)
    assert re.search(rb'\}\] {3,},"rowsReturned":40000,', raw)
    body = json.loads(raw)
    again = requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params,
                          json=spec).json()
    assert body["manifest"] == again["manifest"]


def test_a_query_failing_after_its_first_rows_cuts_the_page_short_and_runs_again(
        server, monkeypatch):
    """A 200 already on its way cannot become an error: the body stops short of valid JSON
    (the client sees a broken response, never a wrong one), and the next request runs the query
    afresh."""
    store, rows_sent = server.commons.results, threading.Event()

    def disk_full(*args):  # once the client has rows of the page
        rows_sent.wait(20)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(store, "spill_bytes", 3 * PageResponse.slice_bytes)  # after a batch
    monkeypatch.setattr(store, "_spill", disk_full)
    params, spec = new_mr_page("failing")
    url = f"{server.url}/v1/cohorts/preview/manifest"
    with requests.post(url, params=params, json=spec, stream=True, timeout=30) as r:
        assert r.status_code == 200
        pieces = r.iter_content(chunk_size=None)
        assert next(pieces).startswith(b'{"code":200')
        rows_sent.set()
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            b"".join(pieces)
    monkeypatch.undo()
    r = requests.post(url, params=params, json=spec, timeout=30)
    assert r.status_code == 200 and r.json()["manifest"]["rowsReturned"] == 40000


def test_a_manifest_too_large_for_memory_pages_the_same_from_its_file(server, monkeypatch):
    """A result over the store's memory threshold is written to a file and memory-mapped; its
    pages, first to last, are the query's rows in order, as from memory."""
    monkeypatch.setattr(server.commons.results, "spill_bytes", 1)
    spec = {"name": "luad", "filters": {"collection_id": ["TCGA-LUAD"]}}
    params = {"SeriesInstanceUID": True, "GCS_URL": True, "page_size": 700}
    first = requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params, json=spec)
    assert first.status_code == 200, first.text
    spills = list((server.commons.archive.process_scratch_dir() / "results").glob("*.arrow"))
    assert spills, "the result was not written to a file"
    rows = page_through(f"{server.url}/v1/cohorts/manifest/nextPage", first.json(), 700)
    catalog = server.commons.catalog
    expected = catalog.connection().execute(f"""SELECT DISTINCT gcs_url, SeriesInstanceUID
        FROM {catalog.relation(catalog.active_version(), 'items')}
        WHERE collection_id = 'tcga_luad' ORDER BY 1, 2""").fetchall()
    assert len(expected) > 3 * 700 and first.json()["manifest"]["totalFound"] == len(expected)
    assert [(r["GCS_URL"], r["SeriesInstanceUID"]) for r in rows] == expected


def test_manifest_instances_of_ingested_files(server):
    spec = {"name": "samples", "filters": {"collection_id": ["pydicom_samples"], "Modality": ["MR"]}}
    params = {"CRDC_Instance_GUID": True, "GCS_URL": True, "SOPInstanceUID": True,
              "Source_DOI": True, "sql": True, "page_size": 1000}
    body = requests.post(f"{server.url}/v1/cohorts/preview/manifest", params=params,
                         json=spec).json()
    rows = body["manifest"]["json_manifest"]
    con = server.commons.catalog.connection()
    expected = con.execute(f"""SELECT count(*) FROM {server.commons.catalog.relation(26, 'items')}
        WHERE collection_id='pydicom_samples' AND Modality='MR'""").fetchone()[0]
    assert len(rows) == body["manifest"]["totalFound"] == expected > 0
    for row in rows:
        uuid = row["CRDC_Instance_GUID"].removeprefix("dg.4DFC/")
        assert row["GCS_URL"].endswith(f"/{uuid}.dcm")
    assert "SELECT DISTINCT" in body["cohort"]["sql"] and "'mr'" in body["cohort"]["sql"]
    assert "?" in body["cohort"]["sql"]  # values are parameters, never spliced into the SQL


def test_cohort_lifecycle(server):
    token = server.user_token("alice")
    h = auth(token)
    body = {"name": "mycohort", "description": "Example description",
            "filterSet": {"idc_data_version": "20.0", "filters": LUNG}}
    r = requests.post(f"{server.url}/v1/cohorts", json=body, headers=h)
    assert r.status_code == 200, r.text
    props = r.json()["cohort_properties"]
    assert props["filterSet"] == {"idc_data_version": "20.0", "filters": LUNG}
    assert r.json()["cohort_id"] == props["cohort_id"]
    cid = props["cohort_id"]
    listed = requests.get(f"{server.url}/v1/cohorts/", headers=h).json()["cohorts"]
    mine = next(c for c in listed if c["cohort_id"] == cid)
    assert mine["permission"] == "OWNER" and mine["owner"] == "alice"

    m = requests.get(f"{server.url}/v1/cohorts/{cid}/manifest",
                     params={"CRDC_Series_GUID": True, "page_size": 500}, headers=h).json()
    assert m["cohort"]["cohort_id"] == cid and m["manifest"]["rowsReturned"] == 500
    rows = page_through(f"{server.url}/v1/cohorts/manifest/nextPage", m, 500, headers=h)
    expected = duckdb.sql(f"""
        SELECT count(*) FROM (
          SELECT crdc_series_uuid FROM '{IDC_DIR / 'idc_index.parquet'}'
          WHERE collection_id='4d_lung' AND Modality='CT' AND series_revised_idc_version <= 20
          UNION ALL SELECT crdc_series_uuid FROM '{IDC_DIR / 'prior_versions_index.parquet'}'
          WHERE collection_id='4d_lung' AND Modality='CT'
            AND min_idc_version <= 20 AND max_idc_version >= 20)""").fetchone()[0]
    assert len(rows) == m["manifest"]["totalFound"] == expected

    q = requests.post(f"{server.url}/v1/cohorts/query/{cid}", headers=h,
                      json={"queryFields": {"fields": ["Modality", "BodyPartExamined"]}})
    assert q.status_code == 200, q.text
    assert q.json()["cohort_def"]["cohort_id"] == cid
    assert {r["Modality"] for r in q.json()["query_results"]["json"]} == {"CT"}
    q = requests.post(f"{server.url}/v1/cohorts/query/{cid}", headers=h,
                      json={"fields": ["Modality"], "filters": {"Modality": ["MR"]}})
    assert q.status_code == 400 and q.json()["message"] == "Invalid key filters"

    assert requests.delete(f"{server.url}/v1/cohorts/{cid}", headers=h).json()["cohorts"] == [
        {"cohort_id": cid, "result": "Cohort deleted"}]
    assert requests.get(f"{server.url}/v1/cohorts/{cid}/manifest", params={"GCS_URL": 1},
                        headers=h).status_code == 404


def test_delete_several_cohorts_reports_each(server):
    h = auth(server.user_token("dora"))
    other = auth(server.user_token("eve"))
    spec = {"name": "c", "filters": LUNG}
    mine = requests.post(f"{server.url}/v1/cohorts", json=spec, headers=h).json()["cohort_id"]
    theirs = requests.post(f"{server.url}/v1/cohorts", json=spec, headers=other).json()["cohort_id"]
    r = requests.delete(f"{server.url}/v1/cohorts", json={"cohorts": [mine, theirs, 99999999]},
                        headers=h)
    assert r.json()["cohorts"] == [
        {"cohort_id": mine, "result": "Cohort deleted"},
        {"cohort_id": theirs, "result": "Not the owner of this cohort"},
        {"cohort_id": 99999999, "result": "Cohort not found"}]


def test_delete_refuses_ids_that_are_not_integers(server):
    """1.5 or true is not a cohort id: int() would have made it one and deleted that cohort."""
    h = auth(server.user_token("fran"))
    cid = requests.post(f"{server.url}/v1/cohorts", json={"name": "keep", "filters": LUNG},
                        headers=h).json()["cohort_id"]
    for bad in (cid + 0.5, float(cid), True, f"{cid}.0", None):
        r = requests.delete(f"{server.url}/v1/cohorts", json={"cohorts": [bad]}, headers=h)
        assert r.status_code == 400 and r.json()["code"] == 400, (bad, r.text)
    listed = requests.get(f"{server.url}/v1/cohorts", headers=h).json()["cohorts"]
    assert [c["cohort_id"] for c in listed] == [cid]
    r = requests.delete(f"{server.url}/v1/cohorts", json={"cohorts": [str(cid)]}, headers=h)
    assert r.json()["cohorts"] == [{"cohort_id": cid, "result": "Cohort deleted"}]


def test_next_page_ignores_the_saved_cohort_path(server):
    """With a non-empty next_page every parameter but page_size is ignored (seed), the cohort id
    of the path included, as on the query endpoint."""
    h = auth(server.user_token("gil"))
    cid = requests.post(f"{server.url}/v1/cohorts", json={"name": "g", "filters": LUNG},
                        headers=h).json()["cohort_id"]
    first = requests.get(f"{server.url}/v1/cohorts/manifest/{cid}",
                         params={"GCS_URL": 1, "page_size": 3}, headers=h).json()
    token = first["next_page"]
    expected = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage",
                            params={"next_page": token, "page_size": 3}, headers=h).json()
    for path in (f"/v1/cohorts/manifest/{cid + 1000000}", f"/v1/cohorts/{cid + 1000000}/manifest"):
        r = requests.get(server.url + path, params={"next_page": token, "page_size": 3}, headers=h)
        assert r.status_code == 200, r.text
        assert r.json()["cohort"] == {} and r.json()["manifest"] == expected["manifest"]


def test_query_fields_name_each_attribute_once(server):
    """Field names match case-insensitively, so Modality and modality are one column."""
    r = requests.post(f"{server.url}/v1/cohorts/preview/query", json={
        "cohort_def": {"name": "q", "filters": {"collection_id": ["pydicom_samples"]}},
        "queryFields": {"fields": ["Modality", "modality", "MODALITY"]}})
    assert r.status_code == 200, r.text
    rows = r.json()["query_results"]["json"]
    assert rows and all(set(row) == {"Modality"} for row in rows)
    assert len(rows) == len({row["Modality"] for row in rows})


def test_numbers_past_64_bits_are_stored_and_echoed(server):
    """JSON has no integer limit; the echo of a stored cohort must never fail after the store."""
    h = auth(server.user_token("hal"))
    r = requests.post(f"{server.url}/v1/cohorts", headers=h, json={"name": "big", "filters": {
        "collection_id": ["pydicom_samples"], "SliceThickness_lt": [10 ** 30]}})
    assert r.status_code == 200, r.text
    assert [float(v) for v in r.json()["filterSet"]["filters"]["SliceThickness_lt"]] == [1e30]
    cohorts = requests.get(f"{server.url}/v1/cohorts", headers=h)
    assert cohorts.status_code == 200 and len(cohorts.json()["cohorts"]) == 1


def test_body_with_a_utf8_bom_is_read(server):
    """Flask (the real server) read JSON bodies that start with a byte order mark."""
    body = b"\xef\xbb\xbf" + json.dumps({"name": "bom", "filters": LUNG}).encode()
    r = requests.post(f"{server.url}/v1/cohorts/preview/manifest", params={"GCS_URL": 1},
                      data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200 and r.json()["cohort"]["name"] == "bom"


def test_query_preview_and_dicom_metadata_paging(server):
    body = {"cohort_def": {"name": "q", "description": "", "filters": {
                "collection_id": ["pydicom_samples"], "Modality": ["CT"]}},
            "queryFields": {"fields": ["SOPInstanceUID", "Modality", "SliceThickness"]}}
    r = requests.post(f"{server.url}/v1/cohorts/preview/query", params={"page_size": 5}, json=body)
    assert r.status_code == 200, r.text
    res = r.json()
    assert res["query_results"]["rowsReturned"] == 5
    assert all(isinstance(x["SliceThickness"], (str, type(None))) for x in res["query_results"]["json"])
    got = res["query_results"]["json"]
    token = res["next_page"]
    while token:
        nxt = requests.get(f"{server.url}/v1/cohorts/query/nextPage",
                           params={"next_page": token, "page_size": 5}).json()
        got += nxt["query_results"]["json"]
        token = nxt["next_page"]
    assert len(got) == res["query_results"]["totalFound"]
    sops = [g["SOPInstanceUID"] for g in got]
    assert sops == sorted(sops)

    h = auth(server.user_token("meta"))
    first = requests.get(f"{server.url}/v1/dicomMetadata", params={"page_size": 50}, headers=h)
    assert first.status_code == 200, first.text
    meta = first.json()
    row = meta["query_results"]["json"][0]
    for column in ("AdditionalPatientHistory", "Allergies", "ImageType", "crdc_instance_uuid",
                   "gcs_url", "tcia_species", "Volume", "SegmentNumber", "source_DOI"):
        assert column in row
    total = meta["query_results"]["totalFound"]
    con = server.commons.catalog.connection()
    assert total == con.execute(f"SELECT count(*) FROM {server.commons.catalog.relation(26, 'items')} "
                                "WHERE level = 'instance'").fetchone()[0]
    rows = meta["query_results"]["json"]
    token = meta["next_page"]
    while token:
        nxt = requests.get(f"{server.url}/v1/dicomMetadata/nextPage",
                           params={"next_page": token, "page_size": 50}, headers=h).json()
        assert nxt["cohort"] == {}
        rows += nxt["query_results"]["json"]
        token = nxt["next_page"]
    assert len(rows) == total
    # ordered by collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID
    # (nulls last)
    order = [tuple((r[k] is None, r[k] or "") for k in (
        "collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"))
        for r in rows]
    assert order == sorted(order)
    assert len(set(r["SOPInstanceUID"] for r in rows)) == total


def test_account_details(server):
    h = auth(server.user_token("acct", email="acct@example.org"))
    body = requests.get(f"{server.url}/v1/user/account_details", headers=h).json()
    assert body["account_details"]["username"] == "acct"
    assert body["account_details"]["email"] == "acct@example.org"
    assert body["user_details"] == body["account_details"]
    assert requests.get(f"{server.url}/v1/users/account_details").status_code == 401


def test_account_details_carry_every_seed_key(server):
    details = requests.get(f"{server.url}/v1/user/account_details",
                           headers=auth(server.user_token("acct_keys"))).json()["account_details"]
    assert {"date_joined", "email", "id", "last_login", "username", "extra_data", "first_name",
            "last_name"} <= details.keys()
    assert {"id", "email", "verified_email", "name", "given_name", "family_name", "picture",
            "locale", "hd"} <= details["extra_data"].keys()


def test_attributes_registry(server):
    body = requests.get(f"{server.url}/v1/attributes").json()
    attrs = {a["name"]: a for s in body["data_sources"] for a in s["attributes"]}
    assert attrs["Modality"]["data_type"] == "CATEGORICAL"
    assert attrs["SliceThickness"]["data_type"] == "CONTINUOUS_NUMERIC"
    assert "SliceThickness_ebtwe" in attrs and "SliceThickness_lt" in attrs
    v20 = requests.get(f"{server.url}/v1/attributes", params={"idc_data_version": "20"}).json()
    names20 = {a["name"] for s in v20["data_sources"] for a in s["attributes"]}
    assert "Modality" in names20 and "SliceThickness" not in names20  # IDC rows are series-level
    bad = requests.get(f"{server.url}/v1/attributes", params={"data_source": "nope"})
    assert bad.status_code == 400 and bad.json()["not_found"] == ["nope"]


# ----- the filter language ---------------------------------------------------------------
def _sample_thickness(server) -> dict[str, float | None]:
    con = server.commons.catalog.connection()
    rel = server.commons.catalog.relation(26, "items")
    return dict(con.execute(f"SELECT SOPInstanceUID, SliceThickness FROM {rel} "
                            "WHERE collection_id = 'pydicom_samples'").fetchall())


def _query_sops(server, filters: dict) -> set[str]:
    body = {"cohort_def": {"name": "f", "filters": {"collection_id": ["pydicom_samples"], **filters}},
            "queryFields": {"fields": ["SOPInstanceUID"]}}
    r = requests.post(f"{server.url}/v1/cohorts/preview/query", params={"page_size": 5000}, json=body)
    assert r.status_code == 200, r.text
    return {x["SOPInstanceUID"] for x in r.json()["query_results"]["json"]}


@pytest.mark.parametrize("key,values,check", [
    ("SliceThickness", [5], lambda x: x == 5),
    ("SliceThickness_eq", [5], lambda x: x == 5),
    ("SliceThickness_gt", [2], lambda x: x > 2),
    ("SliceThickness_gte", [5], lambda x: x >= 5),
    ("SliceThickness_lt", [5], lambda x: x < 5),
    ("SliceThickness_lte", [5], lambda x: x <= 5),
    ("SliceThickness_btw", [1, 5], lambda x: 1 < x < 5),
    ("SliceThickness_ebtw", [1, 5], lambda x: 1 <= x < 5),
    ("SliceThickness_btwe", [1, 5], lambda x: 1 < x <= 5),
    ("SliceThickness_ebtwe", [1, 5], lambda x: 1 <= x <= 5),
])
def test_numeric_suffixes(server, key, values, check):
    thickness = _sample_thickness(server)
    expected = {sop for sop, x in thickness.items() if x is not None and check(x)}
    assert expected, "the sample data must exercise this suffix"
    assert _query_sops(server, {key: values}) == expected


def test_suffix_case_does_not_matter(server):
    """Attribute names resolve case-insensitively; so do their range suffixes."""
    assert _query_sops(server, {"SliceThickness_GT": [2]}) == _query_sops(
        server, {"slicethickness_gt": [2]}) != set()


def test_suffixes_combine_with_and_and_none_matches_null(server):
    thickness = _sample_thickness(server)
    assert _query_sops(server, {"SliceThickness_gt": [1], "SliceThickness_lt": [5]}) == {
        s for s, x in thickness.items() if x is not None and 1 < x < 5}
    nulls = {s for s, x in thickness.items() if x is None}
    assert nulls and _query_sops(server, {"SliceThickness": ["None"]}) == nulls
    assert _query_sops(server, {"SliceThickness": ["None", 5]}) == nulls | {
        s for s, x in thickness.items() if x == 5}


def test_strings_case_insensitive_like_and_collection_normalisation(server):
    con = server.commons.catalog.connection()
    rel = server.commons.catalog.relation(26, "items")
    mr = {r[0] for r in con.execute(f"SELECT SOPInstanceUID FROM {rel} WHERE "
                                    "collection_id='pydicom_samples' AND Modality='MR'").fetchall()}
    assert _query_sops(server, {"Modality": ["mr"]}) == mr
    assert _query_sops(server, {"collection_id": ["PYDICOM-SAMPLES"], "Modality": ["Mr"]}) == mr
    like = {r[0] for r in con.execute(f"SELECT SOPInstanceUID FROM {rel} WHERE "
                                      "collection_id='pydicom_samples' AND "
                                      "lower(SeriesDescription) LIKE '%axial%'").fetchall()}
    assert _query_sops(server, {"SeriesDescription": ["%AXIAL%"]}) == like


def test_long_value_lists_match_as_sets(server):
    """A cohort by UID list is common (thousands of UIDs): many values go to DuckDB as one
    list parameter matched as a set, with the same matching rules as a short list."""
    con = server.commons.catalog.connection()
    rel = server.commons.catalog.relation(26, "items")
    rows = con.execute(f"SELECT SOPInstanceUID, SliceThickness FROM {rel} "
                       "WHERE collection_id='pydicom_samples'").fetchall()
    sops = sorted(sop for sop, _ in rows)[:5]
    decoys = [f"1.2.3.{i}" for i in range(3000)]
    assert _query_sops(server, {"SOPInstanceUID": decoys + sops}) == set(sops)
    mr = _query_sops(server, {"Modality": ["mr"]})
    assert mr and _query_sops(server, {"Modality": ["Mr"] + decoys}) == mr
    thickness = {x for _, x in rows if x is not None}
    numbers = [float(x) + 1000 for x in range(20)] + [min(thickness)]
    assert _query_sops(server, {"SliceThickness": numbers}) == {
        sop for sop, x in rows if x == min(thickness)}
    compiled = server.commons.compile_state(
        {"kind": "manifest", "version": 26, "fields": manifest_fields(["GCS_URL"]),
         "filters": {"SeriesInstanceUID": decoys}}, None)
    assert compiled.sql().count("?") == 1 and compiled.params == [decoys]


# ----- errors ------------------------------------------------------------------------------
def _preview(server, filters, **params):
    return requests.post(f"{server.url}/v1/cohorts/preview/manifest",
                         params={"GCS_URL": True, **params},
                         json={"name": "e", "filters": filters})


@pytest.mark.parametrize("filters,status,not_found,fragment", [
    ({"bogus_attr": ["x"]}, 400, ["bogus_attr"], "bogus_attr"),
    ({"Modality_gt": [1]}, 400, ["Modality_gt"], "Modality_gt"),
    ({"SliceThickness_btw": [1]}, 400, [], "takes 2 values"),
    ({"SliceThickness_gt": [1, 2]}, 400, [], "takes 1 value"),
    ({"SliceThickness_gt": ["thick"]}, 400, [], "not a number"),
    ({"SliceThickness_btw": [5, 1]}, 400, [], "lower bound"),
])
def test_filter_errors(server, filters, status, not_found, fragment):
    r = _preview(server, filters)
    assert r.status_code == status
    body = r.json()
    assert body["code"] == status and body["not_found"] == not_found and fragment in body["message"]


@pytest.mark.parametrize("label,known", [
    ("26", "26.0"), ("26.0", "26.0"), ("v26", "26.0"), (" 26.00 ", "26.0"), ("1", "1.0"),
    ("1_0", None), ("1e1", None), ("\uff12\uff16", None), ("26.5", None), ("0x1a", None),
    ("-26", None), ("true", None),
])
def test_data_version_labels_are_read_strictly(server, label, known):
    """A version label that is not plainly a version number is unknown, never read as some
    other version (float() takes "1_0" and "1e1" for 10)."""
    r = requests.get(f"{server.url}/v1/attributes", params={"idc_data_version": label})
    if known:
        assert r.status_code == 200, r.text
        assert r.json()["idc_data_version"] == known
    else:
        assert r.status_code == 400 and r.json()["not_found"] == [label]


def test_documented_errors(server):
    u = server.url
    r = requests.get(f"{u}/v1/collections", params={"idc_data_version": "99.0"})
    assert r.status_code == 400 and r.json()["not_found"] == ["99.0"]
    assert requests.get(f"{u}/v1/collections", params={"colour": 1}).json()["message"] == \
        "Invalid argument colour"
    r = _preview(server, LUNG, GCS_URLs=True)
    assert r.status_code == 400 and r.json()["message"] == "Invalid key GCS_URLs"
    r = requests.get(f"{u}/v1/cohorts/manifest/nextPage", params={"next_page": "x", "foo": 1})
    assert r.json()["message"] == "Invalid query parameter foo"
    h = auth(server.user_token("errs"))
    r = requests.post(f"{u}/v1/cohorts", json={"name": "n"}, headers=h)
    assert r.status_code == 400 and r.json()["message"].startswith("No filters were provided")
    r = requests.post(f"{u}/v1/cohorts", json={"filters": LUNG}, headers=h)
    assert r.status_code == 400 and r.json()["message"] == \
        "A name was not provided for this cohort. The cohort was not made."
    assert requests.get(f"{u}/v1/cohorts").status_code == 401
    assert requests.get(f"{u}/v1/cohorts", headers=auth("not-a-token")).status_code == 401
    assert requests.get(f"{u}/v1/dicomMetadata").status_code == 401


def test_other_users_cohort_is_forbidden_and_sharing_gives_reader(server):
    owner, stranger = server.user_token("own"), server.user_token("stranger")
    cid = requests.post(f"{server.url}/v1/cohorts", json={"name": "x", "filters": LUNG},
                        headers=auth(owner)).json()["cohort_id"]
    for path in (f"/v1/cohorts/{cid}/manifest?GCS_URL=1", f"/v1/cohorts/manifest/{cid}?GCS_URL=1",
                 f"/v1/cohorts/{cid}/query?fields=Modality"):
        r = requests.get(server.url + path, headers=auth(stranger))
        assert r.status_code == 403 and r.json()["code"] == 403
    result = CliRunner().invoke(cli, ["--archive", str(server.commons.archive.root), "cohorts",
                                      "share", str(cid), "stranger", "--owner", "own"])
    assert result.exit_code == 0, result.output
    listed = requests.get(f"{server.url}/v1/cohorts", headers=auth(stranger)).json()["cohorts"]
    assert {"cohort_id": cid, "permission": "READER"}.items() <= next(
        c for c in listed if c["cohort_id"] == cid).items()
    assert requests.get(f"{server.url}/v1/cohorts/{cid}/manifest", params={"GCS_URL": 1},
                        headers=auth(stranger)).status_code == 200
    assert requests.delete(f"{server.url}/v1/cohorts/{cid}", headers=auth(stranger)).json()[
        "cohorts"][0]["result"] == "Not the owner of this cohort"


def test_page_tokens_are_tamper_proof_and_bound_to_the_caller(server):
    a, b = server.user_token("tok_a"), server.user_token("tok_b")
    cid = requests.post(f"{server.url}/v1/cohorts", json={"name": "t", "filters": LUNG},
                        headers=auth(a)).json()["cohort_id"]
    first = requests.get(f"{server.url}/v1/cohorts/{cid}/manifest",
                         params={"GCS_URL": 1, "page_size": 2}, headers=auth(a)).json()
    token = first["next_page"]
    url = f"{server.url}/v1/cohorts/manifest/nextPage"
    assert requests.get(url, params={"next_page": token}, headers=auth(a)).status_code == 200
    for bad_token, headers in [
        (token, auth(b)),                      # another user
        (token, {}),                           # anonymous
        (token[:-4] + "AAAA", auth(a)),        # tampered
        (token[:40], auth(a)),                 # truncated
        ("gAAAAA" + "x" * 100, auth(a)),       # forged
    ]:
        r = requests.get(url, params={"next_page": bad_token}, headers=headers)
        assert r.status_code == 400 and r.json()["message"] == "Invalid next_page token"
    # a manifest token is not a query token
    r = requests.get(f"{server.url}/v1/cohorts/query/nextPage", params={"next_page": token},
                     headers=auth(a))
    assert r.status_code == 400


def test_a_cohort_of_thousands_of_uids_pages_with_short_tokens(server):
    """Tokens name a large filter by reference: with the filters inline, 20,000 UIDs made
    tokens of 1.7 MB, past what a request line may hold."""
    uids = [r[0] for r in duckdb.sql(
        f"SELECT SeriesInstanceUID FROM '{IDC_DIR / 'idc_index.parquet'}' "
        "ORDER BY crdc_series_uuid LIMIT 3000").fetchall()]
    spec = {"name": "by uid", "filters": {"SeriesInstanceUID": uids}}
    a = auth(server.user_token("uid_owner"))
    for headers in ({}, a):  # anonymous (nextPage on the event loop when it can) and a user
        first = requests.post(f"{server.url}/v1/cohorts/preview/manifest", headers=headers,
                              params={"SeriesInstanceUID": 1, "page_size": 700}, json=spec)
        assert first.status_code == 200, first.text
        token, got = first.json()["next_page"], first.json()["manifest"]["json_manifest"]
        while token:
            assert len(token) < 500
            r = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage", headers=headers,
                             params={"next_page": token, "page_size": 700})
            assert r.status_code == 200, r.text
            got += r.json()["manifest"]["json_manifest"]
            token = r.json()["next_page"]
        assert [row["SeriesInstanceUID"] for row in got] == sorted(uids)
    r = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage", headers=a,
                     params={"next_page": first.json()["next_page"]})
    assert r.status_code == 200
    r = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage",  # bound to its caller
                     params={"next_page": first.json()["next_page"]})
    assert r.status_code == 400 and r.json()["message"] == "Invalid next_page token"


def test_trailing_slash_variants(server):
    for path in ("/v1/about", "/v1/versions", "/v1/collections", "/v1/analysis_results"):
        assert requests.get(server.url + path + "/").status_code == 200


# ----- login, credentials file -------------------------------------------------------------
def test_login_writes_the_credentials_file_the_notebook_reads(server, tmp_path):
    server.commons.accounts.add_user("nbuser", "s3cret-pass")
    creds = tmp_path / ".idc_credentials"
    result = CliRunner().invoke(cli, ["login", "--server", server.url, "--username", "nbuser",
                                      "--password", "s3cret-pass", "--credentials-file", str(creds)])
    assert result.exit_code == 0, result.output
    token = json.loads(creds.read_text())["token_response"]["id_token"]
    assert oct(creds.stat().st_mode & 0o777) == "0o600"
    r = requests.get(f"{server.url}/v1/cohorts", headers={"Authorization": "Bearer " + token})
    assert r.status_code == 200 and r.json()["cohorts"] == []
    bad = CliRunner().invoke(cli, ["login", "--server", server.url, "--username", "nbuser",
                                   "--password", "wrong", "--credentials-file", str(creds)])
    assert bad.exit_code != 0 and "refused" in bad.output


# ----- restricted collections, versions, deadline -------------------------------------------
@pytest.fixture
def restricted_server(small_archive):
    commons = Commons(small_archive)
    ingest(commons.catalog, [SAMPLES / "MR_small.dcm", SAMPLES / "CT_small.dcm"], "Secret-Trial",
           restricted=True)
    publish(commons.catalog)
    with LiveServer(small_archive) as live:
        yield live


def test_restricted_collection_invisible_without_grant(restricted_server):
    live = restricted_server
    plain, granted = live.user_token("plain"), live.user_token("granted")
    live.commons.accounts.grant("granted", "secret_trial")
    spec = {"name": "s", "filters": {"collection_id": ["secret_trial"]}}
    for headers, visible in (({}, False), (auth(plain), False), (auth(granted), True)):
        ids = {c["collection_id"] for c in
               requests.get(f"{live.url}/v1/collections", headers=headers).json()["collections"]}
        assert ("secret_trial" in ids) is visible and "pydicom_samples" in ids
        m = requests.post(f"{live.url}/v1/cohorts/preview/manifest", params={"GCS_URL": 1},
                          json=spec, headers=headers).json()
        assert (m["manifest"]["totalFound"] == 2) is visible
        q = requests.post(f"{live.url}/v1/cohorts/preview/query", headers=headers, json={
            "cohort_def": {"name": "s", "filters": {"Modality": ["MR", "CT"]}},
            "queryFields": {"fields": ["collection_id"]}}).json()
        assert ({"collection_id": "secret_trial"} in q["query_results"]["json"]) is visible
        if headers:
            meta = requests.get(f"{live.url}/v1/dicomMetadata", params={"page_size": 5000},
                                headers=headers).json()["query_results"]["json"]
            assert any(r["collection_id"] == "secret_trial" for r in meta) is visible


def test_cohort_manifest_unchanged_across_publish(small_archive):
    with LiveServer(small_archive) as live:
        h = auth(live.user_token("pin"))
        cid = requests.post(f"{live.url}/v1/cohorts", headers=h, json={
            "name": "pinned", "filters": {"collection_id": ["pydicom_samples"]}}).json()["cohort_id"]
        params = {"CRDC_Instance_GUID": 1, "GCS_URL": 1, "SOPInstanceUID": 1, "page_size": 5000}
        before = requests.get(f"{live.url}/v1/cohorts/{cid}/manifest", params=params, headers=h)
        preview_before = requests.post(f"{live.url}/v1/cohorts/preview/manifest", params=params,
                                       json={"name": "p", "filters": {"collection_id": ["pydicom_samples"]}}).json()
        # a new version: one more file, a new SOPInstanceUID, in the same collection
        import pydicom

        ds = pydicom.dcmread(SAMPLES / "CT_small.dcm")
        ds.SOPInstanceUID = ds.SOPInstanceUID + ".99"
        extra = small_archive.root.parent / "extra.dcm"
        ds.save_as(extra)
        ingest(live.commons.catalog, [extra], "pydicom_samples")
        publish(live.commons.catalog)
        after = requests.get(f"{live.url}/v1/cohorts/{cid}/manifest", params=params, headers=h)
        assert after.status_code == 200 and after.content == before.content
        preview_after = requests.post(f"{live.url}/v1/cohorts/preview/manifest", params=params,
                                      json={"name": "p", "filters": {"collection_id": ["pydicom_samples"]}}).json()
        assert preview_after["manifest"]["totalFound"] == preview_before["manifest"]["totalFound"] + 1


@pytest.mark.parametrize("version, field, runs", [
    ("26.0", "GCS_URL", "_materialise"),  # (an ingested version: no key ranks)
    ("25.0", "GCS_URL", "_first_rows"),  # IDC's URLs, a ranked unique key: a top-k and a count
])
def test_202_on_deadline_resumes_the_same_work(demo_archive_dir, version, field, runs):
    archive = Archive(demo_archive_dir, query_deadline_s=0.0)
    with LiveServer(archive) as live:
        calls = []
        owner = live.commons.results if runs == "_materialise" else live.commons.pager
        original = getattr(owner, runs)

        def counted(*args):
            calls.append(args)
            return original(*args)

        setattr(owner, runs, counted)
        spec = {"name": "slow", "filterSet": {"idc_data_version": version,  # (see below)
                                              "filters": {"Modality": ["CT", "MR", "PT"]}}}
        params = {field: 1, "page_size": 10}
        r = requests.post(f"{live.url}/v1/cohorts/preview/manifest", params=params, json=spec)
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["code"] == 202 and "next_page token" in body["message"]
        token = body["next_page"]
        for _ in range(600):
            r = requests.post(f"{live.url}/v1/cohorts/preview/manifest",
                              params={"next_page": token, "page_size": 10}, json=spec)
            if r.status_code == 200:
                break
            token = r.json()["next_page"]
            time.sleep(0.05)
        assert r.status_code == 200 and r.json()["manifest"]["rowsReturned"] == 10
        assert len(calls) == 1  # resubmitting picked up the running query; nothing restarted


def test_a_page_by_key_past_the_deadline_is_a_202_that_resumes_it(small_archive):
    """dicomMetadata pages are read by key: past the deadline (0 s here) the first is a 202,
    and its token picks up the same read, whose rows then come once."""
    with LiveServer(Archive(small_archive.root, query_deadline_s=0.0)) as live:
        h = auth(live.user_token("keyed"))
        keyset = live.commons.keyset
        calls, original = [], keyset.ordered_page

        def counted(*args):
            calls.append(args)
            time.sleep(0.3)  # (a slow read)
            return original(*args)

        keyset.ordered_page = counted
        r = requests.get(f"{live.url}/v1/dicomMetadata", params={"page_size": 20}, headers=h)
        assert r.status_code == 202 and "next_page token" in r.json()["message"], r.text
        for _ in range(100):
            r = requests.get(f"{live.url}/v1/dicomMetadata/nextPage", headers=h,
                             params={"next_page": r.json()["next_page"], "page_size": 20})
            if r.status_code == 200:
                break
            time.sleep(0.05)
        body = r.json()
        assert r.status_code == 200 and body["query_results"]["rowsReturned"] == 20, r.text
        assert len(calls) == 1


def test_the_first_page_of_a_large_answer_waits_for_none_of_the_rest(server):
    """The first page of 128k MR series of IDC's v25 led by their URL (a unique key there) is a
    top-k and a count (no result is materialised for it); the second is read from the result
    made then. The pages are the query's rows in order, as one materialised page of them all
    gives them."""
    spec = {"name": "mr", "filterSet": {"idc_data_version": "25.0", "filters": {
        "Modality": ["MR", "not-a-modality-top-k"]}}}
    params = {"GCS_URL": True, "SeriesInstanceUID": True, "page_size": 1000}
    url = f"{server.url}/v1/cohorts/preview/manifest"
    first = requests.post(url, params=params, json=spec).json()
    store = server.commons.results
    held_before = len(store._results)
    rows = first["manifest"]["json_manifest"]
    assert first["manifest"]["rowsReturned"] == 1000
    assert len(store._results) == held_before  # nothing materialised for the first page
    second = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage",
                          params={"next_page": first["next_page"], "page_size": 1000}).json()
    rows += second["manifest"]["json_manifest"]
    whole = requests.post(url, params={**params, "page_size": 65536}, json=spec).json()
    assert whole["manifest"]["totalFound"] == first["manifest"]["totalFound"] > 100_000
    assert rows == whole["manifest"]["json_manifest"][:2000]


def _until_done(url: str, first: requests.Response, resubmit) -> requests.Response:
    """Resubmit a 202's token until the work is done."""
    r = first
    for attempt in range(200):
        if r.status_code != 202:
            return r
        time.sleep(min(0.01 * 2 ** attempt, 0.5))  # (each 202 already waited its deadline)
        r = resubmit(r.json()["next_page"])
    raise AssertionError("the query never finished")


def test_a_resumed_202_answers_as_the_request_would_have(demo_archive_dir):
    """The first page got through a 202's token echoes its cohort and the SQL asked for, as it
    would have without the wait; a nextPage that waits resumes at its own offset."""
    archive = Archive(demo_archive_dir, query_deadline_s=0.0)
    spec = {"name": "slow", "description": "d", "filters": {"Modality": ["CT", "MR"]}}
    with LiveServer(archive) as live:
        url = f"{live.url}/v1/cohorts/preview/manifest"
        r = _until_done(url, requests.post(url, params={"SeriesInstanceUID": 1, "sql": 1,
                                                        "page_size": 10}, json=spec),
                        lambda t: requests.post(url, params={"next_page": t, "page_size": 10}))
        first = r.json()
        assert r.status_code == 200 and first["cohort"]["name"] == "slow"
        assert first["cohort"]["filterSet"]["filters"] == spec["filters"]
        assert "SELECT DISTINCT" in first["cohort"]["sql"]

        # the query's result leaves room for one: the manifest's is evicted, and its second
        # page runs the manifest's query again, and waits
        live.commons.results.max_results = 1
        qurl = f"{live.url}/v1/cohorts/preview/query"
        r = _until_done(qurl, requests.post(qurl, json={"cohort_def": spec, "fields": ["Modality"]}),
                        lambda t: requests.post(qurl, params={"next_page": t}))
        assert r.status_code == 200 and r.json()["cohort_def"]["name"] == "slow"
        assert r.json()["cohort_def"]["sql"] == ""  # not asked for

        next_url = f"{live.url}/v1/cohorts/manifest/nextPage"
        r = requests.get(next_url, params={"next_page": first["next_page"], "page_size": 10})
        assert r.status_code == 202
        r = _until_done(next_url, r, lambda t: requests.get(next_url, params={"next_page": t,
                                                                               "page_size": 10}))
        assert r.status_code == 200 and r.json()["cohort"] == {}
        second = r.json()["manifest"]["json_manifest"]
    with LiveServer(Archive(demo_archive_dir)) as live:  # the same pages, with no waiting
        url = f"{live.url}/v1/cohorts/preview/manifest"
        page = requests.post(url, params={"SeriesInstanceUID": 1, "page_size": 20}, json=spec)
        rows = page.json()["manifest"]["json_manifest"]
        assert first["manifest"]["json_manifest"] == rows[:10] and second == rows[10:]


# ----- one slow request holds up no other ---------------------------------------------------
def held(obj, name: str, monkeypatch) -> tuple[threading.Event, threading.Event]:
    """Make `obj.name` wait for a release before doing its work: (entered, release)."""
    entered, release = threading.Event(), threading.Event()
    original = getattr(obj, name)

    def waiting(*args, **kwargs):
        entered.set()
        release.wait(20)
        return original(*args, **kwargs)

    monkeypatch.setattr(obj, name, waiting)
    return entered, release


@pytest.mark.parametrize("method, path, kwargs, blocker", [
    ("POST", "/v1/cohorts/preview/manifest", {"params": {"GCS_URL": True},
                                              "json": {"name": "x", "filters": LUNG}}, "results.run"),
    ("POST", "/v1/cohorts/preview/query", {"json": {"cohort_def": {"name": "x", "filters": LUNG},
                                                    "fields": ["Modality"]}}, "results.run"),
    ("GET", "/v1/cohorts/{cohort}/query", {"params": {"fields": "Modality"}}, "results.run"),
    ("POST", "/v1/cohorts/query/{cohort}", {"json": {"fields": ["Modality"]}}, "results.run"),
    ("POST", "/v1/cohorts", {"json": {"name": "slow", "filters": LUNG}}, "accounts.create_cohort"),
    ("DELETE", "/v1/cohorts", {"json": {"cohorts": ["{cohort}"]}}, "accounts.delete_cohort"),
    ("POST", "/nbia-api/oauth/token", {"data": {"username": "waiter", "password": "pw-secret-1"}},
     "accounts.authenticate"),
    ("POST", "/nbia-api/logout", {}, "accounts.revoke"),
])
def test_a_request_waiting_on_its_work_does_not_stall_the_others(server, monkeypatch, method,
                                                                 path, kwargs, blocker):
    """Every endpoint that waits on a query, the accounts database or a password check does so
    off the event loop: while it waits, other requests are answered."""
    token = server.user_token("waiter")
    cohort = requests.post(f"{server.url}/v1/cohorts", json={"name": "c", "filters": LUNG},
                           headers=auth(token)).json()["cohort_id"]
    path = path.format(cohort=cohort)
    kwargs = json.loads(json.dumps(kwargs).replace('"{cohort}"', str(cohort)))
    owner, name = blocker.split(".")
    entered, release = held(getattr(server.commons, owner), name, monkeypatch)
    answers = []
    slow = threading.Thread(target=lambda: answers.append(requests.request(
        method, server.url + path, headers=auth(token), timeout=30, **kwargs)))
    slow.start()
    try:
        assert entered.wait(10), "the request never reached the work it waits on"
        about = requests.get(f"{server.url}/v1/about", timeout=3)
        assert about.status_code == 200 and slow.is_alive()
    finally:
        release.set()
        slow.join(30)
    assert answers and answers[0].status_code == 200, answers and answers[0].text


def test_a_warmed_server_takes_what_it_holds_out_of_the_collectors_reach(server, monkeypatch):
    """After warming up, the objects a server process holds for its life (~140k, which a full
    garbage collection walked in ~60 ms during some request) are frozen; what requests make
    later is collected as usual. Only the process's first app freezes: another one made later
    (as tests make them) freezes nothing of the first one's, which stays collectable."""
    app_module = sys.modules[warm_up_and_settle.__module__]
    assert app_module._settled.wait(120)  # (the server's own warm-up has frozen by now)
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    monkeypatch.setattr(app_module, "_settled", threading.Event())  # as in a new process
    warm_up_and_settle(server.commons)
    frozen = gc.get_freeze_count()
    assert frozen > 10_000
    assert requests.get(f"{server.url}/v1/about").status_code == 200
    later = [[] for _ in range(1000)]  # (objects the collector tracks)
    warm_up_and_settle(server.commons)
    assert gc.get_freeze_count() <= frozen and later  # none of them frozen


@contextlib.contextmanager
def thread_pool_taken(server: LiveServer):
    """While inside, the server's thread pool (anyio's default limiter, on its event loop) has
    no worker to give: what needs a thread waits for one, what the event loop serves answers."""
    loop = server._server.servers[0].get_loop()
    holder = object()

    async def take():
        limiter = anyio.to_thread.current_default_thread_limiter()
        total = limiter.total_tokens
        limiter.total_tokens = 1
        await limiter.acquire_on_behalf_of(holder)
        return limiter, total

    limiter, total = asyncio.run_coroutine_threadsafe(take(), loop).result(10)
    try:
        yield
    finally:
        async def give_back():
            limiter.release_on_behalf_of(holder)
            limiter.total_tokens = total

        asyncio.run_coroutine_threadsafe(give_back(), loop).result(10)


def test_an_anonymous_next_page_of_a_materialised_result_is_served_on_the_event_loop(server):
    """No thread hop where nothing can wait: while the server has no worker thread to give, an
    anonymous nextPage whose result is in memory is answered all the same; one whose query is
    unfinished (it is started then), or an authenticated one (the accounts database), waits for
    a worker, and gets the same page once there is one."""
    spec = {"name": "x", "filters": LUNG}
    params = {"GCS_URL": True, "page_size": 3}
    preview = f"{server.url}/v1/cohorts/preview/manifest"
    first = requests.post(preview, params=params, json=spec).json()
    signed = auth(server.user_token("loop-tester"))
    first_signed = requests.post(preview, params=params, json=spec, headers=signed).json()

    def next_page(token: str, headers=None, timeout: float = 30) -> dict:
        r = requests.get(f"{server.url}/v1/cohorts/manifest/nextPage", headers=headers,
                         params={"next_page": token, "page_size": 3}, timeout=timeout)
        assert r.status_code == 200, r.text
        return r.json()["manifest"]  # (each next_page token is new: Fernet stamps the time)

    second = next_page(first["next_page"])
    answers: list[dict] = []
    with thread_pool_taken(server):
        assert next_page(first["next_page"], timeout=10) == second  # on the loop
        server.commons.results._results.clear()  # the result is gone: its query runs again
        waiting = [threading.Thread(target=lambda: answers.append(next_page(first["next_page"]))),
                   threading.Thread(target=lambda: answers.append(
                       next_page(first_signed["next_page"], signed)))]
        for thread in waiting:
            thread.start()
        time.sleep(1.5)
        assert all(thread.is_alive() for thread in waiting) and not answers
    for thread in waiting:
        thread.join(30)
    assert answers == [second, second]


# ----- malformed input: always 4xx, nothing stored ------------------------------------------
MALFORMED = [
    ("POST", "/v1/cohorts", None, "not json"),
    ("POST", "/v1/cohorts", None, "[1,2,3]"),
    ("POST", "/v1/cohorts", None, "null"),
    ("POST", "/v1/cohorts", None, {"name": 5, "filters": LUNG}),
    ("POST", "/v1/cohorts", None, {"name": "", "filters": LUNG}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": []}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": "Modality=CT"}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"Modality": []}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"Modality": [{"a": 1}]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"Modality": [True]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"Modality": [None]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": LUNG, "owner": "root"}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filterSet": {"filters": LUNG, "idc_data_version": "abc"}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filterSet": {"filters": LUNG, "idc_data_version": "-1"}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filterSet": {"filters": LUNG, "idc_data_version": 25.5}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filterSet": {"filters": LUNG, "extra": 1}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filterSet": "v25"}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": LUNG,
                                   "filterSet": {"filters": {"Modality": ["MR"]}}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"Modality'; DROP TABLE cohorts;--": ["CT"]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"SliceThickness_gt": ["1; DELETE FROM users"]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"SliceThickness_btw": ["a", "b"]}}),
    ("POST", "/v1/cohorts", None, {"name": "x", "filters": {"SliceThickness_gt": ["nan"]}}),
    ("POST", "/v1/cohorts", None, '{"name": "x", "filters": {"SliceThickness_gt": [1e400]}}'),
    ("POST", "/v1/cohorts", None, {"name": "x", "description": ["d"], "filters": LUNG}),
    ("POST", "/v1/cohorts", None, {"name": "n" * 300, "filters": LUNG}),
    ("POST", "/v1/cohorts", None, {"name": "nul\u0000name", "filters": LUNG}),
    ("POST", "/v1/cohorts", {"page_size": 3}, {"name": "x", "filters": LUNG}),
    ("DELETE", "/v1/cohorts", None, {"cohorts": "all"}),
    ("DELETE", "/v1/cohorts", None, {"cohorts": []}),
    ("DELETE", "/v1/cohorts", None, {"cohorts": ["1 OR 1=1"]}),
    ("DELETE", "/v1/cohorts", None, {"ids": [1]}),
    ("DELETE", "/v1/cohorts", None, "garbage"),
    ("DELETE", "/v1/cohorts/abc", None, None),
    ("DELETE", "/v1/cohorts/-1", None, None),
    ("GET", "/v1/cohorts/manifest/1%20OR%201=1", {"GCS_URL": 1}, None),
    ("GET", "/v1/cohorts/99999999/manifest", {"GCS_URL": 1}, None),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "page_size": 10 ** 9}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "page_size": -5}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "page_size": 0}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "page_size": "ten"}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": "maybe"}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "sql": "yes please"}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {}, {"name": "x", "filters": LUNG}),
    ("POST", "/v1/cohorts/preview/manifest", {"GCS_URL": 1, "next_page": "'; DROP TABLE users;--"}, {}),
    ("POST", "/v1/cohorts/preview/query", None, {"cohort_def": {"name": "x", "filters": LUNG}}),
    ("POST", "/v1/cohorts/preview/query", None, {"cohort_def": {"name": "x", "filters": LUNG},
                                                 "queryFields": {"fields": ["nope"]}}),
    ("POST", "/v1/cohorts/preview/query", None, {"cohort_def": {"name": "x", "filters": LUNG},
                                                 "queryFields": {"fields": "Modality"}}),
    ("POST", "/v1/cohorts/preview/query", None, {"cohort_def": "x", "queryFields": {"fields": ["Modality"]}}),
    ("POST", "/v1/cohorts/preview/query", None, {"cohort_def": {"name": "x", "filters": LUNG},
                                                 "queryFields": {"fields": ["Modality"]}, "x": 1}),
    ("GET", "/v1/cohorts/query/nextPage", {"page_size": 5}, None),
    ("GET", "/v1/dicomMetadata", {"page_size": "many"}, None),
    ("GET", "/v1/dicomMetadata", {"idc_data_version": "1000"}, None),
    ("GET", "/v1/attributes", {"idc_data_version": "x'--"}, None),
    ("GET", "/v1/analysis_results", {"idc_data_version": "0"}, None),
    # JSON the server cannot echo or store: NaN, a lone surrogate, nesting past any sane depth
    ("POST", "/v1/cohorts", None, '{"name": "x", "filters": {"Modality": [NaN]}}'),
    ("POST", "/v1/cohorts", None, '{"name": "x", "filters": {"Modality": ["\\ud800"]}}'),
    ("POST", "/v1/cohorts", None, '{"name": "x", "filters": ' + "[" * 100000 + "]" * 100000 + "}"),
    ("POST", "/v1/cohorts", None, {"name": "x", "description": "nul\u0000desc", "filters": LUNG}),
    # cohort ids no database row can have
    ("DELETE", "/v1/cohorts/" + "9" * 30, None, None),
    ("DELETE", "/v1/cohorts", None, {"cohorts": [2 ** 64 - 1]}),
    ("DELETE", "/v1/cohorts", None, {"cohorts": ["9" * 30]}),
    ("GET", "/v1/cohorts/" + "9" * 30 + "/manifest", {"GCS_URL": 1}, None),
    ("GET", "/v1/cohorts/query/" + "9" * 30, {"fields": "Modality"}, None),
    # a single-valued parameter given twice (Flask read the first, Starlette the last)
    ("GET", "/v1/collections", [("idc_data_version", "99"), ("idc_data_version", "20")], None),
    ("POST", "/v1/cohorts/preview/manifest", [("GCS_URL", "1"), ("page_size", "5"), ("page_size", "9")],
     {"name": "x", "filters": LUNG}),
]


def _db_snapshot(archive_root) -> list:
    con = sqlite3.connect(archive_root / "accounts.sqlite")
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                            "AND name NOT IN ('tokens')")]
        return [(t, sorted(map(repr, con.execute(f'SELECT * FROM "{t}"').fetchall())))
                for t in sorted(tables)]
    finally:
        con.close()


def test_fifty_malformed_requests_are_4xx_and_change_nothing(server):
    assert len(MALFORMED) >= 50
    h = auth(server.user_token("fuzzer"))
    before = _db_snapshot(server.commons.archive.root)
    for method, path, params, body in MALFORMED:
        kwargs = {"params": params, "headers": dict(h)}
        if isinstance(body, str):
            kwargs["data"] = body
            kwargs["headers"]["Content-Type"] = "application/json"
        elif body is not None:
            kwargs["json"] = body
        r = requests.request(method, server.url + path, **kwargs)
        assert 400 <= r.status_code < 500, (method, path, params, body, r.status_code, r.text)
        assert r.json()["code"] == r.status_code and r.json()["message"]
    assert _db_snapshot(server.commons.archive.root) == before


@pytest.fixture
def postgres_url():
    yield from postgres_schema_url()


def test_bad_ids_and_nul_text_are_4xx_on_postgresql(small_archive, postgres_url):
    """PostgreSQL keys are 32-bit and its text holds no NUL: both are refused before the
    database sees them, never a 500."""
    with LiveServer(Archive(small_archive.root, accounts_url=postgres_url)) as live:
        h = auth(live.user_token("pg"))
        cases = [
            ("GET", f"/v1/cohorts/{2 ** 31}/manifest", {"params": {"GCS_URL": 1}}, 404),
            ("GET", f"/v1/cohorts/{2 ** 40}/query", {"params": {"fields": "Modality"}}, 404),
            ("DELETE", f"/v1/cohorts/{2 ** 31}", {}, 400),
            ("DELETE", "/v1/cohorts", {"json": {"cohorts": [-(2 ** 40)]}}, 400),
            ("POST", "/v1/cohorts", {"json": {"name": "n", "description": "a\u0000b",
                                               "filters": {"Modality": ["CT"]}}}, 400),
        ]
        for method, path, kw, status in cases:
            r = requests.request(method, live.url + path, headers=h, **kw)
            assert r.status_code == status and r.json()["code"] == status, (path, r.text)
        assert requests.get(f"{live.url}/v1/cohorts", headers=h).json()["cohorts"] == []


# ----- the OpenAPI description --------------------------------------------------------------
SAMPLE_VALUES = {"boolean": "false", "integer": "1", "string": "x", "array": ["x"]}


def test_the_openapi_gives_this_servers_largest_page(small_archive):
    """page_size's declared maximum is the server's IMAGING_COMMONS_MAX_PAGE_SIZE, in both
    documents (/openapi.json and /v1/openapi.json), not the default."""
    with LiveServer(Archive(small_archive.root, max_page_size=500)) as live:
        for url in (f"{live.url}/openapi.json", f"{live.url}/v1/openapi.json"):
            doc = requests.get(url, timeout=60).json()
            maxima = {p["schema"]["maximum"] for item in doc["paths"].values()
                      for op in item.values() for p in op.get("parameters", [])
                      if p["name"] == "page_size"}
            assert maxima == {500}, url
        too_big = requests.get(f"{live.url}/v1/dicomMetadata", params={"page_size": 501},
                               headers=auth(live.user_token("reader")), timeout=60)
        assert too_big.status_code == 400 and "500" in too_big.json()["message"]


def test_the_openapi_declares_each_idc_operations_parameters_bodies_and_answers(server):
    """/v1/openapi.json (what /v1/swagger shows) declares every operation's query parameters,
    typed, its JSON body and its answers' models, and the bearer token; each declared
    parameter is one the handler takes (sent, it is never refused as unknown)."""
    doc = requests.get(f"{server.url}/v1/openapi.json").json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    ops = {(method.upper(), path): op for path, item in doc["paths"].items()
           for method, op in item.items()}
    assert len(ops) == 19

    def query(method: str, path: str) -> dict:
        return {p["name"]: p["schema"] for p in ops[method, path].get("parameters", [])
                if p["in"] == "query"}

    page_size = query("GET", "/v1/dicomMetadata")["page_size"]
    assert (page_size["type"], page_size["minimum"], page_size["maximum"]) == (
        "integer", 1, Archive.max_page_size)
    assert set(query("POST", "/v1/cohorts/manifest/preview")) == {
        "CRDC_Study_GUID", "CRDC_Series_GUID", "CRDC_Instance_GUID", "GCS_URL", "Collection_ID",
        "Patient_ID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "Source_DOI",
        "sql", "page_size", "next_page"}
    assert query("GET", "/v1/cohorts/query/{cohort_id}")["fields"]["type"] == "array"
    assert ops["GET", "/v1/cohorts/query/nextPage"]["parameters"][0]["required"]
    definition = ops["POST", "/v1/cohorts"]["requestBody"]["content"]["application/json"]
    assert set(definition["schema"]["properties"]) == {"name", "description", "filters",
                                                       "filterSet"}
    h = auth(server.user_token("openapi-reader"))
    for (method, path), op in ops.items():
        answer = op["responses"]["200"]["content"]["application/json"]["schema"]
        assert answer["$ref"].startswith("#/components/schemas/"), (method, path)
        assert op["security"] == [{"HTTPBearer": []}]
        params = {name: SAMPLE_VALUES[schema["type"]]
                  for name, schema in query(method, path).items()}
        r = requests.request(method, server.url + path.replace("{cohort_id}", "1"),
                             params=params, headers=h, timeout=60)
        assert r.status_code < 500, (method, path, r.text)
        assert not re.match(r"Invalid (key|argument|query parameter) ",
                            r.json().get("message", "")), (method, path, r.text)
