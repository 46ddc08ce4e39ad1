"""Materialised, ordered query results: what makes paging cheap and counting once.

The first request for a query materialises its ordered result in memory, each row already
rendered as a JSON object by DuckDB inside the query (in parallel, no Python object per row or
value): a page, however deep, is then a slice of one buffer, and the total is known once.
The rows can be read while the result is being made, batch by batch as DuckDB converts them:
the first page of a new query is written to its client meanwhile. A result too large for
memory is written to an Arrow file on the archive's disk instead and memory-mapped: its pages
are slices of the mapping, and the system keeps in memory only the parts being read.
Versions are immutable, so a result never goes stale; it is keyed by the compiled SQL and its
parameters, and recomputed if it was evicted.
"""

from __future__ import annotations

import bisect
import itertools
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from functools import cached_property
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
from sqlglot import exp

from .catalog import Catalog
from .query import Compiled, col, leading_column
from .recently_used import RecentlyUsed
from .schema import BY_NAME

ROW_COLUMN = "row_json"
RANK_COLUMN = "leading key rank"  # the inner query's rank of its leading key, when it has one
# Rows per Arrow batch of a result: buffers of a few MB, which the allocator recycles, where one
# buffer grown to the whole result was page-faulted afresh at every doubling.
BATCH_ROWS = 16384
SHAPES_KEPT = 256  # query shapes whose rendering SQL is remembered
_FLOATS = ("FLOAT", "DOUBLE", "REAL")


class Pending(Exception):
    """The query is still running past the deadline; resubmitting `key` picks up the same work."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


class Result:
    """A query's rendered rows in order, readable while they are still arriving: the first page
    of a new query goes out as its rows are converted, and only the counts after it wait for the
    whole result. Once complete, the rows are one table (in memory, or memory-mapped from
    `file` for a result too large for memory) and every page is a slice of it."""

    def __init__(self, key: str, table: pa.Table | None = None):
        self.key = key
        self.file: Path | None = None  # set by finish() for a result spilled to a file
        self._table = table
        self._error: BaseException | None = None
        self._arrived: list[pa.RecordBatch] = []  # the rows so far, until the table is made
        self._starts = [0]  # the first row of each arrived batch, then the row after the last
        self._changed = threading.Condition()

    # ----- the materialising thread's side
    def add(self, batch: pa.RecordBatch) -> None:
        with self._changed:
            self._arrived.append(batch)
            self._starts.append(self._starts[-1] + batch.num_rows)
            self._changed.notify_all()

    def finish(self, table: pa.Table, file: Path | None = None) -> None:
        with self._changed:
            self._table, self.file = table, file
            self._arrived, self._starts = [], [0]
            self._changed.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._changed:
            self._error = error
            self._changed.notify_all()

    # ----- the readers' side
    @property
    def complete(self) -> bool:
        return self._table is not None

    @property
    def failed(self) -> bool:
        return self._error is not None

    def _wait(self, ready: Callable[[], bool], timeout: float | None) -> bool:
        """Whether `ready()` holds within `timeout`; raises the error the query ended with."""
        with self._changed:
            self._changed.wait_for(lambda: self._error is not None or ready(), timeout)
            if self._error is not None:
                raise self._error
            return ready()

    def started(self, timeout: float | None) -> bool:
        """Whether rows can be read (some arrived, or all) within `timeout`."""
        return self._wait(lambda: self._table is not None or len(self._arrived) > 0, timeout)

    def finished(self, timeout: float | None) -> bool:
        """Whether the result is complete within `timeout`."""
        return self._wait(lambda: self._table is not None, timeout)

    @property
    def table(self) -> pa.Table:
        """The whole result, once it is complete (waits for it)."""
        self.finished(None)
        assert self._table is not None  # (finished: the table is there)
        return self._table

    @property
    def total(self) -> int:
        return self.table.num_rows

    @cached_property
    def nbytes(self) -> int:
        """Memory held by the complete result, counted once: Arrow walks every chunk to count
        it, and the store sums all its results at every request (64 results took ~10 ms)."""
        return self.table.nbytes

    def discard(self) -> None:
        """Remove the result's file, if it has one. Pages still being written keep reading the
        mapping: the system frees an unlinked file once nothing maps it."""
        if self.file is not None:
            self.file.unlink(missing_ok=True)

    def json_page(self, offset: int, limit: int) -> Iterator[bytes | memoryview]:
        """Rows offset..offset+limit as a JSON array, in pieces to be written one after the
        other, each as soon as its rows have arrived. The rows lie back to back in the
        column's buffers, each followed by a comma: the array is their spans, each less its
        last comma (put back between spans), between brackets. No row is copied."""
        yield b"["
        for index, chunk in enumerate(self._chunks(offset, offset + limit)):
            if index:
                yield b","
            yield _value_bytes(chunk)[:-1]
        yield b"]"

    def _chunks(self, start: int, end: int) -> Iterator[pa.Array]:
        """The row column's arrays covering rows start..end, waiting for rows not yet there."""
        position = start
        while position < end:
            with self._changed:  # (a snapshot: finish() replaces the lists, never edits them)
                # (the condition is evaluated within this iteration only)
                self._wait(lambda: self._table is not None or self._starts[-1] > position,  # noqa: B023
                           None)
                table, arrived, starts = self._table, self._arrived, self._starts
            if table is not None:
                column = table.column(0)
                if position < column.length():
                    yield from (c for c in column.slice(position, end - position).chunks if len(c))
                return
            for index in range(bisect.bisect_right(starts, position) - 1, len(starts) - 1):
                chunk = arrived[index].column(0).slice(position - starts[index], end - position)
                if len(chunk):
                    yield chunk
                position += len(chunk)
                if position >= end:
                    return


