"""The core's front door: one object per archive that the HTTP adapters and the CLI call.

It ties the catalogue, the query layer, materialised results, page tokens and accounts
together, and applies the visibility rule (restricted collections) in one place.
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

from sqlglot import exp

from ..config import Archive
from .accounts import Accounts, User
from .cache import RecentlyUsed
from .catalog import Catalog, CatalogError
from .keyset import KeysetPage, KeysetPages
from .paging import PageTokens
from .query import Compiled, FilterError, attributes, col, compile_select
from .results import Pending, Result, ResultStore
from .schema import CONTINUOUS_NUMERIC, DICOM_METADATA_COLUMNS
from .sign_ins import SignInThrottle

GUID_PREFIX = "dg.4DFC/"
COMPILED_KEPT = 256  # compiled queries remembered for the pages that follow
# The largest first page made by a top-k (see Commons.page): a larger page is a good part of
# its result, which is better materialised at once, readying the later pages too.
TOP_K_MAX_ROWS = 10_000

# IDC manifest column selectors, in the order rows are sorted by
MANIFEST_SELECTORS: dict[str, exp.Expression] = {
    "CRDC_Study_GUID": exp.DPipe(this=exp.Literal.string(GUID_PREFIX),
                                 expression=col("crdc_study_uuid")),
    "CRDC_Series_GUID": exp.DPipe(this=exp.Literal.string(GUID_PREFIX),
                                  expression=col("crdc_series_uuid")),
    "CRDC_Instance_GUID": exp.DPipe(this=exp.Literal.string(GUID_PREFIX),
                                    expression=col("crdc_instance_uuid")),
    "GCS_URL": col("gcs_url"),
    "Collection_ID": col("collection_id"),
    "Patient_ID": col("PatientID"),
    "StudyInstanceUID": col("StudyInstanceUID"),
    "SeriesInstanceUID": col("SeriesInstanceUID"),
    "SOPInstanceUID": col("SOPInstanceUID"),
    "Source_DOI": col("source_DOI"),
}
RANGE_SUFFIXES = ("eq", "gt", "gte", "lt", "lte", "btw", "ebtw", "btwe", "ebtwe")
DICOM_METADATA_ORDER = ("collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
                        "SOPInstanceUID")
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


class Commons:
    def __init__(self, archive: Archive):
        self.archive = archive
        self.catalog = Catalog(archive)
        self.results = ResultStore(self.catalog)
        self.keyset = KeysetPages(self.catalog)
        self._attr_cache: dict[int, set[str]] = {}
        self._compiled = RecentlyUsed(COMPILED_KEPT)  # request state -> its compiled query
        self._lock = threading.Lock()

    @cached_property
    def accounts(self) -> Accounts:
        return Accounts(self.archive.database_url, token_lifetime_s=self.archive.token_lifetime_s)

    @cached_property
    def sign_ins(self) -> SignInThrottle:
        return SignInThrottle(self.archive.login_free_failures, self.archive.login_max_delay_s)

    def sign_in(self, username: str, password: str, address: str | None) -> User | None:
        """The user a password signs in, or None; raises TooManyFailures, unchecked, while
        the name or the caller's address must wait after too many wrong passwords."""
        self.sign_ins.check(username, address)
        user = self.accounts.authenticate(username, password)
        if user is None:
            self.sign_ins.failed(username, address)
        else:
            self.sign_ins.succeeded(username)
        return user

    @cached_property
    def search(self):
        """The NBIA search core; its per-version indexes are built once per process."""
        from .search import CatalogSearch

        return CatalogSearch(self)

    def warm_up(self) -> None:
        """Open the active version's search index before the first request needs it (a server
        calls this in the background at start)."""
        try:
            self.search.index(self.catalog.active_version())
        except CatalogError:
            return  # nothing published yet: nothing to warm

    @cached_property
    def tokens(self) -> PageTokens:
        return PageTokens(self.archive.secret(), self.accounts)

    # ----- visibility ---------------------------------------------------------------------
    def hidden_collections(self, user: User | None, version: int) -> frozenset[str]:
        """Restricted collections of a version that the caller has no grant for."""
        restricted = self.catalog.restricted_collections(version)
        if not restricted or (user is not None and user.is_admin):
            return frozenset()
        granted = self.accounts.granted_collections(user) if user else frozenset()
        return restricted - granted

    # ----- descriptive endpoints ----------------------------------------------------------
    def collections(self, version: int, user: User | None) -> list[dict]:
        """Collections of a version the caller may see; `active` = in the active version too."""
        hidden = self.hidden_collections(user, version)
        con = self.catalog.connection()
        items = self.catalog.relation(version, "items")
        rel = self.catalog.relation(version, "collections")
        current = self.catalog.relation(self.catalog.active_version(), "collections")
        cur = con.execute(f"""
            SELECT c.* REPLACE (
                       coalesce(c.subject_count, s.subjects) AS subject_count,
                       list_filter(c.idc_data_versions, v -> v <= {version}) AS idc_data_versions),
                   c.collection_id IN (SELECT collection_id FROM {current}) AS active
            FROM {rel} c LEFT JOIN (
                SELECT collection_id, count(DISTINCT PatientID) AS subjects FROM {items}
                WHERE collection_id IN (SELECT collection_id FROM {rel} WHERE subject_count IS NULL)
                GROUP BY 1) s USING (collection_id)
            ORDER BY c.collection_id""")
        names = [d[0] for d in cur.description]
        return [r for r in (dict(zip(names, row)) for row in cur.fetchall())
                if r["collection_id"] not in hidden]

    def analysis_results(self, version: int) -> list[dict]:
        """Analysis results of a version; `active` = in the active version too."""
        if not self.catalog.version(version).manifest.get("analysis_results"):
            return []
        active = self.catalog.active_version()
        current = (f"SELECT analysis_result_id FROM "
                   f"{self.catalog.relation(active, 'analysis_results')}"
                   if self.catalog.version(active).manifest.get("analysis_results")
                   else "SELECT NULL AS analysis_result_id")
        con = self.catalog.connection()
        cur = con.execute(f"""
            SELECT * REPLACE (list_filter(idc_data_versions, v -> v <= {version})
                              AS idc_data_versions),
                   analysis_result_id IN ({current}) AS active
            FROM {self.catalog.relation(version, 'analysis_results')} ORDER BY 1""")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def populated_columns(self, version: int) -> set[str]:
        """Item columns with at least one value in a version: the registry lists only those."""
        with self._lock:
            if version not in self._attr_cache:
                con = self.catalog.connection()
                rel = self.catalog.relation(version, "items")
                names = [d[0] for d in con.execute(f"SELECT * FROM {rel} LIMIT 0").description]
                counts = con.execute(
                    "SELECT " + ", ".join(f'count("{n}")' for n in names) + f" FROM {rel}"
                ).fetchone() or ()
                self._attr_cache[version] = {n for n, c in zip(names, counts) if c}
            return self._attr_cache[version]

    def attribute_registry(self, version: int,
                           data_source: str | None = None) -> dict[str, list[dict]]:
        """data source name -> attributes (name, data_type, units), range-suffixed names included
        for continuous ones."""
        populated = self.populated_columns(version)
        out: dict[str, list[dict]] = {}
        for attr in attributes(self.catalog, version).values():
            if attr.table is None and attr.name not in populated:
                continue
            if data_source and attr.source != data_source:
                continue
            names = [attr.name]
            if attr.data_type == CONTINUOUS_NUMERIC:
                names += [f"{attr.name}_{s}" for s in RANGE_SUFFIXES]
            out.setdefault(attr.source, []).extend(
                {"name": n, "data_type": attr.data_type, "units": attr.units} for n in names)
        return out

    def data_sources(self, version: int) -> list[dict]:
        sources = [{"name": "dicom_pivot", "data_type": "Image Data"}]
        clinical = self.catalog.version(version).manifest.get("clinical", [])
        sources += [{"name": f"clinical.{c['source']}",
                     "data_type": "Clinical, Biospecimen, and Mutation Data"} for c in clinical]
        return sources

    def programs(self, version: int) -> list[str]:
        con = self.catalog.connection()
        rel = self.catalog.relation(version, "collections")
        return [r[0] for r in con.execute(
            f"SELECT DISTINCT program FROM {rel} WHERE program IS NOT NULL ORDER BY 1").fetchall()]

    # ----- paged queries ------------------------------------------------------------------
    def compile_state(self, state: dict, user: User | None) -> Compiled:
        """Compile a paged request's state (kind, version, filters, fields) for this caller.
        Every page of a result asks for the same query, and compiling it was most of what a
        small page cost: the compiled query is remembered, under the state and the collections
        hidden from this caller (worked out afresh each time, as grants change)."""
        hidden = self.hidden_collections(user, state["version"])
        key = json.dumps([{k: v for k, v in state.items() if k not in ("offset", "after")},
                          sorted(hidden)], sort_keys=True, default=str)
        return self._compiled.get(key, lambda: self._compile(state, hidden))

    def _compile(self, state: dict, hidden: frozenset[str]) -> Compiled:
        version = state["version"]
        kind = state["kind"]
        if kind == "manifest":
            outputs: list[tuple[str, exp.Expression]] = [
                (name, MANIFEST_SELECTORS[name]) for name in state["fields"]]
            return compile_select(self.catalog, version, state["filters"], outputs, hidden)
        if kind == "query":
            return compile_select(self.catalog, version, state["filters"],
                                  self.query_outputs(version, state["fields"]), hidden)
        if kind == "dicomMetadata":
            names = [*DICOM_METADATA_ORDER,
                     *(c for c in DICOM_METADATA_COLUMNS if c not in DICOM_METADATA_ORDER)]
            outputs = [(c, col(c)) for c in names]
            return compile_select(self.catalog, version, {}, outputs, hidden, distinct=False,
                                  extra_where=exp.EQ(this=col("level"),
                                                     expression=exp.Literal.string("instance")))
        raise CatalogError(f"Unknown result kind {kind}")

    def query_outputs(self, version: int, fields: list[str]) -> list[tuple[str, exp.Expression]]:
        attrs = attributes(self.catalog, version)
        by_lower = {k.lower(): a for k, a in attrs.items()}
        unknown = [f for f in fields if f.lower() not in by_lower and f not in UID_FIELDS]
        if unknown:
            raise FilterError(f"Invalid field(s): {', '.join(unknown)}", unknown)
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

    def page(self, state: dict, user: User | None, page_size: int,
             deadline_s: float | None) -> AnyPage:
        """One page of a paged request, as soon as its rows can be read. Raises Pending when
        the query's first run has no rows to read by the deadline, or a page made apart from a
        result (below) is not made by then.

        dicomMetadata and instance-level manifests and queries are paged by key (keyset.py);
        the rest, series-level answers, from materialised results. Which one a manifest or
        query is, is worked out for its first page; a later page's state tells it (a key, or
        an offset alone), so a next page, which may be served on the event loop, asks nothing
        of the engine to know it. Pages not read from a materialised result are made in the
        result store's page pool under the same deadline (see ResultStore.once), so that a
        slow one is answered by a 202 whose token resumes the same work. The first page (up to
        TOP_K_MAX_ROWS rows) of a series-level answer led by a unique key (for IDC's series:
        the series UID, its CRDC GUID or URL; see rows_as_json) is a top-k and a count, without
        the rest of the rows: most callers read one page, and the whole result is materialised
        when the second is asked for. (Others are materialised at once: a count of distinct
        rows costs about what their materialisation does.)"""
        compiled = self.compile_state(state, user)
        ordered = state["kind"] == "dicomMetadata"
        first = not state.get("offset")
        if ordered or "after" in state or (
                first and self.keyset.pages_instances(compiled, state["version"])):
            if state.get("offset") and state.get("after") is None:
                raise FilterError("This next_page token was made by an earlier release of the "
                                  "server: start the query again")
            total = self._instances_seen(user, state["version"]) if ordered else None
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

    def _instances_seen(self, user: User | None, version: int) -> int | None:
        """The instance rows of a version the caller may see, from its per-collection counts
        (None where the version has none)."""
        counts = self.catalog.instance_counts(version)
        if counts is None:
            return None
        hidden = self.hidden_collections(user, version)
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


__all__ = ["AnyPage", "Commons", "Page", "Pending", "FilterError", "CatalogError",
           "MANIFEST_SELECTORS"]
