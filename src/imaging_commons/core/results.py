"""Materialised, ordered query results: what makes paging cheap and counting once.

The first request for a query materialises its ordered result into an in-memory DuckDB table;
every page, however deep, is then a range scan on the table's row ids, and the total is known
once. Versions are immutable, so a result never goes stale; it is keyed by the
compiled SQL and its parameters, and recomputed if it was evicted.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass

from .catalog import Catalog
from .query import Compiled


class Pending(Exception):
    """The query is still running past the deadline; resubmitting `key` picks up the same work."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class Result:
    key: str
    table: str
    total: int
    columns: tuple[str, ...]
    sql: str


class ResultStore:
    def __init__(self, catalog: Catalog, max_results: int = 64, max_rows: int = 20_000_000,
                 workers: int = 2):
        self.catalog = catalog
        self.max_results = max_results
        self.max_rows = max_rows
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="query")
        self._lock = threading.Lock()
        self._jobs: "OrderedDict[str, Future[Result]]" = OrderedDict()

    @staticmethod
    def key_for(compiled: Compiled) -> str:
        text = json.dumps([compiled.sql(), compiled.params], default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def run(self, compiled: Compiled, deadline_s: float | None) -> Result:
        """The materialised result, waiting at most `deadline_s`; raises Pending past it."""
        key = self.key_for(compiled)
        with self._lock:
            job = self._jobs.get(key)
            if job is None or (job.done() and job.exception() is not None):
                job = self._pool.submit(self._materialise, key, compiled)
                self._jobs[key] = job
            self._jobs.move_to_end(key)
            self._evict()
        try:
            return job.result(timeout=deadline_s)
        except FutureTimeout:
            raise Pending(key) from None

    def _evict(self) -> None:
        """Drop the least recently used results while more than `max_results` are kept or they
        hold more than `max_rows` rows (what bounds the memory they take). Work in flight is
        never dropped, nor the newest result."""
        def held_rows() -> int:
            return sum(job.result().total for job in self._jobs.values()
                       if job.done() and job.exception() is None)

        while len(self._jobs) > 1 and (len(self._jobs) > self.max_results
                                       or held_rows() > self.max_rows):
            old_key, old = next(iter(self._jobs.items()))
            if not old.done():
                break
            del self._jobs[old_key]
            if old.exception() is None:
                self.catalog.connection().execute(f'DROP TABLE IF EXISTS "{old.result().table}"')

    def _materialise(self, key: str, compiled: Compiled) -> Result:
        """One sort: DuckDB keeps an ORDER BY's order when it creates the table, so a row's
        position in the result is its rowid and a page is a rowid range."""
        con = self.catalog.connection()
        table = f"result_{key}"
        sql = compiled.sql("duckdb")
        con.execute(f'CREATE OR REPLACE TABLE "{table}" AS {sql}', compiled.params)
        total = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
        columns = tuple(e.alias_or_name for e in compiled.tree.expressions)
        return Result(key, table, total, columns, sql)

    def page(self, result: Result, offset: int, limit: int) -> list[dict]:
        con = self.catalog.connection()
        # through Arrow: its row dicts are built in C++, a third faster than Python's zip
        return con.execute(f'SELECT * FROM "{result.table}" WHERE rowid >= ? AND rowid < ? '
                           f'ORDER BY rowid', [offset, offset + limit]).to_arrow_table().to_pylist()
