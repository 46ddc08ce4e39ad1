"""Results led by a unique key are sorted by that key's rank: they must hold exactly the rows,
in exactly the order, of the plain DISTINCT ... ORDER BY query, whatever segments a version is
made of and whatever was loaded before or after it."""

from __future__ import annotations

import duckdb
import orjson
import pydicom
import pytest
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
    """Whether the server sorts this query's rows by a key's rank."""
    compiled = commons.compile_state(state, None)
    con = commons.catalog.connection()
    columns = con.execute(f"DESCRIBE {compiled.sql()}", compiled.params).fetchall()
    return RANK_COLUMN in rows_as_json(compiled, [(c[0], c[1]) for c in columns]).sql()


def assert_ranks_follow_values(commons: Commons, version: int) -> None:
    """Every ranked key's values rise strictly with its rank, over the version's rows."""
    catalog = commons.catalog
    view = catalog.relation(version, "items")
    for key, rank in catalog.key_ranks(view).items():
        out_of_order, ranked, rows = catalog.connection().execute(
            f'SELECT count(*) FILTER (WHERE previous >= value), count("{rank}"), count(*) FROM '
            f'(SELECT "{key}" AS value, "{rank}", lag("{key}") OVER (ORDER BY "{rank}") AS '
            f'previous FROM {view})').fetchone()
        assert (out_of_order, ranked) == (0, rows), key


def test_unique_keys_are_found_per_version(server):
    catalog = server.commons.catalog
    assert set(catalog.key_ranks(catalog.relation(25, "items"))) == {
        "SeriesInstanceUID", "crdc_series_uuid", "gcs_url"}  # one row per series
    # with pydicom's samples, one row per instance: only the URL singles out every row
    assert set(catalog.key_ranks(catalog.relation(26, "items"))) == {"gcs_url"}
    assert catalog.key_ranks(catalog.relation(26, "collections")) == {}


def test_rows_led_by_a_key_match_the_plain_query(server):
    commons = server.commons
    for version in (25, 26):
        assert_ranks_follow_values(commons, version)
        unique = commons.catalog.key_ranks(commons.catalog.relation(version, "items"))
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


def test_a_ranking_that_failed_is_done_again_before_any_rank_is_used(small_archive, tmp_path,
                                                                     monkeypatch):
    commons = Commons(small_archive)
    catalog = commons.catalog
    catalog.relation(1, "items")
    copies_with_new_uids(tmp_path / "more", ["CT_small.dcm"])
    ingest(catalog, [tmp_path / "more"], "later")
    publish(catalog)
    # the ranking fails at its last key, after the others' ranks were written
    monkeypatch.setattr(catalog_module, "RANKED_KEYS", RANKED_KEYS + ("no such column",))
    with pytest.raises(duckdb.Error):
        catalog.relation(2, "items")
    monkeypatch.undo()
    assert_ranks_follow_values(commons, 1)  # what was ranked still orders its rows
    state = {"kind": "manifest", "version": 2, "filters": {"Modality": ["CT", "MR"]},
             "fields": ["GCS_URL"], "offset": 0}
    assert sorted_by_rank(commons, state)  # ranked again, with the new segment
    assert_ranks_follow_values(commons, 1)
    assert_ranks_follow_values(commons, 2)
    assert rows_served(commons, state) == rows_of_plain_query(commons, state)