def _value_bytes(array: pa.Array) -> memoryview:
    """The bytes of a string array's values, back to back (a slice's own only)."""
    large = pa.types.is_large_string(array.type)
    offsets = np.frombuffer(array.buffers()[1], np.int64 if large else np.int32)
    start, end = int(offsets[array.offset]), int(offsets[array.offset + len(array)])
    return memoryview(array.buffers()[2])[start:end]


def _json_value(value: exp.Expression, name: str, sql_type: str) -> exp.Expression:
    """A column's value as it goes into the row's JSON: numbers the real server sends as
    strings are cast to text (DuckDB writes a DOUBLE as Python's str() does), and NaN or
    infinity, which JSON cannot carry, become null."""
    column = BY_NAME.get(name)
    if column is not None and column.wire_string:
        return exp.cast(value, "VARCHAR")
    if sql_type in _FLOATS:
        return _finite(value)
    if sql_type.endswith("[]") and sql_type[:-2] in _FLOATS:
        item = exp.to_identifier("v")
        return exp.Transform(this=value, expression=exp.Lambda(this=_finite(item),
                                                               expressions=[item]))
    return value


def _finite(value: exp.Expression) -> exp.Expression:
    return exp.Case(ifs=[exp.If(this=exp.Anonymous(this="isfinite", expressions=[value]),
                                true=value.copy())])


def rows_as_json(compiled: Compiled, columns: list[tuple[str, str]],
                 key_ranks: dict[str, str], limit: int | None = None) -> exp.Select:
    """The compiled query with each row rendered by DuckDB as one JSON object and a comma, in
    the query's order; with `limit`, its first rows only, rendered once picked. `columns` are
    the query's output (name, DuckDB type); no two names may differ only in case (DuckDB's
    struct keys are case-insensitive). A query led by a key unique in the relation it reads
    (`key_ranks`, of Catalog.key_ranks) is sorted by that key's rank, and needs no
    DISTINCT."""
    inner, order = _ranked(compiled, key_ranks)
    if limit is not None:
        inner.set("order", order)
        return exp.select(json_row(columns).as_(ROW_COLUMN)).from_(
            inner.limit(limit).subquery("q"))
    outer = exp.select(json_row(columns).as_(ROW_COLUMN)).from_(inner.subquery("q"))
    if order is not None:  # by the subquery's columns, which no output name can shadow
        for ordered in order.expressions:
            ordered.this.set("table", exp.to_identifier("q"))
        outer.set("order", order)
    return outer


def _ranked(compiled: Compiled, key_ranks: dict[str, str]) -> tuple[exp.Select, exp.Order | None]:
    """The query without its ORDER BY, and the order of its rows: by the rank of its leading
    key (selected as RANK_COLUMN, the DISTINCT dropped) where it has one, else its own."""
    inner = compiled.tree.copy()
    order = inner.args.get("order")
    inner.set("order", None)
    rank = _leading_key_rank(inner, order, key_ranks)
    if rank is not None:
        inner.set("distinct", None)
        inner.select(col(rank).as_(RANK_COLUMN, quoted=True), copy=False)
        order = exp.Order(expressions=[exp.Ordered(this=col(RANK_COLUMN))])
    return inner, order


