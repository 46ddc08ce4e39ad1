"""Results led by a unique key are sorted by that key's rank: they must hold exactly the rows,
in exactly the order, of the plain DISTINCT ... ORDER BY query, whatever segments a version is
made of and whatever was loaded before or after it."""

from __future__ import annotations

import orjson
import pydicom
from pydicom.uid import generate_uid

from conftest import SAMPLES
from imaging_commons.config import Archive
from imaging_commons.core import catalog as catalog_module
from imaging_commons.core.catalog import RANKED_KEYS
from imaging_commons.core.commons import Commons
from imaging_commons.core.ingest import ingest, publish
from imaging_commons.core.results import RANK_COLUMN, rows_as_json

# v26 of the demo is the IDC catalogue's series (one segment) plus pydicom's samples (another)
BOTH_SEGMENTS = {"collection_id": ["tcga_luad", "pydicom_samples"]}
FIELD_SETS = [
    (["GCS_URL", "SeriesInstanceUID"], True),  # led by gcs_url, unique in both versions
    (["CRDC_Series_GUID"], None),  # a GUID: a fixed prefix before crdc_series_uuid
    (["SeriesInstanceUID"], None),
    (["Patient_ID", "SeriesInstanceUID"], False),  # led by a column that is no key
    (["StudyInstanceUID", "SeriesInstanceUID"], False),  # a key, but not leading
]


def rows_served(commons: Commons, state: dict) -> list[dict]:
    page = commons.page(state, None, 1 << 20, None)
    return orjson.loads(b"".join(page.rows_json()))


