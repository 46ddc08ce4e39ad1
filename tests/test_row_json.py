"""Result rows rendered as JSON by DuckDB inside the query, and pages cut from them: a client
must read back exactly the values a row holds, in the query's order."""

from __future__ import annotations

import datetime
import math
from decimal import Decimal

import orjson
import pyarrow as pa
import pytest
from sqlglot import exp

from imaging_commons.api.idc.streaming import joined_slices
from imaging_commons.config import Archive
from imaging_commons.core.catalog import Catalog
from imaging_commons.core.pages import echoed_sql
from imaging_commons.core.query import Compiled, col
from imaging_commons.core.results import ROW_COLUMN, Result, ResultStore

# one value per row and column; the rows' order is set by "k"
VALUES = {
    "k": ("BIGINT", [3, 1, 2, 5, 4, 10]),  # 10: its text sorts before 2
    "SeriesInstanceUID": ("VARCHAR", ["1.2.3", "1.2.4", None, "1.2.5", "1.2.6", "1.2.7"]),
    "odd": ("VARCHAR", ['say "hi"', "back\\slash", "line\nbreak\ttab", "\x01\x1f\x7f",
                        "Ünïcødé ✓ 😀 \u2028", "</script>"]),
    "ratio": ("DOUBLE", [0.5, math.nan, math.inf, -math.inf, 1e20, None]),
    "SliceThickness": ("DOUBLE", [2.5, None, 1.0, 1e-05, 1e16, 0.1]),
    "InstanceNumber": ("BIGINT", [1, None, -3, 2**53, 0, 7]),
    "ImageType": ("VARCHAR[]", [["ORIGINAL", "PRIMARY"], None, [], ['A"B'], ["X", None], ["Y"]]),
    "weights": ("DOUBLE[]", [[1.5, math.nan], None, [], [math.inf], [2.0], [None, 0.25]]),
    "amount": ("DECIMAL(6,2)", [Decimal("2.50"), None, Decimal("-1.25"), Decimal("0"),
                                Decimal("9999.99"), Decimal("0.01")]),
    "seen": ("DATE", [datetime.date(2020, 1, 2), None, datetime.date(1999, 12, 31),
                      datetime.date(2024, 2, 29), datetime.date(2000, 1, 1),
                      datetime.date(2010, 6, 15)]),
    "flag": ("BOOLEAN", [True, False, None, True, False, True]),
}


def expected_value(name: str, value):
    """What the wire carries: NaN and infinities as null (JSON has neither), SliceThickness as
    Python's str() of the number (the real server sends it as a string)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, list):
        return [expected_value(name, v) for v in value]
    if name == "SliceThickness" and value is not None:
        return str(value)
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, datetime.date):
        return value.isoformat()
    return value


@pytest.fixture
def catalog(tmp_path) -> Catalog:
    catalog = Catalog(Archive(tmp_path))
    con = catalog.connection()
    con.execute("CREATE TABLE t (" + ", ".join(f'"{n}" {t}' for n, (t, _) in VALUES.items()) + ")")
    rows = list(zip(*(values for _, values in VALUES.values())))
    con.executemany(f"INSERT INTO t VALUES ({', '.join('?' * len(VALUES))})", rows)
    return catalog


def compiled_over_t(names: list[str], order: list[str]) -> Compiled:
    """SELECT names FROM t ORDER BY order, shaped as the query layer compiles it."""
    tree = exp.select(*[col(n).as_(n, quoted=True) for n in names]).from_("t").order_by(
        *[exp.Ordered(this=col(n), nulls_first=False) for n in order])
    return Compiled(tree, [])


def test_rows_read_back_as_their_values_in_the_query_order(catalog):
    compiled = compiled_over_t(list(VALUES), ["k"])
    result = ResultStore(catalog).run(compiled, None)
    rows = orjson.loads(b"".join(result.json_page(0, 100)))  # strict: a NaN token would fail
    order = sorted(range(len(VALUES["k"][1])), key=lambda i: VALUES["k"][1][i])
    assert len(rows) == result.total == len(order)
    assert rows == [{n: expected_value(n, VALUES[n][1][i]) for n in VALUES} for i in order]
    assert list(rows[0]) == list(VALUES)  # keys in the selected order
    echoed = echoed_sql(compiled)  # (what a page tells of its query: the plain one)
    assert echoed.startswith("SELECT") and "to_json" not in echoed.lower()


def test_an_output_named_like_the_rendered_column_does_not_change_the_order(catalog):
    catalog.connection().execute(f'ALTER TABLE t ADD COLUMN "{ROW_COLUMN}" VARCHAR DEFAULT \'x\'')
    # ordered by that column first: it must be the table's (all alike), not the rendered text
    result = ResultStore(catalog).run(compiled_over_t(["k", ROW_COLUMN], [ROW_COLUMN, "k"]), None)
    rows = orjson.loads(b"".join(result.json_page(0, 100)))
    assert [r["k"] for r in rows] == sorted(VALUES["k"][1])
    assert {r[ROW_COLUMN] for r in rows} == {"x"}


def chunked_result(rows: list[dict], cuts: list[int]) -> Result:
    texts = [orjson.dumps(r) + b"," for r in rows]
    bounds = [0, *cuts, len(texts)]
    column = pa.chunked_array([pa.array(texts[a:b], pa.string()) for a, b in zip(bounds, bounds[1:])],
                              pa.string())
    return Result("key", pa.table({ROW_COLUMN: column}))


def test_pages_cut_anywhere_across_chunks_are_the_rows_of_that_range():
    rows = [{"i": i, "s": f"v{i}"} for i in range(7)]
    result = chunked_result(rows, [3, 3, 5])  # an empty chunk, too
    assert result.table.column(0).num_chunks == 4
    for offset in range(0, 9):
        for limit in range(1, 9):
            pieces = list(result.json_page(offset, limit))
            assert orjson.loads(b"".join(pieces)) == rows[offset:offset + limit]
    assert list(result.json_page(7, 10)) == [b"[", b"]"]


def test_a_body_in_slices_is_the_parts_back_to_back():
    parts = [b'{"a":', b"[", memoryview(b'{"x":1},{"x":2}'), b"", b"]", b"}"]
    whole = b"".join(bytes(p) for p in parts)
    for size in (1, 2, 3, 7, len(whole) - 1, len(whole), len(whole) + 1, 1 << 20):
        slices = list(joined_slices(parts, size))
        assert b"".join(slices) == whole
        assert all(len(s) == size for s in slices[:-1]) and len(slices[-1]) < size
        assert all(type(s) is bytes for s in slices)
