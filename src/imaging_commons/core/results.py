"""Materialised, ordered query results: what makes paging cheap and counting once.

The first request for a query materialises its ordered result as an in-memory Arrow table;
every page, however deep, is then a zero-copy slice of it, and the total is known once.
Versions are immutable, so a result never goes stale; it is keyed by the compiled SQL and its
parameters, and recomputed if it was evicted.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor, TimeoutError as FutureTimeout
from dataclasses import dataclass

import pyarrow as pa

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
    table: pa.Table
    sql: str

    @property
    def total(self) -> int:
        return self.table.num_rows


class ResultStore:
    def __init__(self, catalog: Catalog, max_results: int = 64, max_bytes: int = 2 << 30,
                 workers: int = 2):
        self.catalog = catalog
        self.max_results = max_results
        self.max_bytes = max_bytes
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
            result = job.result(timeout=deadline_s)
        except FutureTimeout:
            raise Pending(key) from None
        with self._lock:  # it counts against the budget now that it exists
            self._evict()
        return result

    def _evict(self) -> None:
        """Drop the least recently used results while more than `max_results` are kept or they
        take more than `max_bytes` of memory. Work in flight is never dropped, nor the newest
        result."""
        def held_bytes() -> int:
            return sum(job.result().table.nbytes for job in self._jobs.values()
                       if job.done() and job.exception() is None)

        while len(self._jobs) > 1 and (len(self._jobs) > self.max_results
                                       or held_bytes() > self.max_bytes):
            old_key, old = next(iter(self._jobs.items()))
            if not old.done():
                break
            del self._jobs[old_key]

    def _materialise(self, key: str, compiled: Compiled) -> Result:
        """One run of the query, its ORDER BY order kept in the Arrow table."""
        sql = compiled.sql("duckdb")
        table = self.catalog.connection().execute(sql, compiled.params).to_arrow_table()
        return Result(key, table, sql)

    @staticmethod
    def page(result: Result, offset: int, limit: int) -> pa.Table:
        return result.table.slice(offset, limit)