def rows_of_plain_query(commons: Commons, state: dict) -> list[dict]:
    compiled = commons.compile_state(state, None)
    cur = commons.catalog.connection().execute(compiled.sql(), compiled.params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def sorted_by_rank(commons: Commons, state: dict) -> bool:
    """Whether the server sorts this query's rows by a key's rank, once ranking is done."""
    compiled = commons.compile_state(state, None)
    commons.catalog.settle_ranks()
    con = commons.catalog.connection()
    columns = con.execute(f"DESCRIBE {compiled.sql()}", compiled.params).fetchall()
    ranks = commons.catalog.key_ranks(compiled.relation)
    return RANK_COLUMN in rows_as_json(compiled, [(c[0], c[1]) for c in columns], ranks).sql()


def key_ranks(commons: Commons, version: int) -> dict[str, str]:
    view = commons.catalog.relation(version, "items")
    commons.catalog.settle_ranks()
    return commons.catalog.key_ranks(view)


def assert_ranks_follow_values(commons: Commons, version: int) -> None:
    """Every ranked key's values rise strictly with its rank, over the version's rows."""
    catalog = commons.catalog
    view = catalog.relation(version, "items")
    for key, rank in key_ranks(commons, version).items():
        out_of_order, ranked, rows = catalog.connection().execute(
            f'SELECT count(*) FILTER (WHERE previous >= value), count("{rank}"), count(*) FROM '
            f'(SELECT "{key}" AS value, "{rank}", lag("{key}") OVER (ORDER BY "{rank}") AS '
            f'previous FROM {view})').fetchone()
        assert (out_of_order, ranked) == (0, rows), key


def test_unique_keys_are_found_per_version(server):
    commons = server.commons
    assert set(key_ranks(commons, 25)) == {
        "SeriesInstanceUID", "crdc_series_uuid", "gcs_url"}  # one row per series
    # with pydicom's samples, one row per instance: only the URL singles out every row
    assert set(key_ranks(commons, 26)) == {"gcs_url"}
    assert commons.catalog.key_ranks(commons.catalog.relation(26, "collections")) == {}


def test_rows_led_by_a_key_match_the_plain_query(server):
    commons = server.commons
    for version in (25, 26):
        assert_ranks_follow_values(commons, version)
        unique = key_ranks(commons, version)
        for fields, ranked in FIELD_SETS:
            state = {"kind": "manifest", "version": version, "filters": BOTH_SEGMENTS,
                     "fields": fields, "offset": 0}
            expected = rows_of_plain_query(commons, state)
            assert len(expected) > 100
            assert rows_served(commons, state) == expected, (version, fields)
            if ranked is None:  # ranked where its key is unique in the version
                ranked = {"CRDC_Series_GUID": "crdc_series_uuid"}.get(fields[0], fields[0]) in unique
            assert sorted_by_rank(commons, state) == ranked, (version, fields)
    query = {"kind": "query", "version": 25, "filters": {"Modality": ["MR"],
             "collection_id": ["%tcga%"]}, "fields": ["SeriesInstanceUID", "Modality"], "offset": 0}
    assert sorted_by_rank(commons, query)
    assert rows_served(commons, query) == rows_of_plain_query(commons, query)


def copies_with_new_uids(folder, names: list[str]) -> None:
    """Sample files as new instances of new series, with UIDs that sort among the samples'."""
    folder.mkdir()
    for name in names:
        ds = pydicom.dcmread(SAMPLES / name)
        ds.SOPInstanceUID = generate_uid("1.3.6.1.4.1.5962.")
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = generate_uid("1.3.6.1.4.1.5962.")
        ds.save_as(folder / name)


def test_a_segment_loaded_later_reranks_the_loaded_ones(small_archive, tmp_path):
    commons = Commons(small_archive)
    fields = {"kind": "manifest", "filters": {"Modality": ["CT", "MR", "OT", "US"]},
              "fields": ["GCS_URL", "SOPInstanceUID"], "offset": 0}
    first = {**fields, "version": 1}
    before = rows_served(commons, first)
    assert sorted_by_rank(commons, first)
    copies_with_new_uids(tmp_path / "more", ["CT_small.dcm", "MR_small.dcm"])
    ingest(commons.catalog, [tmp_path / "more"], "later")
    assert publish(commons.catalog) == 2
    second = {**fields, "version": 2}
    assert sorted_by_rank(commons, second)  # (loads the new segment: every rank is redone)
    assert len(commons.catalog._item_tables) == 2
    for version in (1, 2):
        assert_ranks_follow_values(commons, version)
    commons.results._results.clear()  # both queries run again, over the new ranks
    assert rows_served(commons, first) == before == rows_of_plain_query(commons, first)
    after = rows_served(commons, second)
    assert after == rows_of_plain_query(commons, second)
    assert len(after) == len(before) + 2
    reopened = Commons(Archive(small_archive.root))  # v2 first, then v1: the same rows
    assert rows_served(reopened, second) == after and rows_served(reopened, first) == before


def test_a_ranking_that_failed_leaves_values_sorted_by_themselves(small_archive, tmp_path,
                                                                 monkeypatch):
    commons = Commons(small_archive)
    catalog = commons.catalog
    assert key_ranks(commons, 1)
    copies_with_new_uids(tmp_path / "more", ["CT_small.dcm"])
    ingest(catalog, [tmp_path / "more"], "later")
    publish(catalog)
    state = {"kind": "manifest", "version": 2, "filters": {"Modality": ["CT", "MR"]},
             "fields": ["GCS_URL"], "offset": 0}
    # the ranking fails at its last key, after the others' ranks were written
    monkeypatch.setattr(catalog_module, "RANKED_KEYS", RANKED_KEYS + ("no such column",))
    assert not sorted_by_rank(commons, state)  # v2 loads; its segments could not be ranked
    monkeypatch.undo()
    assert rows_served(commons, state) == rows_of_plain_query(commons, state)
    assert_ranks_follow_values(commons, 1)  # what was ranked still orders its rows
    first = {**state, "version": 1}
    commons.results._results.clear()
    assert sorted_by_rank(commons, first)
    assert rows_served(commons, first) == rows_of_plain_query(commons, first)
    # the next segment to load (v3's) has every segment ranked again, v2's too
    copies_with_new_uids(tmp_path / "still more", ["MR_small.dcm"])
    ingest(catalog, [tmp_path / "still more"], "latest")
    publish(catalog)
    for version in (3, 2):
        assert sorted_by_rank(commons, {**state, "version": version})
        assert_ranks_follow_values(commons, version)
    commons.results._results.clear()
    assert rows_served(commons, state) == rows_of_plain_query(commons, state)
