"""How a page of a paged answer (a manifest, a query, the instance metadata) is made.

A paged request is described by its state: kind, version, filters, fields, the offset of the
page and, for pages read by key, the last row's key (`after`). A manifest's fields are its
outputs ([name, catalogue column, prefix] each, see query.Output); a query's, attribute names.
The state is compiled once per caller's hidden collections, and each page is made one of three
ways (see Pager.page)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from dataclasses import dataclass

from sqlglot import exp

from .catalog import Catalog
from .errors import InvalidRequest
from .keyset import KeysetPage, KeysetPages
from .query import Compiled, Output, attributes, col, compile_select
from .recently_used import RecentlyUsed
from .results import Result, ResultStore
from .schema import DICOM_METADATA_COLUMNS

COMPILED_KEPT = 256  # compiled queries remembered for the pages that follow
# The largest first page made by a top-k (see Pager.page): a larger page is a good part of
# its result, which is better materialised at once, readying the later pages too.
TOP_K_MAX_ROWS = 10_000
INSTANCE_METADATA_ORDER = ("collection_id", "PatientID", "StudyInstanceUID",
                           "SeriesInstanceUID", "SOPInstanceUID")
UID_FIELDS = ("SOPInstanceUID", "SeriesInstanceUID", "StudyInstanceUID", "PatientID",
              "crdc_study_uuid", "crdc_series_uuid", "crdc_instance_uuid", "gcs_url")


@dataclass(frozen=True)
class Page:
    """Rows offset..offset+limit of a result. Its rows can be read while the result is still
    being made (`complete` false); its counts and the next page's state wait for the whole."""

    result: Result
    state: dict
    offset: int
    limit: int
    sql: str  # the SQL that ran, with its parameters

    @property
    def complete(self) -> bool:
        return self.result.complete

    def finished(self, timeout: float | None) -> bool:
        """Waits up to `timeout` seconds for the whole result; whether it is complete."""
        return self.result.finished(timeout)

    def rows_json(self) -> Iterator[bytes | memoryview]:
        """The page's rows as a JSON array, in pieces."""
        return self.result.json_page(self.offset, self.limit)

    @property
    def total(self) -> int:
        return self.result.total

    @property
    def returned(self) -> int:
        return max(0, min(self.limit, self.total - self.offset))

    @property
    def next_state(self) -> dict | None:
        end = self.offset + self.returned
        return {**self.state, "offset": end} if end < self.total else None


AnyPage = Page | KeysetPage  # what a paged request gets: both are read the same way


def manifest_outputs(state: dict) -> list[Output]:
    fields = state.get("fields")
    if not isinstance(fields, list) or not all(
            isinstance(f, list) and 2 <= len(f) <= 3 and all(isinstance(p, str) for p in f)
            for f in fields):
        raise InvalidRequest("A manifest's fields are [name, column, prefix] lists")
    return [Output(*f) for f in fields]


