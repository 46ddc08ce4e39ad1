"""The filter language's compiler: portable SQL, values never in the SQL text, clinical joins."""

from __future__ import annotations

import pytest
import requests
import sqlglot

from conftest import LiveServer
from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import publish, stage_clinical
from imaging_commons.core.query import col, compile_select


def test_compiled_query_is_portable_and_parameterised(small_archive):
    commons = Commons(small_archive)
    hostile = "CT'); DROP TABLE items; --"
    compiled = commons.compile_state({"kind": "manifest", "version": 1,
                                      "fields": manifest_fields(["GCS_URL"]),
                                      "filters": {"Modality": [hostile],
                                                  "SliceThickness_btw": [1, 5]}}, None)
    assert hostile.lower() in compiled.params
    for dialect, marker in (("duckdb", "?"), ("spark", "?"), ("bigquery", "?"),
                            ("postgres", "%s")):
        text = compiled.sql(dialect)
        assert "DROP TABLE" not in text and text.count(marker) == len(compiled.params)
        sqlglot.parse_one(text, read=dialect)  # renders to valid SQL of that engine
    rows = commons.page({"kind": "manifest", "version": 1, "offset": 0,
                         "fields": manifest_fields(["GCS_URL"]),
                         "filters": {"Modality": [hostile]}}, None, 10, None)
    assert rows.total == 0


@pytest.mark.parametrize("hide_samples", [True, False])
def test_many_hidden_collections_are_all_left_out(small_archive, hide_samples):
    """Collections hidden from a caller are excluded as a set once there are many of them."""
    commons = Commons(small_archive)
    hidden = {f"secret_{i}" for i in range(12)} | ({"pydicom_samples"} if hide_samples else set())
    compiled = compile_select(commons.catalog, 1, {}, [("GCS_URL", col("gcs_url"))],
                              frozenset(hidden))
    assert compiled.sql().count("?") == 1
    rows = commons.catalog.connection().execute(compiled.sql(), compiled.params).fetchall()
    assert (len(rows) == 0) is hide_samples


@pytest.fixture
def clinical_server(small_archive, tmp_path):
    commons = Commons(small_archive)
    con = commons.catalog.connection()
    patients = [r[0] for r in con.execute(
        f"SELECT DISTINCT PatientID FROM {commons.catalog.relation(1, 'items')} "
        "WHERE PatientID IS NOT NULL ORDER BY 1 LIMIT 3").fetchall()]
    csv = tmp_path / "clinical.csv"
    csv.write_text("PatientID,race,age_at_diagnosis\n"
                   f"{patients[0]},ASIAN,40\n{patients[1]},WHITE,61\n{patients[2]},asian,75\n")
    stage_clinical(commons.catalog, csv, "pydicom_samples", "trial_clinical")
    publish(commons.catalog)
    with LiveServer(small_archive) as live:
        yield live, patients


def test_clinical_attributes_filter_per_patient(clinical_server):
    live, patients = clinical_server

    def patients_for(filters):
        r = requests.post(f"{live.url}/v1/cohorts/preview/query", params={"page_size": 5000},
                          json={"cohort_def": {"name": "c", "filters": filters},
                                "queryFields": {"fields": ["PatientID", "race"]}})
        assert r.status_code == 200, r.text
        return {(x["PatientID"], x["race"]) for x in r.json()["query_results"]["json"]}

    assert patients_for({"race": ["Asian"]}) == {(patients[0], "ASIAN"), (patients[2], "asian")}
    assert patients_for({"race": ["ASIAN"], "age_at_diagnosis_gte": [50]}) == {
        (patients[2], "asian")}
    many = [f"race-{i}" for i in range(20)]  # matched as a set, with the same rules
    assert patients_for({"race": many + ["Asian"]}) == patients_for({"race": ["Asian"]})
    assert patients_for({"age_at_diagnosis": [float(a) for a in range(100, 120)] + [61]}) == {
        (patients[1], "WHITE")}
    attrs = requests.get(f"{live.url}/v1/attributes",
                         params={"data_source": "clinical.trial_clinical"}).json()
    names = {a["name"]: a["data_type"] for s in attrs["data_sources"] for a in s["attributes"]}
    assert names["race"] == "CATEGORICAL" and names["age_at_diagnosis"] == "CONTINUOUS_NUMERIC"
    assert "age_at_diagnosis_btw" in names
    versions = requests.get(f"{live.url}/v1/versions").json()["versions"]
    assert {"name": "clinical.trial_clinical", "data_type": "Clinical, Biospecimen, and Mutation Data"} \
        in versions[-1]["data_sources"]
