"""The archive: ingest of real DICOM files, staging and atomic publishing, immutable versions,
the IDC import against its own Parquet files, clinical tables and the attribute registry, and
the accounts database on PostgreSQL."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import duckdb
import highdicom as hd
import idc_index_data
import numpy as np
import orjson
import pydicom
import pytest
from pydicom.sr.codedict import codes

import imaging_commons
from conftest import postgres_schema_url
from imaging_commons.config import Archive
from imaging_commons.core.accounts import OWNER
from imaging_commons.core.catalog import ITEM_COLUMNS
from imaging_commons.core.catalog import store as catalog_store
from imaging_commons.core.demo import pydicom_sample_dir
from imaging_commons.core.errors import Conflict, InvalidRequest
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish, stage_clinical
from imaging_commons.core.schema import CATEGORICAL, CONTINUOUS_NUMERIC, DICOM_METADATA_COLUMNS

SAMPLES = pydicom_sample_dir()
SRC_DIR = Path(imaging_commons.__file__).resolve().parents[1]
UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# pydicom's deliberately cut samples: pydicom itself reads them without complaint
PYDICOM_TRUNCATED = frozenset(p for p in SAMPLES.rglob("*truncated*") if p.is_file())
IDC_DIR = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent


# ----- helpers ------------------------------------------------------------------------------
def sop_uid_of(path: Path) -> str | None:
    """The SOPInstanceUID of a file pydicom reads as a dataset with all three UIDs, else None:
    the test's own judgement of what is DICOM, independent of ingest's reader."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            uids = [ds.get(k) for k in UID_KEYWORDS]
    except Exception:
        return None
    return str(uids[2]).strip() if all(str(u or "").strip() for u in uids) else None


def files_under(*roots: Path) -> list[Path]:
    return sorted(p for root in roots for p in ([root] if root.is_file() else root.rglob("*"))
                  if p.is_file())


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def query(commons: Commons, sql: str, params: list | None = None) -> list[tuple]:
    return commons.catalog.connection().execute(sql, params or []).fetchall()


def items(commons: Commons, version: int) -> str:
    return commons.catalog.relation(version, "items")


# an item's own columns (the loaded items also carry key ranks, which shift as segments load)
ITEM_VALUES = ", ".join(f'"{name}"' for name in ITEM_COLUMNS)


def all_rows(commons: Commons, version: int) -> list[tuple]:
    """Every item row of a version, in a stable order: what 'the same rows' means."""
    return query(commons, f"SELECT {ITEM_VALUES} FROM {items(commons, version)} "
                          f"ORDER BY crdc_series_uuid, SOPInstanceUID, crdc_instance_uuid")


def row_of(commons: Commons, version: int, sop_uid: str) -> dict:
    cur = commons.catalog.connection().execute(
        f"SELECT {ITEM_VALUES} FROM {items(commons, version)} WHERE SOPInstanceUID = ?",
        [sop_uid])
    rows = cur.fetchall()
    assert len(rows) == 1, f"{len(rows)} rows for {sop_uid}"
    return dict(zip([d[0] for d in cur.description], rows[0]))


def page_rows(commons: Commons, state: dict, user) -> list[dict]:
    """The rows of a paged request's first page, as a client reads them."""
    return orjson.loads(b"".join(commons.page(state, user, 100, None).rows_json()))


def published_counts(archive: Archive) -> dict[int, int]:
    """Row count of every published version, read by a fresh process-like Commons."""
    commons = Commons(Archive(archive.root))
    return {v.version: query(commons, f"SELECT count(*) FROM {items(commons, v.version)}")[0][0]
            for v in commons.catalog.versions()}


def tree_hashes(*roots: Path) -> dict[Path, str]:
    return {p: md5_of(p) for p in files_under(*roots)}


