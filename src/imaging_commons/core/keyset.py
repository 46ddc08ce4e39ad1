"""Keyset pages: a page of an instance-level result read from where the previous page ended.

A series-level result (at most the catalogue's ~1M series) is materialised once and paged by
offset (results.py); the first page of a large one is a top-k and a count, so that it waits
for none of the rest (Pager.page in pages.py). An instance-level result at IDC's scale (58.8M rows)
cannot be: its page tokens carry the last row's order key instead, and a page is the first
`limit` rows after it, read from data already in that order.

dicomMetadata asks for instance rows in ITEM_ORDER, the order every ingested segment is written
in, so a page reads each segment from the granule its key falls in (a granule index, the key of
every GRANULE_ROWS-th row, is written beside each segment): a window of rows from there, sorted
(what a tombstone's join gives back is not in file order) and cut at `limit`, then the next
window, twice as large, while fewer were found; the segments' rows are then merged by key. A
deep page costs what the first does.

An instance-level manifest or query is ordered by its outputs. When the first is an instance
key (the SOPInstanceUID, the instance's UUID, as it is or as a GUID, or its URL), each segment's
copy in that key's order (a key order, written with its own granules beside the segment) is
read the same way, in windows of about limit × rows / matches rows, where a top-k over the
segment reads every match: a page reads a segment in key order when that is fewer rows, else
by a top-k, and the segments' rows (and the top-k of the version's other segments, IDC's series
among them) are merged by key. Key orders cost disk: each holds the segment's rows again
(sorted by a UID, the series' columns compress less: twice the segment's size; by URL, about
its size).

`totalFound` of dicomMetadata is summed from the instance counts per collection each publish
writes into its version's manifest; that of a manifest or query is a count of its rows (per
segment, for the choice above), with none of them rendered, made once per query and kept.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cmp_to_key
from pathlib import Path

import pyarrow.parquet as pq
from sqlglot import exp

from .catalog import ITEM_ORDER, Catalog, copy_to_parquet, one_row
from .query import Compiled, col, leading_column
from .recently_used import RecentlyUsed
from .results import ROW_COLUMN, json_row

GRANULE_ROWS = 8192
GRANULES_SUFFIX = ".granules.parquet"
KEPT = 256  # counts and query shapes remembered
FILES_KEPT = 4096  # footers and granule indexes remembered (several per segment)
ROW_NUMBER = "file_row_number"
# One value per instance row; each has a key order of every ingested segment.
INSTANCE_KEYS = ("SOPInstanceUID", "crdc_instance_uuid", "gcs_url")
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
# A segment is read in key order for a page when its matches² ≥ this × the page's rows × the
# segment's rows: about limit × rows / matches rows read, against the matches a top-k reads.
KEY_ORDER_FROM = 1.0


def granules_file(segment: Path) -> Path:
    """The granule index beside a segment or a key order (local-items-x.parquet:
    local-items-x.granules.parquet)."""
    return segment.with_name(segment.name.removesuffix(".parquet") + GRANULES_SUFFIX)


def key_order_file(segment: Path, key: str) -> Path:
    """A segment's rows in the order of one of INSTANCE_KEYS (local-items-x.parquet:
    local-items-x.by-SOPInstanceUID.parquet)."""
    return segment.with_name(f"{segment.name.removesuffix('.parquet')}.by-{key}.parquet")


def segment_of(file_name: str) -> str:
    """The segment a file of the segments folder belongs to: its own name for a segment, the
    segment's for its granule index, a key order or a key order's granule index."""
    name = file_name.removesuffix(GRANULES_SUFFIX)
    if name != file_name:
        name += ".parquet"
    for key in INSTANCE_KEYS:
        name = name.removesuffix(f".by-{key}.parquet") + (
            ".parquet" if name.endswith(f".by-{key}.parquet") else "")
    return name


def write_indexes(catalog: Catalog, segment: Path) -> None:
    """Write beside a segment, each where it is missing, what pages by key read: its key orders
    (its rows sorted by each of INSTANCE_KEYS) and a granule index of it and of each key order
    (the sort key of every GRANULE_ROWS-th row, with that row's number). Each is written under
    a temporary name and renamed: a reader finds it whole or not at all (and then reads the
    segment as if it had none)."""
    con = catalog.connection()
    for key in INSTANCE_KEYS:
        path = key_order_file(segment, key)
        if not path.exists():
            copy_to_parquet(con, f"SELECT * FROM {catalog.segment_sql(segment.name)} "
                                 f"ORDER BY {key} NULLS LAST", path)
    for path, keys in ((segment, ITEM_ORDER),
                       *((key_order_file(segment, key), (key,)) for key in INSTANCE_KEYS)):
        if not granules_file(path).exists():
            copy_to_parquet(con, f"""
                SELECT {ROW_NUMBER}, {', '.join(keys)}
                FROM {catalog.segment_sql(path.name, row_numbers=True)}
                WHERE {ROW_NUMBER} % {GRANULE_ROWS} = 0 ORDER BY {ROW_NUMBER}""",
                            granules_file(path))


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
    sql: str = ""  # (set by Pager.page: the query's SQL as a page echoes it)
    by_key: bool = True  # the next page is read by key (else by offset, materialised)

    complete = True

    def finished(self, timeout: float | None) -> bool:
        return True

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
        self._files = RecentlyUsed(FILES_KEPT)
        self._shapes = RecentlyUsed(KEPT)
        self._segment_sql = RecentlyUsed(KEPT)

    def ordered_page(self, compiled: Compiled, state: dict, version: int, limit: int,
                     total: int | None) -> KeysetPage:
        """A page of a query over instance rows in ITEM_ORDER (dicomMetadata), read from each
        ingested segment where the state's key falls and merged; its rows number `total`
        (counted here if None)."""
        after = state.get("after")
        limit = min(limit, PAGE_MAX_ROWS)
        columns = self._columns(compiled)
        rows: list[tuple[tuple, bytes]] = []
        manifest = self.catalog.version(version).manifest
        for segment in self.catalog.ingested_segments_of(manifest):
            start = self._start(segment, None if after is None else tuple(after))
            rows += self._in_order(compiled, columns, list(ITEM_ORDER), version, segment, start,
                                   after, limit, limit)
        rows.sort(key=lambda row: _KEY(row[0]))
        rows = rows[:limit]
        if total is None:
            total = self.total(compiled.key, compiled.tree, compiled.params)
        return KeysetPage([r[1] for r in rows], state, int(state.get("offset", 0)), total,
                          list(rows[-1][0]) if rows else None)

    def pages_instances(self, compiled: Compiled, version: int) -> bool:
        """Whether a manifest or query is paged by key: its rows are instances (an output is the
        SOPInstanceUID, the instance's UUID or URL) of a version whose segments hold more than
        KEYSET_FROM_ROWS instance rows (fewer are materialised at once, which pages faster),
        and every output is text (what a key in a page token can carry)."""
        columns = {c.name for output in compiled.tree.expressions
                   for c in output.find_all(exp.Column)}
        if not (columns & set(INSTANCE_KEYS) and self._instance_rows(version) > KEYSET_FROM_ROWS
                and all(kind == "VARCHAR" for _, kind in self._columns(compiled))):
            return False
        return bool(columns & INSTANCE_ONLY) or self._matches_instances(compiled)

    def _matches_instances(self, compiled: Compiled) -> bool:
        """Whether any instance row matches (a query of URLs may match series-level rows
        alone, which materialise faster), asked once per query."""
        def ask() -> bool:
            sql = exp.select(exp.Exists(this=_instance_rows(compiled))).sql("duckdb")
            return one_row(self.catalog.connection(), sql, compiled.params)[0]

        return self._counts.get(f"instances {compiled.key}", ask)

    def _instance_rows(self, version: int) -> int:
        """The rows of the version's ingested segments (from their footers: no scan)."""
        segments = self.catalog.ingested_segments_of(self.catalog.version(version).manifest)
        return sum(self._footer(segment).rows for segment in segments)

    def _footer(self, file_name: str) -> _Footer:
        return self._files.get(f"footer {file_name}", lambda: _Footer.read(
            self.catalog.segments_dir / file_name))

    def top_page(self, compiled: Compiled, state: dict, limit: int) -> KeysetPage:
        """A page of an instance-level manifest or query: its first `limit` rows after the
        state's key, in its order, each instance row once. Each ingested segment whose rows
        are all instances with a key, when that key leads the order, is read in its key order
        or by a top-k (see the module's description); the rows of the version's other segments
        by one top-k."""
        version, after = state["version"], state.get("after")
        columns = self._columns(compiled)
        names = [name for name, _ in columns]
        limit = min(limit, PAGE_MAX_ROWS)
        leading = leading_column(compiled.tree)
        key = leading[0] if leading and leading[0] in INSTANCE_KEYS else None
        manifest = self.catalog.version(version).manifest
        own = {segment: key_order_file(self.catalog.segments_dir / segment, key).name
               for segment in self.catalog.ingested_segments_of(manifest)
               if key is not None and self._footer(segment).keyed(key)
               and self._has_key_order(segment, key)}
        others = [f for f in manifest.get("items") or [] if f not in own]
        rows: list[tuple[tuple, bytes]] = []
        total = 0
        for segment, ordered in own.items():
            instances = _instance_rows(compiled, self.catalog.segment_relation(version, segment))
            matching = self.total(f"{compiled.key} {segment}", instances, compiled.params)
            total += matching
            if not matching or (after is not None and after[0] is None):
                continue  # (every row here has a key, and NULL comes after every key)
            size = self._footer(segment).rows
            if matching * matching >= KEY_ORDER_FROM * limit * size:
                # from the granule of the page's key (as it is in the file: behind no prefix)
                prefix = leading[1] if leading else ""
                start = (0 if after is None or not after[0].startswith(prefix) else
                         self._start(ordered, (after[0].removeprefix(prefix),)))
                rows += self._in_order(compiled, columns, names, version, ordered, start, after,
                                       limit, -(-limit * size // matching))
            else:
                rows += self._top_rows(instances, compiled.params, columns, after, limit)
        if others:
            split = _split(compiled, self.catalog.segment_relation(version, *others))
            total += self.total(f"{compiled.key} {' '.join(others)}", split, compiled.params * 2)
            rows += self._top_rows(split, compiled.params * 2, columns, after, limit)
        rows.sort(key=lambda row: _KEY(row[0]))
        rows = rows[:limit]
        return KeysetPage([row[1] for row in rows], state, int(state.get("offset", 0)), total,
                          list(rows[-1][0]) if rows else None)

    def _has_key_order(self, segment: str, key: str) -> bool:
        """Whether a segment's key order and its granules are written (once they are, they
        stay as long as the segment does)."""
        def written() -> bool:
            path = key_order_file(self.catalog.segments_dir / segment, key)
            if not (path.exists() and granules_file(path).exists()):
                raise FileNotFoundError(path)  # (not remembered: a compaction may write it)
            return True

        try:
            return self._files.get(f"written {segment} {key}", written)
        except FileNotFoundError:
            return False

    def _top_rows(self, query: exp.Select | exp.Union, params: list,
                  columns: list[tuple[str, str]], after: list | None,
                  limit: int) -> list[tuple[tuple, bytes]]:
        """The first `limit` rows of a query (without its order) after the key `after`, in
        the order of its outputs: (their values, the row's JSON)."""
        names = [name for name, _ in columns]
        params = list(params)
        top = exp.select(*[col(n, "q") for n in names]).from_(query.subquery("q"))
        if after is not None:
            top = top.where(_after(names, after, params))
        top = top.order_by(*[exp.Ordered(this=col(n, "q"), nulls_first=False)
                             for n in names]).limit(limit)
        # rendered once picked (DuckDB would render every matching row before its sort)
        outer = exp.select(json_row(columns).as_(ROW_COLUMN),
                           *[col(n, "q") for n in names]).from_(top.subquery("q"))
        found = self.catalog.connection().execute(outer.sql("duckdb"), params).fetchall()
        return [(tuple(row[1:]), row[0][:-1].encode()) for row in found]

    def _in_order(self, compiled: Compiled, columns: list[tuple[str, str]], order: list[str],
                  version: int, file_name: str, start: int, after: list | None, limit: int,
                  window: int) -> list[tuple[tuple, bytes]]:
        """The first `limit` instance rows of the query in one file whose rows are sorted in
        `order` (outputs of the query, their values ascending, NULLs last) after the key
        `after`: read from row `start` on, in windows of rows (the first `window` rows, then
        twice as many as the window before, until `limit` rows are found). Each window is
        sorted by the query (the order a file is read in is not what a join, a tombstone's,
        gives back): what it reads is about the rows it is asked for, however deep the key.
        Returns each row's values in `order` and its JSON. Its SQL is made once per query,
        file and shape of key (which of its values are NULL)."""
        relation = self.catalog.segment_relation(version, file_name)
        rows = self._footer(file_name).rows
        shape = (compiled.key, relation, tuple(order), limit,
                 None if after is None else tuple(value is None for value in after))
        after_params: list = []
        after_where = None if after is None else _after(order, after, after_params)

        def query() -> str:
            inner = _instance_rows(compiled, relation).where(exp.and_(
                exp.GTE(this=col(ROW_NUMBER), expression=exp.Placeholder()),
                exp.LT(this=col(ROW_NUMBER), expression=exp.Placeholder())))
            top = exp.select(*[col(n, "q") for n, _ in columns]).from_(inner.subquery("q"))
            if after_where is not None:
                top = top.where(after_where)
            top = top.order_by(*[exp.Ordered(this=col(n, "q"), nulls_first=False)
                                 for n in order]).limit(limit)
            return exp.select(json_row(columns).as_(ROW_COLUMN),
                              *[col(n, "q") for n in order]).from_(top.subquery("q")).sql("duckdb")

        sql = self._segment_sql.get(shape, query)
        found: list[tuple[tuple, bytes]] = []
        window = max(window + window // 4, GRANULE_ROWS)
        while len(found) < limit and start < rows:
            params = list(compiled.params) + [start, start + window] + after_params
            found += [(tuple(row[1:]), row[0][:-1].encode())
                      for row in self.catalog.connection().execute(sql, params).fetchall()]
            start, window = start + window, window * 2
        return found[:limit]

    def total(self, key: str, query: exp.Expression, params: list) -> int:
        """The number of rows of `query` (a form of the query `key` names, with its `params`),
        counted once per query."""
        def count() -> int:
            tree = query.copy()
            tree.set("order", None)
            sql = exp.select(exp.Count(this=exp.Star())).from_(tree.subquery("q")).sql("duckdb")
            return one_row(self.catalog.connection(), sql, params)[0]

        return self._counts.get(key, count)

    def _columns(self, compiled: Compiled) -> list[tuple[str, str]]:
        """The query's output names and types, asked of DuckDB once per query shape."""
        sql = compiled.sql()

        def describe() -> list[tuple[str, str]]:
            rows = self.catalog.connection().execute(f"DESCRIBE {sql}", compiled.params)
            return [(r[0], r[1]) for r in rows.fetchall()]

        return self._shapes.get(sql, describe)

    def _start(self, file_name: str, after: tuple | None) -> int:
        """The number of the row to read a sorted file from: that of the last granule whose key
        is at most `after` (0 without a key, or for a file written without granules)."""
        if after is None:
            return 0
        rows, keys = self._files.get(file_name, lambda: self._read_granules(file_name))
        at = bisect.bisect_right(keys, _KEY(after)) - 1
        return rows[at] if at >= 0 else 0

    def _read_granules(self, file_name: str) -> tuple[list[int], list]:
        path = granules_file(self.catalog.segments_dir / file_name)
        if not path.exists():
            return [], []
        table = pq.read_table(path)
        rows = table[ROW_NUMBER].to_pylist()
        keys = [_KEY(key) for key in zip(*(table[k].to_pylist()
                                           for k in table.column_names if k != ROW_NUMBER))]
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


def _split(compiled: Compiled, relation: str) -> exp.Union:
    """An instance-level query over `relation` (some of its version's segments) without its
    order, in two parts: its instance rows, which need no DISTINCT (one row per instance, and an
    output singles it out: a DISTINCT would hash every matching row), and its other rows (series
    of the IDC import), distinct. The parts cannot share a row (the instance's key is null in
    the other). Its placeholders come twice."""
    level = col("level")
    others = _reading(compiled.tree.copy(), compiled, relation)
    others.set("order", None)
    others = others.where(exp.or_(
        exp.NEQ(this=level, expression=exp.Literal.string("instance")),
        exp.Is(this=level.copy(), expression=exp.Null())))
    return exp.union(_instance_rows(compiled, relation), others, distinct=False)


def _instance_rows(compiled: Compiled, relation: str | None = None) -> exp.Select:
    """The instance rows of a query (read from `relation` instead of its own, if given),
    without its order and its DISTINCT."""
    instances = _reading(compiled.tree.copy(), compiled, relation)
    instances.set("order", None)
    instances.set("distinct", None)
    return instances.where(exp.EQ(this=col("level"), expression=exp.Literal.string("instance")))


def _reading(select: exp.Select, compiled: Compiled, relation: str | None) -> exp.Select:
    """A query of the version's items made to read `relation` instead, under the items' name
    (which a clinical output names its row's patient by)."""
    if relation is None:
        return select
    return select.from_(exp.to_table(relation, quoted=True).as_(compiled.relation, quoted=True),
                        copy=False)


@dataclass(frozen=True)
class _Footer:
    """What a segment's footer tells of it, with no scan: its rows, and the INSTANCE_KEYS
    every row has (when every row is an instance's): those it may be read in the order of."""

    rows: int
    keys: frozenset[str]

    def keyed(self, key: str) -> bool:
        return key in self.keys

    @classmethod
    def read(cls, path: Path) -> _Footer:
        meta = pq.ParquetFile(path).metadata
        names = [meta.schema.column(i).name for i in range(meta.num_columns)]

        def everywhere(name: str, holds) -> bool:  # in every row group, by its statistics
            if name not in names:
                return False
            at = names.index(name)
            for group in range(meta.num_row_groups):
                stats = meta.row_group(group).column(at).statistics
                if stats is None or not stats.has_null_count or not holds(stats):
                    return False
            return True

        instances = everywhere("level", lambda s: s.null_count == 0 and s.has_min_max
                               and s.min == s.max == "instance")
        keys = frozenset(k for k in INSTANCE_KEYS
                         if instances and everywhere(k, lambda s: s.null_count == 0))
        return cls(meta.num_rows, keys)
