"""Keyset pages: a page of an instance-level result read from where the previous page ended.

A series-level result (at most the catalogue's ~1M series) is materialised once and paged by
offset (results.py); the first page of a large one is a top-k and a count, so that it waits
for none of the rest (Commons.page). An instance-level result at IDC's scale (58.8M rows) cannot be: its page
tokens carry the last row's order key instead, and a page is the first `limit` rows after it,
read from data already in that order. dicomMetadata asks for instance rows in ITEM_ORDER, the
order every ingested segment is written in, so a page reads each segment from the granule its
key falls in (a granule index, the key of every GRANULE_ROWS-th row, is written beside each
segment) and stops after `limit` rows (DuckDB streams a LIMIT without ORDER BY in file order);
the segments' rows are then merged by key. A deep page costs what the first does.

`totalFound` is a count of the query's rows, with none of them rendered, made once per query
and kept.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq
from sqlglot import exp

from .cache import RecentlyUsed
from .catalog import ITEM_ORDER, Catalog, copy_to_parquet
from .query import Compiled, col
from .results import ROW_COLUMN, json_row

GRANULE_ROWS = 8192
GRANULES_SUFFIX = ".granules.parquet"
KEPT = 256  # counts, granule indexes and query shapes remembered
ROW_NUMBER = "file_row_number"
INSTANCE_KEYS = {"SOPInstanceUID", "crdc_instance_uuid", "gcs_url"}  # one value per instance row
INSTANCE_ONLY = {"SOPInstanceUID", "crdc_instance_uuid"}  # (NULL in series-level rows)
# Instance-level manifests and queries of a version with more instance rows than this are paged
# by key; below it, their results are materialised as series-level ones are (the whole IDC
# catalogue is ~1M rows).
KEYSET_FROM_ROWS = 2_000_000
# The most rows of one page by key, whatever page_size asks (the page's next_page goes on).
# A top-k page of more makes DuckDB either sort every matching row instead of keeping the best
# ones, or grow its top-N heap of long strings past the engine's memory: at 58.8M instances a
# 65,536-row page of 21M matching UIDs and URLs ran out of 2 GB, a 16,384-row one peaked at
# ~540 MB. A dicomMetadata page reads up to this many rows (~2 KB of JSON each) from each
# segment before it merges them.
PAGE_MAX_ROWS = 16_384


def granules_file(segment: Path) -> Path:
    """The granule index beside a segment (local-items-x.parquet: local-items-x.granules.parquet)."""
    return segment.with_name(segment.name.removesuffix(".parquet") + GRANULES_SUFFIX)


def write_granules(catalog: Catalog, segment: Path) -> None:
    """Write a segment's granule index: the ITEM_ORDER key of every GRANULE_ROWS-th row, with
    that row's number. Read once, at the segment's writing."""
    keys = ", ".join(ITEM_ORDER)
    copy_to_parquet(catalog.connection(), f"""
        SELECT {ROW_NUMBER}, {keys} FROM {catalog.segment_sql(segment.name, row_numbers=True)}
        WHERE {ROW_NUMBER} % {GRANULE_ROWS} = 0 ORDER BY {ROW_NUMBER}""", granules_file(segment))


def _compare(a: tuple, b: tuple) -> int:
    """Order keys as the segments are sorted: values ascending, NULLs last."""
    for x, y in zip(a, b):
        if x == y:
            continue
        if x is None:
            return 1
        if y is None:
            return -1
        return -1 if x < y else 1
    return 0


_KEY = cmp_to_key(_compare)


@dataclass(frozen=True)
class KeysetPage:
    """A page of a keyset-paged result: complete once made, like a finished materialised page."""

    rows: list[bytes]  # each row's JSON object
    state: dict
    offset: int  # rows before this page
    total: int
    last_key: list | None
    sql: str = ""  # (set by Commons.page: the query's SQL as a page echoes it)
    by_key: bool = True  # the next page is read by key (else by offset, materialised)

    complete = True

    def rows_json(self) -> Iterator[bytes]:
        yield b"[" + b",".join(self.rows) + b"]"

    @property
    def returned(self) -> int:
        return len(self.rows)

    @property
    def next_state(self) -> dict | None:
        end = self.offset + self.returned
        if end >= self.total or not self.rows:
            return None
        if not self.by_key:
            return {**self.state, "offset": end}
        return {**self.state, "offset": end, "after": self.last_key}


class KeysetPages:
    """Keyset pages of instance-level queries."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._counts = RecentlyUsed(KEPT)
        self._granules = RecentlyUsed(KEPT)
        self._shapes = RecentlyUsed(KEPT)
        self._segment_sql = RecentlyUsed(KEPT)

    def ordered_page(self, compiled: Compiled, state: dict, version: int,
                     limit: int) -> KeysetPage:
        """A page of a query over instance rows in ITEM_ORDER (dicomMetadata), read from each
        ingested segment where the state's key falls and merged."""
        after = state.get("after")
        limit = min(limit, PAGE_MAX_ROWS)
        rows: list[tuple[tuple, bytes]] = []
        manifest = self.catalog.version(version).manifest
        for segment in self.catalog.ingested_segments_of(manifest):
            rows.extend(self._segment_rows(compiled, version, segment, after, limit))
        rows.sort(key=lambda row: _KEY(row[0]))
        rows = rows[:limit]
        return KeysetPage([r[1] for r in rows], state, int(state.get("offset", 0)),
                          self.total(compiled.key, compiled.tree, compiled.params),
                          list(rows[-1][0]) if rows else None)

    def pages_instances(self, compiled: Compiled, version: int) -> bool:
        """Whether a manifest or query is paged by key: its rows are instances (an output is the
        SOPInstanceUID, the instance's UUID or URL) of a version whose segments hold more than
        KEYSET_FROM_ROWS instance rows (fewer are materialised at once, which pages faster),
        and every output is text (what a key in a page token can carry)."""
        columns = {c.name for output in compiled.tree.expressions
                   for c in output.find_all(exp.Column)}
        if not (columns & INSTANCE_KEYS and self._instance_rows(version) > KEYSET_FROM_ROWS
                and all(kind == "VARCHAR" for _, kind in self._columns(compiled))):
            return False
        return bool(columns & INSTANCE_ONLY) or self._matches_instances(compiled)

    def _matches_instances(self, compiled: Compiled) -> bool:
        """Whether any instance row matches (a query of URLs may match series-level rows
        alone, which materialise faster), asked once per query."""
        def ask() -> bool:
            sql = exp.select(exp.Exists(this=_instance_rows(compiled))).sql("duckdb")
            return self.catalog.connection().execute(sql, compiled.params).fetchone()[0]

        return self._counts.get(f"instances {compiled.key}", ask)

    def _instance_rows(self, version: int) -> int:
        """The rows of the version's ingested segments (from their footers: no scan)."""
        segments = self.catalog.ingested_segments_of(self.catalog.version(version).manifest)
        return sum(self._granules.get(f"rows {segment}", lambda segment=segment: pq.ParquetFile(
            self.catalog.segments_dir / segment).metadata.num_rows) for segment in segments)

    def top_page(self, compiled: Compiled, state: dict, limit: int) -> KeysetPage:
        """A page of an instance-level manifest or query: its first `limit` rows after the
        state's key, in its order (a top-k over the matching rows, each instance row once)."""
        columns = self._columns(compiled)
        names = [name for name, _ in columns]
        split, split_params = _split(compiled), compiled.params * 2
        params = list(split_params)
        top = exp.select(*[col(n, "q") for n in names]).from_(split.subquery("q"))
        if state.get("after") is not None:
            top = top.where(_after(names, state["after"], params))
        top = top.order_by(*[exp.Ordered(this=col(n, "q"), nulls_first=False)
                             for n in names]).limit(min(limit, PAGE_MAX_ROWS))
        # rendered once picked (DuckDB would render every matching row before its sort)
        outer = exp.select(json_row(columns).as_(ROW_COLUMN),
                           *[col(n, "q") for n in names]).from_(top.subquery("q"))
        found = self.catalog.connection().execute(outer.sql("duckdb"), params).fetchall()
        return KeysetPage([row[0][:-1].encode() for row in found], state,
                          int(state.get("offset", 0)),
                          self.total(compiled.key, split, split_params),
                          list(found[-1][1:]) if found else None)

    def total(self, key: str, query: exp.Expression, params: list) -> int:
        """The number of rows of `query` (a form of the query `key` names, with its `params`),
        counted once per query."""
        def count() -> int:
            tree = query.copy()
            tree.set("order", None)
            sql = exp.select(exp.Count(this=exp.Star())).from_(tree.subquery("q")).sql("duckdb")
            return self.catalog.connection().execute(sql, params).fetchone()[0]

        return self._counts.get(key, count)

    def _segment_rows(self, compiled: Compiled, version: int, segment: str, after: list | None,
                      limit: int) -> list[tuple[tuple, bytes]]:
        """The first `limit` rows of the query in one segment after the key `after`. Its SQL is
        made once per query, segment and shape of key (which of its values are NULL): only the
        parameters change from page to page."""
        relation = self.catalog.segment_relation(version, segment)
        start = self._start(segment, after)
        params = list(compiled.params) + ([start] if start else [])
        after_where = None if after is None else _after(list(ITEM_ORDER), after, params)
        shape = (compiled.key, relation, bool(start), limit,
                 None if after is None else tuple(value is None for value in after))
        sql = self._segment_sql.get(shape, lambda: self._segment_query(
            compiled, relation, bool(start), after_where, limit))
        found = self.catalog.connection().execute(sql, params).fetchall()
        return [(tuple(row[1:]), row[0][:-1].encode()) for row in found]

    def _segment_query(self, compiled: Compiled, relation: str, from_row: bool,
                       after_where: exp.Expression | None, limit: int) -> str:
        inner = compiled.tree.copy()
        inner.set("order", None)
        inner = inner.from_(exp.to_table(relation, quoted=True), copy=False)
        if from_row:
            inner = inner.where(exp.GTE(this=col(ROW_NUMBER), expression=exp.Placeholder()))
        if after_where is not None:
            inner = inner.where(after_where)
        inner.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
        outer = exp.select(json_row(self._columns(compiled)).as_(ROW_COLUMN),
                           *[col(k, "q") for k in ITEM_ORDER]).from_(inner.subquery("q"))
        return outer.sql("duckdb")

    def _columns(self, compiled: Compiled) -> list[tuple[str, str]]:
        """The query's output names and types, asked of DuckDB once per query shape."""
        sql = compiled.sql()

        def describe() -> list[tuple[str, str]]:
            rows = self.catalog.connection().execute(f"DESCRIBE {sql}", compiled.params)
            return [(r[0], r[1]) for r in rows.fetchall()]

        return self._shapes.get(sql, describe)

    def _start(self, segment: str, after: list | None) -> int:
        """The number of the row to read a segment from: that of the last granule whose key is
        at most `after` (0 without a key, or for a segment written without granules)."""
        if after is None:
            return 0
        rows, keys = self._granules.get(segment, lambda: self._read_granules(segment))
        at = bisect.bisect_right(keys, _KEY(tuple(after))) - 1
        return rows[at] if at >= 0 else 0

    def _read_granules(self, segment: str) -> tuple[list[int], list]:
        path = granules_file(self.catalog.segments_dir / segment)
        if not path.exists():
            return [], []
        table = pq.read_table(path)
        rows = table[ROW_NUMBER].to_pylist()
        keys = [_KEY(key) for key in zip(*(table[k].to_pylist() for k in ITEM_ORDER))]
        return rows, keys