class Pager:
    """The pages of one catalogue's paged requests, from its result store and keyset pages."""

    def __init__(self, catalog: Catalog, results: ResultStore, keyset: KeysetPages):
        self.catalog = catalog
        self.results = results
        self.keyset = keyset
        self._compiled = RecentlyUsed(COMPILED_KEPT)  # request state -> its compiled query

    def compile(self, state: dict, hidden: frozenset[str]) -> Compiled:
        """Compile a paged request's state (kind, version, filters, fields), less the `hidden`
        collections. Every page of a result asks for the same query, and compiling it was most
        of what a small page cost: the compiled query is remembered, under the state and the
        hidden collections (worked out afresh by the caller each time, as grants change)."""
        key = json.dumps([{k: v for k, v in state.items() if k not in ("offset", "after")},
                          sorted(hidden)], sort_keys=True, default=str)
        return self._compiled.get(key, lambda: self._compile(state, hidden))

    def _compile(self, state: dict, hidden: frozenset[str]) -> Compiled:
        version = state["version"]
        kind = state["kind"]
        if kind == "manifest":
            outputs = [(o.name, o.expression()) for o in manifest_outputs(state)]
            return compile_select(self.catalog, version, state["filters"], outputs, hidden)
        if kind == "query":
            return compile_select(self.catalog, version, state["filters"],
                                  self.query_outputs(version, state["fields"]), hidden)
        if kind == "dicomMetadata":
            names = [*INSTANCE_METADATA_ORDER,
                     *(c for c in DICOM_METADATA_COLUMNS if c not in INSTANCE_METADATA_ORDER)]
            return compile_select(self.catalog, version, {}, [(c, col(c)) for c in names],
                                  hidden, distinct=False,
                                  extra_where=exp.EQ(this=col("level"),
                                                     expression=exp.Literal.string("instance")))
        raise InvalidRequest(f"Unknown result kind {kind}")

    def query_outputs(self, version: int, fields: list[str]) -> list[tuple[str, exp.Expression]]:
        attrs = attributes(self.catalog, version)
        by_lower = {k.lower(): a for k, a in attrs.items()}
        unknown = [f for f in fields if f.lower() not in by_lower and f not in UID_FIELDS]
        if unknown:
            raise InvalidRequest(f"Invalid field(s): {', '.join(unknown)}", unknown)
        outputs: list[tuple[str, exp.Expression]] = []
        for f in fields:
            attr = by_lower.get(f.lower())
            if attr is None or attr.table is None:
                outputs.append((attr.name if attr else f, col(attr.name if attr else f)))
            else:  # a clinical value of the row's patient
                sub = exp.select(exp.func("min", col(attr.name, "clin"))).from_(
                    exp.to_table(attr.table, quoted=True).as_("clin")).where(
                    exp.EQ(this=col("PatientID", "clin"),
                           expression=col("PatientID", self.catalog.relation(version, "items"))))
                outputs.append((attr.name, exp.Subquery(this=sub)))
        return outputs

    def page(self, state: dict, hidden: frozenset[str], page_size: int,
             deadline_s: float | None) -> AnyPage:
        """One page of a paged request, less the `hidden` collections, as soon as its rows can
        be read. Raises Pending when the query's first run has no rows to read by the
        deadline, or a page made apart from a result (below) is not made by then.

        dicomMetadata and instance-level manifests and queries are paged by key (keyset.py);
        the rest, series-level answers, from materialised results. Which one a manifest or
        query is, is worked out for its first page; a later page's state tells it (a key, or
        an offset alone), so a next page, which may be served on the event loop, asks nothing
        of the engine to know it. Pages not read from a materialised result are made in the
        result store's page pool under the same deadline (see ResultStore.once), so that a
        slow one is answered by a 202 whose token resumes the same work. The first page (up to
        TOP_K_MAX_ROWS rows) of a series-level answer led by a unique key (for IDC's series:
        the series UID, its CRDC UUID, as it is or behind a prefix, or its URL; see
        rows_as_json) is a top-k and a count, without the rest of the rows: most callers read
        one page, and the whole result is materialised when the second is asked for. (Others
        are materialised at once: a count of distinct rows costs about what their
        materialisation does.)"""
        compiled = self.compile(state, hidden)
        ordered = state["kind"] == "dicomMetadata"
        first = not state.get("offset")
        if ordered or "after" in state or (
                first and self.keyset.pages_instances(compiled, state["version"])):
            if state.get("offset") and state.get("after") is None:
                raise InvalidRequest("This next_page token was made by an earlier release of "
                                     "the server: start the query again")
            total = self._instances_seen(hidden, state["version"]) if ordered else None
            page = self.results.once(
                f"page {page_size} {json.dumps(state.get('after'))} {compiled.key}",
                lambda: (self.keyset.ordered_page(compiled, state, state["version"], page_size,
                                                  total)
                         if ordered else self.keyset.top_page(compiled, state, page_size)),
                deadline_s)
            return dataclasses.replace(page, state=state, sql=echoed_sql(compiled))
        if (first and page_size <= TOP_K_MAX_ROWS and not self.results.holds(compiled.key)
                and self.results.ranked(compiled)):
            rows, total = self.results.once(f"top {page_size} {compiled.key}",
                                            lambda: self._first_rows(compiled, page_size),
                                            deadline_s)
            return KeysetPage(rows, state, 0, total, None, echoed_sql(compiled), by_key=False)
        result = self.results.run(compiled, deadline_s)
        return Page(result, state, int(state.get("offset", 0)), page_size, echoed_sql(compiled))

    def _instances_seen(self, hidden: frozenset[str], version: int) -> int | None:
        """The instance rows of a version outside the hidden collections, from its
        per-collection counts (None where the version has none)."""
        counts = self.catalog.instance_counts(version)
        if counts is None:
            return None
        return sum(n for collection, n in counts.items() if collection not in hidden)

    def _first_rows(self, compiled: Compiled, limit: int) -> tuple[list[bytes], int]:
        """A ranked answer's first `limit` rows and its count."""
        total = self.keyset.total(compiled.key, self.results.counted(compiled), compiled.params)
        return self.results.first_rows(compiled, limit), total


def echoed_sql(compiled: Compiled) -> str:
    """The SQL of a query as a page tells it (`sql=True`), with its parameters."""
    sql = compiled.sql()
    if compiled.params:
        sql += "\n-- parameters: " + ", ".join(repr(p) for p in compiled.params)
    return sql
