"""The archive grows by appending: each publish adds a segment of its own rows (and a tombstone
file for the instances it replaces), never rewriting a published file; compaction merges the
small segments without changing what any version returns, whenever it is killed; the engine
answers from disk within a memory limit far below the data."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time

import duckdb
import idc_index_data
import orjson
import pyarrow.parquet as pq
import pytest
import requests

from conftest import SAMPLES, LiveServer, copy_archive
from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.config import Archive
from imaging_commons.core import keyset
from imaging_commons.core.catalog import COMPACTED_PREFIX, INGESTED_PREFIX, ITEM_COLUMNS
from imaging_commons.core.compaction import compact
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish
from test_archive import SRC_DIR, _cli, files_under, query, sop_uid_of, tree_hashes

# every item column but version_max, which compaction closes on the rows a later version
# retired (their tombstones are then folded in); no API returns it
VALUES = ", ".join(f'"{c}"' for c in ITEM_COLUMNS if c != "version_max")


def sample_batches(count: int) -> list[list]:
    """pydicom's readable samples, one file per SOPInstanceUID, dealt into `count` batches."""
    by_sop = {}
    for path in files_under(SAMPLES):
        uid = sop_uid_of(path)
        if uid is not None and "truncated" not in path.name:
            by_sop.setdefault(uid, path)
    files = sorted(by_sop.values())
    return [files[i::count] for i in range(count)]


def every_version(archive: Archive) -> dict[int, list[tuple]]:
    """Every version's rows, read by a fresh Commons, as clients see them."""
    commons = Commons(Archive(archive.root))
    return {v.version: query(commons, f"SELECT {VALUES} FROM "
                                      f"{commons.catalog.relation(v.version, 'items')} ORDER BY ALL")
            for v in commons.catalog.versions()}


def collections_of(commons: Commons, version: int) -> dict[str, list[str]]:
    rows = query(commons, f"SELECT SOPInstanceUID, collection_id FROM "
                          f"{commons.catalog.relation(version, 'items')}")
    out: dict[str, list[str]] = {}
    for sop, collection in rows:
        out.setdefault(sop, []).append(collection)
    return out


@pytest.fixture
def grown(tmp_path):
    """An archive grown by five publishes: three batches of pydicom's samples (v1-v3), five
    of them moved to another collection (v4), two of those moved back (v5)."""
    archive = Archive(tmp_path / "archive", compact_every_s=0)
    catalog = Commons(archive).catalog
    batches = sample_batches(3)
    for batch in batches:
        ingest(catalog, batch, "samples")
        publish(catalog)
    moved = batches[0][:5]
    ingest(catalog, moved, "elsewhere")
    publish(catalog)
    ingest(catalog, moved[:2], "samples")
    publish(catalog)
    return archive, batches, moved


def manifests(archive: Archive) -> dict[int, dict]:
    return {v.version: v.manifest for v in Commons(Archive(archive.root)).catalog.versions()}


def rows_in(archive: Archive, file_name: str) -> int:
    return pq.ParquetFile(archive.catalog_dir / "segments" / file_name).metadata.num_rows


def test_each_publish_appends_a_segment_of_its_own_rows_and_rewrites_nothing(grown):
    archive, batches, moved = grown
    staged = [len(b) for b in batches] + [5, 2]
    found = manifests(archive)
    for number in range(2, 6):
        before, after = found[number - 1]["items"], found[number]["items"]
        assert after[:-1] == before and after[-1].startswith(INGESTED_PREFIX)
        assert rows_in(archive, after[-1]) == staged[number - 1]
    # v4 retired the five moved rows, v5 the two moved back
    assert [len(found[n]["retired"]) for n in range(1, 6)] == [0, 0, 0, 1, 2]
    for number, count in ((4, 5), (5, 2)):
        assert rows_in(archive, found[number]["retired"][-1]) == count

    catalog = Commons(archive).catalog
    published = tree_hashes(catalog.segments_dir, catalog.versions_dir)
    ingest(catalog, [batches[1][0]], "third")  # one instance moves: the publish reads little
    publish(catalog)
    after = tree_hashes(catalog.segments_dir, catalog.versions_dir)
    assert {p: after.get(p) for p in published} == published


