"""Results led by a unique key are sorted by that key's rank, which the IDC import writes beside
it: they must hold exactly the rows, in exactly the order, of the plain DISTINCT ... ORDER BY
query; versions whose segments carry no ranks (those of ingest) sort by the values."""

from __future__ import annotations

import orjson

from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.core.catalog import RANKED_KEYS
from imaging_commons.core.front_door import Commons
from imaging_commons.core.results import RANK_COLUMN, rows_as_json

# v26 of the demo is the IDC catalogue's series (one segment) plus pydicom's samples (another)
BOTH_SEGMENTS = {"collection_id": ["tcga_luad", "pydicom_samples"]}
FIELD_SETS = [
    (["GCS_URL", "SeriesInstanceUID"], None),  # led by gcs_url
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
    con = commons.catalog.connection()
    columns = con.execute(f"DESCRIBE {compiled.sql()}", compiled.params).fetchall()
    ranks = commons.catalog.key_ranks(compiled.relation)
    return RANK_COLUMN in rows_as_json(compiled, [(c[0], c[1]) for c in columns], ranks).sql()


def key_ranks(commons: Commons, version: int) -> dict[str, str]:
    return commons.catalog.key_ranks(commons.catalog.relation(version, "items"))


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
    for version in (1, 20, 25):  # one row per series: the import found them
        assert set(key_ranks(commons, version)) == {
            "SeriesInstanceUID", "crdc_series_uuid", "gcs_url"}
        view = commons.catalog.relation(version, "items")
        for key in RANKED_KEYS:  # as an independent count says
            rows, present, distinct = commons.catalog.connection().execute(
                f'SELECT count(*), count("{key}"), count(DISTINCT "{key}") FROM {view}'
            ).fetchone()
            assert (key in key_ranks(commons, version)) == (rows == present == distinct), key
    # pydicom's samples, ingested: their segment carries no ranks
    assert key_ranks(commons, 26) == {}
    assert commons.catalog.key_ranks(commons.catalog.relation(26, "collections")) == {}


def test_rows_led_by_a_key_match_the_plain_query(server):
    commons = server.commons
    for version in (25, 26):
        assert_ranks_follow_values(commons, version)
        unique = key_ranks(commons, version)
        for fields, ranked in FIELD_SETS:
            state = {"kind": "manifest", "version": version, "filters": BOTH_SEGMENTS,
                     "fields": manifest_fields(fields), "offset": 0}
            expected = rows_of_plain_query(commons, state)
            assert len(expected) > 100
            assert rows_served(commons, state) == expected, (version, fields)
            if ranked is None:  # ranked where its key is unique in the version
                ranked = {"CRDC_Series_GUID": "crdc_series_uuid",
                          "GCS_URL": "gcs_url"}.get(fields[0], fields[0]) in unique
            assert sorted_by_rank(commons, state) == ranked, (version, fields)
    query = {"kind": "query", "version": 25, "filters": {"Modality": ["MR"],
             "collection_id": ["%tcga%"]}, "fields": ["SeriesInstanceUID", "Modality"], "offset": 0}
    assert sorted_by_rank(commons, query)
    assert rows_served(commons, query) == rows_of_plain_query(commons, query)


def test_a_version_made_by_ingest_sorts_by_the_values(small_archive):
    commons = Commons(small_archive)
    state = {"kind": "manifest", "version": 1, "filters": {"Modality": ["CT", "MR", "OT"]},
             "fields": manifest_fields(["GCS_URL", "SOPInstanceUID"]), "offset": 0}
    assert not sorted_by_rank(commons, state)
    served = rows_served(commons, state)
    assert len(served) > 10 and served == rows_of_plain_query(commons, state)