def json_row(columns: list[tuple[str, str]]) -> exp.Expression:
    """A row of subquery `q` (its `columns`: name, DuckDB type) as one JSON object and a comma,
    rendered by DuckDB."""
    row = exp.Struct(expressions=[
        exp.PropertyEQ(this=exp.to_identifier(name, quoted=True),
                       expression=_json_value(col(name, "q"), name, sql_type))
        for name, sql_type in columns])
    return exp.DPipe(this=exp.Anonymous(this="to_json", expressions=[row]),
                     expression=exp.Literal.string(","), safe=True)


def _leading_key_rank(select: exp.Select, order: exp.Order | None,
                      key_ranks: dict[str, str]) -> str | None:
    """The rank column that orders this query's rows, when its order starts with its first
    output, which is a unique key of the relation it reads (as it is or behind a fixed prefix,
    as a GUID is; the keys are text): that key orders the rows alone, and no two rows can be
    alike."""
    if not key_ranks:
        return None
    leading = leading_column(select, order)
    return key_ranks.get(leading[0]) if leading else None


class ResultStore:
    """Results by query, at most `max_results` of them, within `max_bytes` of memory and
    `max_disk_bytes` of files; a result larger than `spill_bytes` goes to a file."""

    def __init__(self, catalog: Catalog, max_results: int = 64, max_bytes: int = 2 << 30,
                 workers: int = 2, max_disk_bytes: int = 64 << 30):
        self.catalog = catalog
        self.max_results = max_results
        self.max_bytes = max_bytes
        self.max_disk_bytes = max_disk_bytes
        self.spill_bytes = max_bytes // 8
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="query")
        # (pages made by `once` are short reads: they do not queue behind materialisations)
        self._page_pool = ThreadPoolExecutor(max_workers=2 * workers, thread_name_prefix="page")
        self._lock = threading.Lock()
        self._results: OrderedDict[str, Result] = OrderedDict()  # least recently used first
        self._once: OrderedDict[str, Future] = OrderedDict()  # (see once)
        self._shapes = RecentlyUsed(SHAPES_KEPT)  # key ranks and query SQL -> rows_as_json SQL

    def run(self, compiled: Compiled, deadline_s: float | None) -> Result:
        """The query's result once its first rows can be read (its ORDER BY done), waiting at
        most `deadline_s`; raises Pending past it. The result may still be filling: its
        readers wait for the rows they need."""
        key = compiled.key
        with self._lock:
            result = self._results.get(key)
            if result is None or result.failed:
                result = Result(key)
                self._pool.submit(self._materialise, result, compiled)
                self._results[key] = result
            self._results.move_to_end(key)
            self._evict()
        if not result.started(deadline_s):
            raise Pending(key)
        return result

    def once(self, key: str, make: Callable[[], Any], deadline_s: float | None) -> Any:
        """What `make` returns (a page made apart from a materialised result: by key, or a
        top-k), made once per key in this store's page pool: waits at most `deadline_s` for
        it and raises Pending past it, after which the next ask waits for the same run. A run
        is forgotten once it has answered (a page is not kept: asked again, it is made again)
        or failed; at most `max_results` unanswered ones are kept."""
        with self._lock:
            future = self._once.get(key)
            if future is None or (future.done() and future.exception() is not None):
                future = self._once[key] = self._page_pool.submit(make)
                while len(self._once) > self.max_results:
                    self._once.popitem(last=False)
            self._once.move_to_end(key)
        try:
            value = future.result(timeout=deadline_s)
        except FutureTimeout:
            raise Pending(key) from None
        with self._lock:
            if self._once.get(key) is future:
                del self._once[key]
        return value

    def holds(self, key: str) -> bool:
        """Whether the query `key` names has a result here (made, or being made)."""
        with self._lock:
            result = self._results.get(key)
            return result is not None and not result.failed

    def _evict(self) -> None:
        """Drop the least recently used results while more than `max_results` are kept, or
        those in memory take more than `max_bytes`, or those in files more than
        `max_disk_bytes`. Work in flight is never dropped, nor the newest result."""
        def held_bytes(on_disk: bool) -> int:
            return sum(result.nbytes for result in self._results.values()
                       if result.complete and (result.file is not None) == on_disk)

        while len(self._results) > 1 and (len(self._results) > self.max_results
                                          or held_bytes(False) > self.max_bytes
                                          or held_bytes(True) > self.max_disk_bytes):
            old_key, old = next(iter(self._results.items()))
            if not (old.complete or old.failed):
                break
            del self._results[old_key]
            old.discard()

    def _materialise(self, result: Result, compiled: Compiled) -> None:
        """One run of the query, rendered to JSON rows in its ORDER BY order, handed to the
        result batch by batch; a result past `spill_bytes` goes on into a file, and its
        readers wait for that to be complete."""
        try:
            con = self.catalog.connection()
            con.execute("SET SESSION arrow_large_buffer_size = true")  # 64-bit offsets
            rendered = self._rendered_sql(con, compiled)
            reader = con.execute(rendered, compiled.params).to_arrow_reader(BATCH_ROWS)
            batches, held, file = [], 0, None
            for batch in reader:
                batches.append(batch)
                held += batch.nbytes
                if held > self.spill_bytes:
                    file = self._spill(reader.schema, itertools.chain(batches, reader))
                    break
                result.add(batch)
            table = (pa.ipc.open_file(pa.memory_map(str(file))).read_all() if file
                     else pa.Table.from_batches(batches, reader.schema))
        except BaseException as error:  # the readers raise it; a later run starts afresh
            result.fail(error)
            return
        with self._lock:  # it counts against the budgets once complete
            result.finish(table, file)
            self._evict()

    def _spill(self, schema: pa.Schema, batches: Iterable[pa.RecordBatch]) -> Path:
        """Write a result's batches to a new Arrow file of this store's; a failed write (a
        full disk) leaves no file behind."""
        folder = self.catalog.archive.process_scratch_dir() / "results"
        folder.mkdir(exist_ok=True)
        fd, name = tempfile.mkstemp(suffix=".arrow", dir=folder)
        os.close(fd)
        file = Path(name)
        try:
            with pa.ipc.new_file(str(file), schema) as writer:
                for batch in batches:
                    writer.write_batch(batch)
        except BaseException:
            file.unlink(missing_ok=True)
            raise
        return file

    def first_rows(self, compiled: Compiled, limit: int) -> list[bytes]:
        """The query's first `limit` rows (a top-k, by key rank where it has one), each as its
        JSON object."""
        con = self.catalog.connection()
        found = con.execute(self._rendered_sql(con, compiled, limit), compiled.params).fetchall()
        return [row[0][:-1].encode() for row in found]

    def counted(self, compiled: Compiled) -> exp.Select:
        """The query as its rows are counted: unordered, and without its DISTINCT where a
        unique leading key makes every row distinct."""
        return _ranked(compiled, self._ranks(compiled))[0]

    def ranked(self, compiled: Compiled) -> bool:
        """Whether the query is led by a unique key it can be sorted by the rank of (see
        rows_as_json): every row is distinct, so its rows are counted, and its first ones
        picked, without hashing any."""
        inner = compiled.tree
        return _leading_key_rank(inner, inner.args.get("order"), self._ranks(compiled)) is not None

    def _ranks(self, compiled: Compiled) -> dict[str, str]:
        return self.catalog.key_ranks(compiled.relation) if compiled.relation else {}

    def _rendered_sql(self, con: duckdb.DuckDBPyConnection, compiled: Compiled,
                      limit: int | None = None) -> str:
        """The SQL of rows_as_json. It depends on the query's shape (its SQL, placeholders and
        all) and the key ranks of its relation, not on the values, so it is worked out once per
        shape and ranks: the output types it needs take a DESCRIBE, and generating it another
        pass of sqlglot."""
        sql = compiled.sql("duckdb")
        ranks = self._ranks(compiled)

        def render() -> str:
            columns = con.execute(f"DESCRIBE {sql}", compiled.params).fetchall()
            return rows_as_json(compiled, [(d[0], d[1]) for d in columns], ranks,
                                limit).sql("duckdb")

        return self._shapes.get(f"{sorted(ranks)} {limit}\n{sql}", render)