def test_a_moved_instance_leaves_older_versions_as_they_were(grown):
    archive, batches, moved = grown
    commons = Commons(Archive(archive.root))
    moved_sops = [sop_uid_of(p) for p in moved]
    all_sops = {sop_uid_of(p) for b in batches for p in b}
    expected = {
        3: {sop: ["samples"] for sop in all_sops},
        4: {sop: ["elsewhere" if sop in moved_sops else "samples"] for sop in all_sops},
        5: {sop: ["elsewhere" if sop in moved_sops[2:] else "samples"] for sop in all_sops},
    }
    for version, collections in expected.items():
        assert collections_of(commons, version) == collections  # one row per instance
    for version in (1, 2):
        assert set(collections_of(commons, version)) < all_sops


@pytest.mark.parametrize("kept", [True, False])
def test_moves_staged_over_several_runs_retire_the_rows_they_replace(grown, kept):
    """Runs of one stage move instances back and forth; publish retires the previous version's
    row of each from what the runs looked up (or, for a stage that kept no lookups, as an
    earlier release wrote them, from the version itself): one row per instance either way."""
    archive, batches, moved = grown
    catalog = Commons(archive).catalog
    moving = batches[1][:4]
    ingest(catalog, moving, "elsewhere")
    ingest(catalog, moving[:2], "third")  # two of them move on, in the same stage
    ingest(catalog, moved[2:4], "samples")  # two moved in v4 come back
    stage = catalog.stage()
    assert (stage["published"]["version"] is not None) and stage["published"]["file"]
    if not kept:
        (catalog.staging_dir / stage.pop("published")["file"]).unlink()
        catalog.write_stage(stage)
    version = publish(catalog)
    sops = {sop_uid_of(p): p for b in batches for p in b}
    where = {sop: "samples" for sop in sops}
    where.update({sop_uid_of(p): "elsewhere" for p in moved[4:]})
    where.update({sop_uid_of(p): "elsewhere" for p in moving[2:]})
    where.update({sop_uid_of(p): "third" for p in moving[:2]})
    assert collections_of(Commons(Archive(archive.root)), version) == {
        sop: [collection] for sop, collection in where.items()}


def test_reingest_across_many_batches_adds_nothing(grown):
    archive, batches, moved = grown
    catalog = Commons(archive).catalog
    before = every_version(archive)
    for files, collection in ((batches[1], "samples"), (batches[2], "samples"),
                              (moved[2:], "elsewhere"), (moved[:2], "samples")):
        report = ingest(catalog, files, collection)
        assert (report.ingested, report.unchanged) == (0, len(files))
        assert catalog.stage() == {}
    # twice in one stage: the second run changes nothing the first staged
    first = ingest(catalog, batches[0][5:], "third")
    stage = catalog.stage()
    second = ingest(catalog, batches[0][5:], "third")
    assert (first.ingested, second.ingested) == (len(batches[0]) - 5, 0)
    assert catalog.stage() == stage
    assert every_version(archive) == before


def test_compaction_merges_the_segments_and_every_version_returns_the_same_rows(grown):
    archive, batches, moved = grown
    before = every_version(archive)
    reader = Commons(Archive(archive.root))  # a server's core, its views made before
    moved_sop = sop_uid_of(moved[4])
    view = reader.catalog.relation(5, "items")
    assert query(reader, f"SELECT collection_id FROM {view} WHERE SOPInstanceUID = ?",
                 [moved_sop]) == [("elsewhere",)]

    done = compact(Commons(archive).catalog, min_segments=2, grace_s=0)
    assert len(done.merged) == 5 and done.into.startswith(COMPACTED_PREFIX)
    assert done.rows == sum(len(b) for b in batches) + 5 + 2
    found = manifests(archive)
    for manifest in found.values():
        assert manifest["items"] == [done.into]
        assert manifest["retired"] == []  # folded into the merged rows' version ranges
    segments = set(os.listdir(archive.catalog_dir / "segments"))
    assert not any(name.startswith(INGESTED_PREFIX) for name in segments)  # grace 0: removed
    assert every_version(archive) == before
    # the core that read the old files reads the new ones: same answers
    view = reader.catalog.relation(5, "items")
    assert query(reader, f"SELECT collection_id FROM {view} WHERE SOPInstanceUID = ?",
                 [moved_sop]) == [("elsewhere",)]
    assert query(reader, f"SELECT count(*) FROM {view}")[0][0] == len(before[5])

    # the archive goes on growing on top of the merged segment
    catalog = Commons(archive).catalog
    ingest(catalog, moved[2:3], "samples")
    assert publish(catalog) == 6
    now = every_version(archive)
    assert {v: now[v] for v in before} == before
    assert collections_of(Commons(archive), 6)[sop_uid_of(moved[2])] == ["samples"]