def write_seg(source: Path, dest: Path) -> str:
    """A one-segment highdicom SEG (Tissue/Liver, MANUAL) over `source`; returns its SOP UID."""
    image = pydicom.dcmread(source)
    mask = np.zeros((1, image.Rows, image.Columns), dtype=bool)
    mask[0, 10:20, 10:20] = True
    segment = hd.seg.SegmentDescription(
        segment_number=1, segment_label="liver", segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Liver,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    seg = hd.seg.Segmentation(
        source_images=[image], pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[segment],
        series_instance_uid=hd.UID(), series_number=90, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="Imaging Commons tests", manufacturer_model_name="test",
        software_versions="0", device_serial_number="0")
    seg.save_as(dest)
    return seg.SOPInstanceUID


def write_measurement_sr(source: Path, dest: Path, diameter_mm: float) -> str:
    """A TID 1500 measurement report (one lesion diameter) on `source`; returns its SOP UID."""
    image = pydicom.dcmread(source)
    region = hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POINT,
                               graphic_data=np.array([[5.0, 5.0]]),
                               source_image=hd.sr.SourceImageForRegion.from_source_image(image))
    group = hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="lesion 1"),
        referenced_region=region,
        measurements=[hd.sr.Measurement(name=codes.SCT.Diameter, value=diameter_mm,
                                        unit=codes.UCUM.Millimeter)])
    reader = hd.sr.PersonObserverIdentifyingAttributes(name="Test^Reader")
    observer = hd.sr.ObserverContext(observer_type=codes.DCM.Person,
                                     observer_identifying_attributes=reader)
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_person_context=observer),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion, imaging_measurements=[group])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[image], content=report, series_instance_uid=hd.UID(), series_number=91,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="Imaging Commons tests")
    sr.save_as(dest)
    return sr.SOPInstanceUID