def _after(columns: list[str], key: list, params: list) -> exp.Expression:
    """Rows whose key comes after `key` in the order the segments are sorted in (ascending,
    NULLs last): greater in the first column, or equal there and after in the rest."""
    name, value = columns[0], key[0]
    column = col(name)
    if value is None:
        greater: exp.Expression = exp.false()
        equal: exp.Expression = exp.Is(this=column.copy(), expression=exp.Null())
    else:
        params.append(value)
        greater = exp.or_(exp.GT(this=column.copy(), expression=exp.Placeholder()),
                          exp.Is(this=column.copy(), expression=exp.Null()))
        equal = None
    if len(columns) == 1:
        return greater
    if equal is None:
        params.append(value)
        equal = exp.EQ(this=column.copy(), expression=exp.Placeholder())
    rest = _after(columns[1:], key[1:], params)
    return exp.or_(greater, exp.and_(equal, rest))


def _split(compiled: Compiled) -> exp.Union:
    """An instance-level query without its order, in two parts: its instance rows, which need
    no DISTINCT (one row per instance, and an output singles it out: a DISTINCT would hash every
    matching row), and its other rows (series of the IDC import), distinct. The parts cannot
    share a row (the instance's key is null in the other). Its placeholders come twice."""
    level = col("level")
    others = compiled.tree.copy()
    others.set("order", None)
    others = others.where(exp.or_(
        exp.NEQ(this=level, expression=exp.Literal.string("instance")),
        exp.Is(this=level.copy(), expression=exp.Null())))
    return exp.union(_instance_rows(compiled), others, distinct=False)


def _instance_rows(compiled: Compiled) -> exp.Select:
    """The instance rows of a query, without its order and its DISTINCT."""
    instances = compiled.tree.copy()
    instances.set("order", None)
    instances.set("distinct", None)
    return instances.where(exp.EQ(this=col("level"), expression=exp.Literal.string("instance")))