def test_each_version_counts_its_instances_per_collection(grown):
    """What dicomMetadata's totalFound is summed from: counted by each publish from its batch
    (moves between collections included), and by a compaction for a version an earlier
    release published without them."""
    archive, _, _ = grown
    commons = Commons(archive)

    def counted(version: int) -> dict[str, int]:
        return dict(query(commons, f"SELECT collection_id, count(*) FROM "
                                   f"{commons.catalog.relation(version, 'items')} "
                                   "WHERE level = 'instance' GROUP BY 1"))

    versions = [v.version for v in commons.catalog.versions()]
    assert len(versions) == 5 and counted(4)["elsewhere"] == 5
    for version in versions:
        assert commons.catalog.instance_counts(version) == counted(version), version
    path = commons.catalog.versions_dir / "4.json"
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "instances"}))
    assert Commons(archive).catalog.instance_counts(4) is None
    compact(Commons(archive).catalog, min_segments=99)
    assert Commons(archive).catalog.instance_counts(4) == counted(4)


def test_compaction_keeps_superseded_files_for_readers_until_the_grace_ends(grown):
    archive, _, _ = grown
    catalog = Commons(archive).catalog
    old = catalog.ingested_segments()
    done = compact(catalog, min_segments=2, grace_s=3600)
    segments = set(os.listdir(catalog.segments_dir))
    assert set(old) <= segments and done.into in segments  # kept for the grace period
    assert compact(catalog, min_segments=2, grace_s=3600).deleted == []
    later = compact(catalog, min_segments=2, grace_s=0)
    assert later.into is None and set(old) <= set(later.deleted)