@pytest.fixture(scope="module")
def extras(tmp_path_factory) -> dict[str, Path | str]:
    """Files ingested next to pydicom's samples: two cut copies of CT_small, a text file, and a
    SEG and an SR built with highdicom."""
    d = tmp_path_factory.mktemp("extras")
    ct = (SAMPLES / "CT_small.dcm").read_bytes()
    (d / "cut_in_pixels.dcm").write_bytes(ct[: len(ct) // 2])
    (d / "cut_in_header.dcm").write_bytes(ct[:1000])  # inside element (0010,1002)
    (d / "notes.txt").write_text("not a DICOM file\n")
    return {
        "dir": d,
        "corrupt": [d / "cut_in_pixels.dcm", d / "cut_in_header.dcm"],
        "seg_uid": write_seg(SAMPLES / "CT_small.dcm", d / "seg.dcm"),
        "sr_uid": write_measurement_sr(SAMPLES / "CT_small.dcm", d / "sr.dcm", 12.5),
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, extras):
    """A fresh archive with pydicom's samples and the extras ingested and published (v1)."""
    commons = Commons(Archive(tmp_path_factory.mktemp("ingested")))
    report = ingest(commons.catalog, [SAMPLES, extras["dir"]], "pydicom_samples")
    assert publish(commons.catalog) == 1
    inputs = files_under(SAMPLES, extras["dir"])
    known_corrupt = PYDICOM_TRUNCATED | set(extras["corrupt"])
    sops = {p: sop_uid_of(p) for p in inputs}
    return {"commons": commons, "report": report, "inputs": inputs,
            "expected_skipped": {p for p in inputs if sops[p] is None} | known_corrupt,
            "readable_sops": {p: uid for p, uid in sops.items()
                              if uid is not None and p not in known_corrupt}}


# ----- ingest -------------------------------------------------------------------------------
def test_ingest_writes_one_row_per_distinct_sop_instance(ingested):
    commons = ingested["commons"]
    expected = set(ingested["readable_sops"].values())
    got = [r[0] for r in query(commons, f"SELECT SOPInstanceUID FROM {items(commons, 1)}")]
    assert len(got) == len(expected) > 100
    assert set(got) == expected


def test_ingest_reports_and_skips_every_non_dicom_or_corrupt_file(ingested, extras):
    skipped = {Path(path): reason for path, reason in ingested["report"].skipped}
    assert set(skipped) == ingested["expected_skipped"]
    assert all(reason.strip() for reason in skipped.values())
    for corrupt in [*extras["corrupt"], *PYDICOM_TRUNCATED]:
        assert any(w in skipped[corrupt].lower() for w in ("truncat", "corrupt")), skipped[corrupt]
    assert "not a dicom file" in skipped[extras["dir"] / "notes.txt"].lower()


def test_stored_blobs_match_md5_size_and_layout(ingested):
    commons = ingested["commons"]
    blob_dir = commons.archive.blob_dir
    source_md5s: dict[str, set[str]] = {}
    for path, sop in ingested["readable_sops"].items():
        source_md5s.setdefault(sop, set()).add(md5_of(path))
    rows = query(commons, f"""SELECT SOPInstanceUID, crdc_series_uuid, crdc_instance_uuid,
                                     blob_key, gcs_url, instance_md5, instance_size
                              FROM {items(commons, 1)}""")
    for sop, series_uuid, instance_uuid, blob_key, url, md5, size in rows:
        assert str(uuid.UUID(series_uuid)) == series_uuid
        assert str(uuid.UUID(instance_uuid)) == instance_uuid
        assert blob_key == f"{series_uuid}/{instance_uuid}.dcm"
        stored = blob_dir / series_uuid / f"{instance_uuid}.dcm"
        assert url == stored.as_uri()
        assert md5_of(stored) == md5
        assert stored.stat().st_size == size
        assert md5 in source_md5s[sop]  # the stored bytes are one of the files bearing that UID


def test_crdc_uuids_follow_the_dicom_uids_one_to_one(ingested):
    commons = ingested["commons"]
    for uid_col, uuid_col in (("StudyInstanceUID", "crdc_study_uuid"),
                              ("SeriesInstanceUID", "crdc_series_uuid")):
        pairs = query(commons, f"SELECT DISTINCT {uid_col}, {uuid_col} FROM {items(commons, 1)}")
        assert len({u for u, _ in pairs}) == len({c for _, c in pairs}) == len(pairs)


def test_instance_rows_carry_the_dicom_metadata_columns(ingested):
    commons = ingested["commons"]
    cur = commons.catalog.connection().execute(f"SELECT * FROM {items(commons, 1)} LIMIT 0")
    columns = {d[0] for d in cur.description}
    assert set(DICOM_METADATA_COLUMNS) | {"instance_md5", "instance_size", "TransferSyntaxUID",
                                          "InstanceNumber", "gcs_url"} <= columns
    by_md5 = {md5_of(p): p for p in ingested["readable_sops"]}
    checked = 0
    for row in query(commons, f"""SELECT instance_md5, SOPClassUID, Modality, TransferSyntaxUID,
                                         InstanceNumber, level FROM {items(commons, 1)}"""):
        ds = pydicom.dcmread(by_md5[row[0]], stop_before_pixels=True, force=True)
        syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        number = ds.get("InstanceNumber")
        assert row[1:] == (ds.SOPClassUID, ds.get("Modality") or None, syntax,
                           None if number in (None, "") else int(number), "instance")
        checked += 1
    assert checked > 100


def test_seg_and_sr_fill_derived_columns(ingested, extras):
    commons = ingested["commons"]
    seg = row_of(commons, 1, extras["seg_uid"])
    assert (seg["Modality"], seg["SegmentNumber"], seg["SegmentedPropertyCategoryCodeSequence"],
            seg["SegmentedPropertyTypeCodeSequence"], seg["SegmentAlgorithmType"]) == \
        ("SEG", "1", "Tissue", "Liver", "MANUAL")
    sr = row_of(commons, 1, extras["sr_uid"])
    assert (sr["Modality"], sr["Diameter"]) == ("SR", 12.5)


def test_reingest_is_idempotent(small_archive):
    commons = Commons(small_archive)
    before = all_rows(commons, 1)
    blobs_before = files_under(small_archive.blob_dir)
    report = ingest(commons.catalog, [SAMPLES], "pydicom_samples")
    assert (report.ingested, report.unchanged) == (0, len(before))
    assert commons.catalog.stage() == {}  # nothing changed: nothing to publish
    with pytest.raises(Conflict, match="Nothing is staged"):
        publish(commons.catalog)
    assert [v.version for v in commons.catalog.versions()] == [1]
    assert all_rows(commons, 1) == before
    assert files_under(small_archive.blob_dir) == blobs_before


# ----- staging, publishing, immutability ----------------------------------------------------
def test_staged_ingest_is_invisible_until_published(small_archive, extras):
    counts = published_counts(small_archive)
    ingest(Commons(small_archive).catalog, [extras["dir"] / "seg.dcm"], "staged_only")
    reopened = Commons(Archive(small_archive.root))
    assert published_counts(small_archive) == counts == {1: counts[1]}
    assert reopened.catalog.active_version() == 1
    assert not query(reopened, f"SELECT 1 FROM {items(reopened, 1)} WHERE SOPInstanceUID = ?",
                     [extras["seg_uid"]])


def test_publish_adds_an_active_version_and_keeps_the_old_rows(small_archive, extras):
    commons = Commons(small_archive)
    old_rows = all_rows(commons, 1)
    ingest(commons.catalog, [extras["dir"] / "seg.dcm"], "new_collection")
    assert publish(commons.catalog) == 2
    reopened = Commons(Archive(small_archive.root))
    assert [(v.version, v.active) for v in reopened.catalog.versions()] == [(1, False), (2, True)]
    assert all_rows(reopened, 1) == old_rows
    assert len(all_rows(reopened, 2)) == len(old_rows) + 1
    assert row_of(reopened, 2, extras["seg_uid"])["collection_id"] == "new_collection"


def test_published_files_are_never_modified_by_later_publishes(small_archive, extras, tmp_path):
    commons = Commons(small_archive)
    catalog = commons.catalog
    published = (catalog.segments_dir, catalog.versions_dir, small_archive.blob_dir)
    before = tree_hashes(*published)
    ingest(catalog, [extras["dir"] / "seg.dcm"], "later")
    publish(catalog)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,score\n1CT1,3\n")
    stage_clinical(catalog, clinical, "pydicom_samples", "scores")
    publish(catalog)
    after = tree_hashes(*published)
    assert {p: after.get(p) for p in before} == before
    assert len(after) > len(before)  # the later publishes did write files of their own
    with pytest.raises(Conflict, match="immutable"):
        catalog.publish_version({"items": []}, number=1)


def test_crash_right_before_the_publish_flip_leaves_the_previous_version(small_archive, extras,
                                                                          monkeypatch):
    class InjectedCrash(Exception):
        pass

    real_write = catalog_store.write_json_atomic

    def crash_on_flip(path, data):
        if Path(path).name == "published.json":
            raise InjectedCrash(path)
        real_write(path, data)

    commons = Commons(small_archive)
    old_rows = all_rows(commons, 1)
    ingest(commons.catalog, [extras["dir"] / "seg.dcm"], "crash_test")
    monkeypatch.setattr(catalog_store, "write_json_atomic", crash_on_flip)
    with pytest.raises(InjectedCrash):
        publish(commons.catalog)
    monkeypatch.undo()

    reopened = Commons(Archive(small_archive.root))
    assert [v.version for v in reopened.catalog.versions()] == [1]
    assert reopened.catalog.active_version() == 1
    assert all_rows(reopened, 1) == old_rows
    with pytest.raises(InvalidRequest, match="Unknown data version 2"):
        reopened.catalog.version(2)
    # the stage survived the crash: publishing again completes the job
    assert publish(reopened.catalog) == 2
    assert reopened.catalog.active_version() == 2
    assert row_of(reopened, 2, extras["seg_uid"])["collection_id"] == "crash_test"
    assert all_rows(reopened, 1) == old_rows


def _cli(archive: Archive, *args: str) -> list[str]:
    return [sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive.root), *args]


def _start_working(command: list[str], env: dict) -> tuple[subprocess.Popen, float]:
    """Start the CLI and return once its progress bar appears, i.e. once the imports are
    done and the files are being read, so kills land in the work rather than at start-up."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stderr.read(1)
    return proc, time.monotonic()


@pytest.mark.slow
def test_killing_ingest_at_any_moment_leaves_published_versions_intact(small_archive, extras):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")]))}
    command = _cli(small_archive, "ingest", str(SAMPLES), str(extras["dir"]),
                   "--collection", "killed", "--publish")
    proc, started = _start_working(command, env)
    _, stderr = proc.communicate()
    assert proc.returncode == 0, stderr
    work_s = time.monotonic() - started
    seen = published_counts(small_archive)
    assert list(seen) == [1, 2]

    killed = 0
    for fraction in (0.1, 0.3, 0.5, 0.7, 0.9):  # reading files, staging, publishing, exiting
        proc, started = _start_working(command, env)
        time.sleep(max(0.0, started + work_s * fraction - time.monotonic()))
        proc.kill()
        killed += proc.wait() == -signal.SIGKILL
        proc.stderr.close()
        now = published_counts(small_archive)
        assert {v: now.get(v) for v in seen} == seen, f"after a kill at {fraction:.0%} of a run"
        seen = now
    assert killed >= 3, "the kills landed after the runs had finished: nothing was tested"

    final = subprocess.run(_cli(small_archive, "ingest", str(extras["dir"] / "sr.dcm"),
                                "--collection", "after_kills", "--publish", "--no-progress"),
                           env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    reopened = Commons(Archive(small_archive.root))
    newest = reopened.catalog.active_version()
    assert newest == max(seen) + 1
    assert row_of(reopened, newest, extras["sr_uid"])["collection_id"] == "after_kills"


def test_restricted_flag_is_recorded_and_hides_the_collection(small_archive, extras):
    commons = Commons(small_archive)
    ingest(commons.catalog, [extras["dir"] / "seg.dcm"], "Private Trial", restricted=True)
    version = publish(commons.catalog)
    assert commons.catalog.restricted_collections(version) == {"private_trial"}
    state = {"kind": "query", "version": version, "filters": {}, "fields": ["collection_id"],
             "offset": 0}
    admin = commons.accounts.add_user("curator", "pw-secret-1", is_admin=True)
    assert {r["collection_id"] for r in page_rows(commons, state, None)} == \
        {"pydicom_samples"}
    assert {r["collection_id"] for r in page_rows(commons, state, admin)} == \
        {"pydicom_samples", "private_trial"}
    # more files without --restricted: the collection stays restricted
    ingest(commons.catalog, [extras["dir"] / "sr.dcm"], "Private Trial")
    assert commons.catalog.restricted_collections(publish(commons.catalog)) == {"private_trial"}


# ----- clinical tables and the attribute registry -------------------------------------------
def test_clinical_columns_become_typed_filterable_attributes(small_archive, tmp_path):
    commons = Commons(small_archive)
    patients = [r[0] for r in query(commons, f"""
        SELECT PatientID FROM {items(commons, 1)} WHERE PatientID IS NOT NULL
        GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 4""")]
    ages = dict(zip(patients, (64, 45, 71, 30)))
    smokers = dict(zip(patients, ("yes", "no", "no", "yes")))
    csv = tmp_path / "registry.csv"
    csv.write_text("PatientID,age_at_diagnosis,smoker\n" + "".join(
        f"{p},{ages[p]},{smokers[p]}\n" for p in patients) + "NOT_IN_ARCHIVE,80,yes\n")
    stage_clinical(commons.catalog, csv, "pydicom_samples", "tumour_registry")
    assert "tumour_registry" not in {a.source.clinical for a in commons.attributes(1)}
    version = publish(commons.catalog)

    registry = {a.name: a.data_type for a in commons.attributes(version)
                if a.source.clinical == "tumour_registry"}
    assert registry["age_at_diagnosis"] == registry["age_at_diagnosis_gte"] == CONTINUOUS_NUMERIC
    assert registry["smoker"] == CATEGORICAL

    def patients_where(filters: dict) -> set[str]:
        state = {"kind": "query", "version": version, "filters": filters,
                 "fields": ["PatientID"], "offset": 0}
        return {r["PatientID"] for r in page_rows(commons, state, None)}

    assert patients_where({"age_at_diagnosis_gte": [60]}) == {p for p in patients if ages[p] >= 60}
    assert patients_where({"smoker": ["yes"]}) == {p for p in patients if smokers[p] == "yes"}
    assert patients_where({"age_at_diagnosis_lt": [60], "smoker": ["yes"]}) == \
        {p for p in patients if ages[p] < 60 and smokers[p] == "yes"}


# ----- the IDC import -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def idc(demo_archive_dir) -> Commons:
    return Commons(Archive(demo_archive_dir))


@pytest.fixture(scope="module")
def parquet():
    """A DuckDB connection of the test's own, with views over idc-index-data's Parquet files."""
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    for name in ("idc_index", "prior_versions_index", "collections_index",
                 "analysis_results_index", "version_metadata_index"):
        con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{IDC_DIR / name}.parquet')")
    return con


def test_idc_import_counts_match_the_parquet(idc, parquet):
    def count(table: str) -> int:
        return parquet.execute(f"SELECT count(*) FROM {table}").fetchone()[0]

    series = query(idc, f"SELECT count(*), count(DISTINCT crdc_series_uuid) FROM {items(idc, 25)}")
    assert series == [(count("idc_index"), count("idc_index"))]
    assert len(query(idc, f"SELECT * FROM {idc.catalog.relation(25, 'collections')}")) == \
        count("collections_index")
    assert len(idc.analysis_results(25)) == count("analysis_results_index")
    releases = [(v.version, v.date_active) for v in idc.catalog.versions()
                if v.manifest["source"] == "idc-index-data"]
    assert releases == [(n, str(ts)[:10]) for n, ts in parquet.execute(
        "SELECT idc_version, version_timestamp FROM version_metadata_index ORDER BY 1").fetchall()]


def test_idc_series_point_at_the_public_buckets_and_have_no_instance_rows(idc, parquet):
    bucket = "regexp_extract(series_aws_url, '^s3://[^/]+/')"
    expected = dict(parquet.execute(f"SELECT {bucket}, count(*) FROM idc_index GROUP BY 1"
                                    ).fetchall())
    got = dict(query(idc, f"""
        SELECT {bucket.replace('series_aws_url', 'gcs_url')}, count(*) FROM {items(idc, 25)}
        WHERE gcs_url = regexp_extract(gcs_url, '^s3://idc-open-data[a-z-]*/') ||
                        crdc_series_uuid || '/*'
        GROUP BY 1"""))
    assert got == expected
    assert expected["s3://idc-open-data/"] > 1_000_000
    for version in (20, 25):
        assert query(idc, f"""SELECT count(*) FILTER (WHERE level <> 'series'),
                                     count(SOPInstanceUID), count(crdc_instance_uuid)
                              FROM {items(idc, version)}""") == [(0, 0, 0)]


def test_version_20_series_differ_from_25_as_prior_versions_index_says(idc, parquet):
    held_in = """SELECT crdc_series_uuid FROM idc_index WHERE series_revised_idc_version <= ?
                 UNION SELECT crdc_series_uuid FROM prior_versions_index
                 WHERE min_idc_version <= ? AND ? <= max_idc_version"""

    def expected_difference(a: int, b: int) -> set[str]:
        sql = f"({held_in}) EXCEPT ({held_in})"
        return {r[0] for r in parquet.execute(sql, [a, a, a, b, b, b]).fetchall()}

    def catalogue_difference(a: int, b: int) -> set[str]:
        return {r[0] for r in query(idc, f"SELECT crdc_series_uuid FROM {items(idc, a)} EXCEPT "
                                         f"SELECT crdc_series_uuid FROM {items(idc, b)}")}

    added, removed = expected_difference(25, 20), expected_difference(20, 25)
    assert added and removed
    assert catalogue_difference(25, 20) == added
    assert catalogue_difference(20, 25) == removed


# ----- accounts on PostgreSQL ---------------------------------------------------------------
@pytest.fixture
def postgres_url():
    yield from postgres_schema_url()


def test_postgresql_accounts_url_keeps_users_and_cohorts(small_archive, postgres_url):
    archive = Archive(small_archive.root, accounts_url=postgres_url)
    accounts = Commons(archive).accounts
    try:
        owner = accounts.add_user("pg_owner", "pw-secret-1", email="owner@example.org")
        cohort = accounts.create_cohort(owner, "CT in v1", "pydicom CTs", {"Modality": ["CT"]}, 1)
    finally:
        accounts.close()
    assert not (small_archive.root / "accounts.sqlite").exists()

    reopened = Commons(Archive(small_archive.root, accounts_url=postgres_url)).accounts
    try:
        user = reopened.get_user("pg_owner")
        assert (user.id, user.email) == (owner.id, "owner@example.org")
        got, role = reopened.get_cohort(user, cohort.cohort_id)
        assert (got.name, got.filters, got.version, role) == \
            ("CT in v1", {"Modality": ["CT"]}, 1, OWNER)
    finally:
        reopened.close()


def test_storage_url_prefix_is_configurable(tmp_path, monkeypatch):
    """An archive whose blob folder is synced to a bucket gives that bucket's URLs in manifests,
    never the server's own file paths."""
    monkeypatch.setenv("IMAGING_COMMONS_BLOB_URL", "s3://trial-bucket/")
    commons = Commons(Archive(tmp_path / "a"))
    ingest(commons.catalog, [pydicom_sample_dir() / "CT_small.dcm"], "bucketed")
    publish(commons.catalog)
    (url, key), = query(commons, f"SELECT gcs_url, blob_key FROM {items(commons, 1)}")
    assert url == f"s3://trial-bucket/{key}"


def test_parallel_ingest_stages_exactly_what_a_serial_one_does(tmp_path):
    """Large ingests fork worker processes for the per-file work; the rows must not change."""
    def staged(workers: int):
        commons = Commons(Archive(tmp_path / f"w{workers}"))
        report = ingest(commons.catalog, [pydicom_sample_dir()], "samples", workers=workers)
        publish(commons.catalog)
        rows = query(commons, f"SELECT * EXCLUDE (gcs_url) FROM {items(commons, 1)} "
                              "ORDER BY SOPInstanceUID")
        return report, rows

    serial_report, serial_rows = staged(1)
    parallel_report, parallel_rows = staged(2)
    assert parallel_rows == serial_rows and len(serial_rows) > 100
    assert parallel_report.skipped == serial_report.skipped


def test_files_too_large_for_memory_are_streamed_to_the_same_rows(tmp_path, monkeypatch):
    """Files above ingest's in-memory limit are parsed from disk and copied in chunks; the
    rows (hashes, sizes, CRCs, values) and the reasons for skips must not change."""
    from imaging_commons.core.ingest import blobs

    def staged(name: str):
        commons = Commons(Archive(tmp_path / name))
        report = ingest(commons.catalog, [pydicom_sample_dir()], "samples", workers=1)
        publish(commons.catalog)
        rows = query(commons, f"SELECT * EXCLUDE (gcs_url) FROM {items(commons, 1)} "
                              "ORDER BY SOPInstanceUID")
        blobs = {p.relative_to(commons.archive.blob_dir): md5_of(p)
                 for p in commons.archive.blob_dir.rglob("*.dcm")}
        return report, rows, blobs

    in_memory = staged("memory")
    monkeypatch.setattr(blobs, "IN_MEMORY_LIMIT", 0)  # every file streamed
    streamed = staged("streamed")
    assert streamed[1] == in_memory[1] and len(in_memory[1]) > 100
    assert streamed[2] == in_memory[2]
    assert streamed[0].skipped == in_memory[0].skipped


def test_stored_files_carry_their_crc32(ingested):
    """Zip downloads put the catalogue's CRC-32 in each member header, so it must be the
    stored bytes' own."""
    import zlib

    commons = ingested["commons"]
    rows = query(commons, f"SELECT blob_key, instance_crc32 FROM {items(commons, 1)}")
    assert rows and all(zlib.crc32((commons.archive.blob_dir / key).read_bytes()) == crc
                        for key, crc in rows)


def test_a_publish_stopped_after_the_flip_is_not_published_twice(tmp_path, monkeypatch):
    """Between the atomic flip and clearing the stage, a crash leaves a stage that is already
    a version: publishing again must not make a duplicate version of it."""
    commons = Commons(Archive(tmp_path / "a"))
    ingest(commons.catalog, [pydicom_sample_dir() / "CT_small.dcm"], "once")
    monkeypatch.setattr(commons.catalog, "clear_stage", lambda: None)  # the crash
    assert publish(commons.catalog) == 1
    monkeypatch.undo()
    assert publish(commons.catalog) == 1
    assert [v.version for v in commons.catalog.versions()] == [1]
    with pytest.raises(Conflict):
        publish(commons.catalog)  # the stage is gone now


def test_rows_staged_by_a_crashed_ingest_never_publish_without_their_collection(tmp_path,
                                                                               monkeypatch):
    """A crash after the staged rows are written but before the stage file records them (and
    their collection's restricted flag) must not let those rows out with a later publish."""
    commons = Commons(Archive(tmp_path / "a"))
    catalog = commons.catalog

    def crash(stage):
        raise RuntimeError("killed")

    monkeypatch.setattr(catalog, "write_stage", crash)
    with pytest.raises(RuntimeError):
        ingest(catalog, [pydicom_sample_dir() / "MR_small.dcm"], "secret", restricted=True)
    monkeypatch.undo()
    ingest(catalog, [pydicom_sample_dir() / "CT_small.dcm"], "open")
    publish(catalog)
    assert query(commons, f"SELECT DISTINCT collection_id FROM {items(commons, 1)}") == [("open",)]
