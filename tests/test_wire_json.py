"""Pages rendered from Arrow columns must be byte-for-byte what orjson writes for the rows."""

from __future__ import annotations

import math

import orjson
import pyarrow as pa
import pytest

from imaging_commons.api.wire_json import json_rows

STRINGS = ["1.2.840.10008", None, 'say "hi"', "back\\slash", "line\nbreak", "tab\t", "Ünïcødé ✓",
           "\x01", ""]
COLUMNS = {
    "SeriesInstanceUID": pa.array([f"1.2.3.{i}" for i in range(len(STRINGS))]),
    "odd": pa.array(STRINGS),
    "count": pa.array([1, None, -3, 2**53, 0, 7, 8, 9, 10], pa.int64()),
    "ratio": pa.array([0.5, None, math.nan, 100.0, 1e20, -0.0, 1.5e-7, math.inf, 2.0]),
    "SliceThickness": pa.array([2.5, None, 1.0, 3.0, 0.1, 5.0, 6.0, 7.0, 8.0]),
    "InstanceNumber": pa.array([1, 2, None, 4, 5, 6, 7, 8, 9], pa.int64()),
    "ImageType": pa.array([["ORIGINAL", "PRIMARY"], None, [], ["A\"B"], ["X"], None, ["Y"], [],
                           ["Z"]], pa.list_(pa.string())),
    "big": pa.array([None if i == 3 else f"v{i}" for i in range(len(STRINGS))], pa.large_string()),
}
AS_TEXT = ("SliceThickness", "InstanceNumber")


def expected(table: pa.Table) -> bytes:
    rows = table.to_pylist()
    for row in rows:
        for name in AS_TEXT:
            if row.get(name) is not None:
                row[name] = str(row[name])
    return orjson.dumps(rows)


@pytest.mark.parametrize("shape", ["whole", "sliced", "chunked", "plain-strings-only"])
def test_json_rows_equal_orjson_of_the_rows(shape):
    table = pa.table(COLUMNS)
    if shape == "sliced":
        table = table.slice(2, 5)
    elif shape == "chunked":
        table = pa.concat_tables([table.slice(0, 4), table.slice(4)])
        assert table.column("odd").num_chunks == 2
    elif shape == "plain-strings-only":
        table = table.select(["SeriesInstanceUID", "big", "count"])
    rendered = orjson.dumps({"rows": json_rows(table, AS_TEXT)})
    assert rendered == b'{"rows":' + expected(table) + b"}"
    assert len(orjson.loads(rendered)["rows"]) == table.num_rows


def test_json_rows_of_no_rows_is_an_empty_array():
    assert orjson.dumps(json_rows(pa.table(COLUMNS).slice(0, 0))) == b"[]"