@pytest.mark.slow
def test_killing_compaction_at_any_moment_leaves_every_version_intact(grown):
    archive, _, _ = grown
    before = every_version(archive)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")]))}
    command = _cli(archive, "compact", "--grace", "0")
    for _ in range(2):  # (the second run: imports and files cached, as for the runs below)
        started = time.monotonic()
        probe = subprocess.run(command + ["--min-segments", "99"], env=env, capture_output=True)
        assert probe.returncode == 0, probe.stderr
        startup_s = time.monotonic() - started  # a run that merges nothing: the start-up alone

    killed = 0
    for delay in (0.2, 0.4, 0.6, 0.8, 0.95, 1.1):
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(startup_s * delay)
        proc.kill()
        killed += proc.wait() == -signal.SIGKILL
        assert every_version(archive) == before, f"after a kill at {delay} x the start-up"
    assert killed >= 3, "the kills landed after the runs had finished: nothing was tested"
    final = subprocess.run(command, env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr
    assert every_version(archive) == before
    names = set(os.listdir(archive.catalog_dir / "segments"))
    assert not any(n.startswith(INGESTED_PREFIX) or n.startswith(".") for n in names)


def test_two_compactions_take_turns(grown):
    archive, _, _ = grown
    first = Commons(archive).catalog
    with open(first.dir / "compaction.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(Exception, match="another compaction"):
            compact(Commons(archive).catalog, min_segments=2)


def test_an_engine_memory_limit_far_below_the_data_answers_the_whole_catalogue(
        demo_archive_dir):
    """The IDC catalogue's item rows take ~1.1 GB in memory, and this query's sorted rows
    ~100 MB; the engine gets 160 MB (DuckDB's floor for two threads here) and spills."""
    index = idc_index_data.IDC_INDEX_PARQUET_FILEPATH
    idc_urls = duckdb.sql(f"SELECT count(DISTINCT series_aws_url) FROM read_parquet('{index}')"
                          ).fetchone()[0]
    with LiveServer(Archive(demo_archive_dir, memory_limit="160MB", compact_every_s=0)) as live:
        assert live.commons.catalog.connection().execute(
            "SELECT current_setting('memory_limit')").fetchone()[0] in ("152.5 MiB", "160.0 MB")
        local = query(live.commons, "SELECT count(DISTINCT gcs_url) FROM "
                                    f"{live.commons.catalog.relation(26, 'items')} "
                                    "WHERE level = 'instance'")[0][0]
        r = requests.post(f"{live.url}/v1/cohorts/preview/manifest",
                          params={"GCS_URL": True, "page_size": 1000},
                          json={"name": "all", "filters": {"collection_id": ["%"]}}, timeout=300)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["manifest"]["totalFound"] == idc_urls + local
        assert len(body["manifest"]["json_manifest"]) == 1000


# ----- keyset pages -------------------------------------------------------------------------
def dicom_metadata_pages(commons: Commons, version: int, page_size: int) -> list[dict]:
    """Every row of dicomMetadata, page after page, each page's state from the one before."""
    state = {"kind": "dicomMetadata", "version": version, "filters": {}, "fields": [],
             "offset": 0}
    assert commons.page(state, None, 1, None).total == total_instances(commons, version)
    return dicom_metadata_pages_from(commons, state, page_size)


def total_instances(commons: Commons, version: int) -> int:
    hidden = commons.hidden_collections(None, version)
    return sum(1 for _, collections in collections_of(commons, version).items()
               for c in collections if c not in hidden)


def unpaged(commons: Commons, version: int) -> list[dict]:
    """dicomMetadata's rows in one piece, by the materialised-result path (the query with its
    ORDER BY, rendered as every other result is)."""
    compiled = commons.compile_state({"kind": "dicomMetadata", "version": version,
                                      "filters": {}, "fields": []}, None)
    result = commons.results.run(compiled, None)
    return orjson.loads(b"".join(result.json_page(0, 1 << 30)))


@pytest.mark.slow
def test_keyset_pages_put_together_are_the_unpaged_rows(tmp_path, monkeypatch):
    """Over several segments, moved instances, a restricted collection and NULLs in the order
    columns; granules of 4 rows, so that pages start inside segments."""
    monkeypatch.setattr(keyset, "GRANULE_ROWS", 4)
    monkeypatch.setattr(keyset, "PAGE_MAX_ROWS", 50)  # page_size 1000 gets pages of 50
    archive = Archive(tmp_path / "archive", compact_every_s=0)
    catalog = Commons(archive).catalog
    batches = sample_batches(3)
    ingest(catalog, batches[0], "samples")
    ingest(catalog, batches[1][:6], "secret", restricted=True)
    publish(catalog)
    ingest(catalog, batches[1][6:], "samples")
    publish(catalog)
    ingest(catalog, batches[2] + batches[0][:4], "later")  # four of v1's move
    publish(catalog)
    commons = Commons(Archive(archive.root))
    expected = {v: unpaged(commons, v) for v in (1, 2, 3)}
    assert any(row["PatientID"] is None for row in expected[3])  # NULLs in the order
    assert len(expected[3]) > 50
    assert not any(row["collection_id"] == "secret" for row in expected[3])
    for version in (1, 2, 3):
        for size in (2, 7, 1000):
            served = dicom_metadata_pages(commons, version, size)
            assert served == expected[version], size

    # a compaction between two pages: the next page goes on from the key, in the merged file
    state = {"kind": "dicomMetadata", "version": 3, "filters": {}, "fields": [], "offset": 0}
    first = commons.page(state, None, 10, None)
    compact(Commons(archive).catalog, min_segments=2, grace_s=0)
    rest = dicom_metadata_pages_from(commons, first.next_state, 1000)
    assert orjson.loads(b"".join(first.rows_json())) + rest == expected[3]


def dicom_metadata_pages_from(commons: Commons, state: dict | None, page_size: int) -> list:
    rows = []
    while state is not None:
        page = commons.page(state, None, page_size, None)
        rows += orjson.loads(b"".join(page.rows_json()))
        assert page.returned == min(page_size, keyset.PAGE_MAX_ROWS, page.total - page.offset)
        state = page.next_state
    return rows


def result_rows(commons: Commons, state: dict) -> list:
    """A manifest's or query's rows in one piece, by the materialised-result path."""
    result = commons.results.run(commons.compile_state(state, None), None)
    return orjson.loads(b"".join(result.json_page(0, 1 << 30)))


INSTANCE_MANIFEST_FIELDS = [
    ["SOPInstanceUID"],
    ["CRDC_Instance_GUID", "GCS_URL"],  # a key behind the GUID's prefix
    ["GCS_URL", "SOPInstanceUID"],  # URLs of IDC's series and of instances mixed
    ["Patient_ID", "SOPInstanceUID"],  # NULL patients among the instances
    ["Collection_ID", "SeriesInstanceUID", "CRDC_Instance_GUID", "GCS_URL"],
]


@pytest.mark.slow
def test_instance_manifest_pages_put_together_are_the_unpaged_rows(demo_archive_dir, tmp_path,
                                                                   monkeypatch):
    """Instance-level manifests paged by key, from the first instance row on (segments read
    in their copy in the leading key's order, or by a top-k): over IDC series rows (NULL
    instance columns, one row for many series: ties) and ingested instance rows mixed, in
    several segments, one without key orders (as an earlier release wrote it), instances moved
    to another collection, a restricted collection the caller may not see; and after a
    compaction that merges the segments and writes the missing key orders. One archive serves
    every field list and both ways of reading (building it is most of the test's time)."""
    monkeypatch.setattr(keyset, "KEYSET_FROM_ROWS", 0)
    monkeypatch.setattr(keyset, "PAGE_MAX_ROWS", 17)  # page_size 1000 gets pages of 17
    archive = Archive(copy_archive(demo_archive_dir, tmp_path / "archive"), compact_every_s=0)
    catalog = Commons(archive).catalog
    batches = sample_batches(3)
    ingest(catalog, batches[1][:6], "secret", restricted=True)
    publish(catalog)
    ingest(catalog, batches[2], "later")
    publish(catalog)
    for key in keyset.INSTANCE_KEYS:  # the last segment, as an earlier release wrote it
        keyset.key_order_file(catalog.segments_dir / catalog.ingested_segments()[-1], key).unlink()
    ingest(catalog, batches[1][6:] + batches[2][:3], "samples")  # three move to "samples"
    version = publish(catalog)
    filters = {"collection_id": ["rider_breast_mri", "nlm_visible_human_project", "secret",
                                 "samples", "later"]}

    def pages(commons: Commons, state: dict, size: int, expected: list) -> list:
        rows, page_state = [], dict(state)
        while page_state is not None:
            page = commons.page(page_state, None, size, None)
            assert isinstance(page, keyset.KeysetPage) and page.total == len(expected)
            rows += orjson.loads(b"".join(page.rows_json()))
            assert page.returned == min(size, 17, len(expected) - page.offset)
            page_state = page.next_state
        return rows

    def each_manifest(sizes: tuple[int, ...]):
        """For every field list and way of reading: a new server's view and the state, for
        each page size (the first and the widest field lists only also at a tiny one)."""
        for i, fields in enumerate(INSTANCE_MANIFEST_FIELDS):
            state = {"kind": "manifest", "version": version, "filters": filters,
                     "fields": manifest_fields(fields), "offset": 0}
            for read in ("in key order", "by top-k"):
                monkeypatch.setattr(keyset, "KEY_ORDER_FROM",
                                    0 if read == "in key order" else float("inf"))
                commons = Commons(Archive(archive.root, compact_every_s=0))
                for size in sizes:
                    if size >= 17 or i in (0, len(INSTANCE_MANIFEST_FIELDS) - 1):
                        yield (fields, read, size), commons, state

    expected_of: dict[str, list] = {}
    for case, commons, state in each_manifest((3, 1000)):
        fields = case[0]
        assert commons.keyset.pages_instances(commons.compile_state(state, None), version)
        if str(fields) not in expected_of:
            expected_of[str(fields)] = result_rows(commons, state)
        expected = expected_of[str(fields)]
        assert len(expected) > 40 and len({tuple(r.values()) for r in expected}) == len(expected)
        assert any(r.get("SOPInstanceUID", "x") is None or r.get("CRDC_Instance_GUID", "x") is None
                   for r in expected) or fields[0] == "SOPInstanceUID"
        assert not any(r.get("Collection_ID") == "secret" for r in expected)
        assert pages(commons, state, case[2], expected) == expected, case
    assert compact(Commons(archive).catalog, min_segments=2, grace_s=0).into
    for case, merged, state in each_manifest((1000,)):
        assert all(keyset.key_order_file(merged.catalog.segments_dir / segment, key).exists()
                   for segment in merged.catalog.ingested_segments()
                   for key in keyset.INSTANCE_KEYS)
        assert pages(merged, state, 1000, expected_of[str(case[0])]) == \
            expected_of[str(case[0])], case


def test_a_manifest_of_urls_is_paged_by_key_only_where_instances_match(demo_archive_dir,
                                                                       monkeypatch):
    """GCS_URL names an instance in instance rows and a series in IDC's series rows: a
    manifest of URLs matching series alone is materialised, as series-level answers are."""
    monkeypatch.setattr(keyset, "KEYSET_FROM_ROWS", 0)
    commons = Commons(Archive(demo_archive_dir, compact_every_s=0))
    version = commons.catalog.active_version()

    def paged_by_key(collection: str) -> bool:
        state = {"kind": "manifest", "version": version, "fields": manifest_fields(["GCS_URL"]),
                 "offset": 0,
                 "filters": {"collection_id": [collection]}}
        page = commons.page(state, None, 10, None)
        assert page.total > 0
        return isinstance(page, keyset.KeysetPage)

    assert not paged_by_key("RIDER Breast MRI")
    assert paged_by_key("pydicom_samples")
