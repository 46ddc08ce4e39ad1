"""Publish: the stage becomes the next immutable version, atomically, and the active one."""

from __future__ import annotations

import datetime as dt
import shutil

import pyarrow as pa

from ..catalog import (
    COLLECTION_COLUMNS,
    INGESTED_PREFIX,
    ITEM_ORDER,
    Catalog,
    _q,
    copy_to_parquet,
    parquet_scan,
    write_parquet_atomic,
)
from ..errors import Conflict
from ..keyset import write_indexes
from ..search_index import IndexChange, build_search_index
from .writers import exclusive


@exclusive
def publish(catalog: Catalog, date_active: str | None = None) -> int:
    """Turn the stage into the next version, atomically, and make it active.

    The work follows the stage, not the archive: the staged rows become one new segment, and
    the instances they replace in the previous version are retired from this one by a small
    tombstone file; no segment already published is read whole or rewritten."""
    stage = catalog.stage()
    if not stage:
        raise Conflict("Nothing is staged: ingest or clinical-import something first.")
    state = catalog._state()
    previous_number = state["active"]
    previous = catalog.version(previous_number).manifest if previous_number else {}
    if previous.get("stage_id") == stage.get("id"):
        # a publish that stopped between the flip and clearing the stage: it is done already
        catalog.clear_stage()
        return state["active"]
    number = max(state["versions"], default=0) + 1
    con = catalog.connection()

    items, retired = list(previous.get("items", [])), list(previous.get("retired", []))
    touched: dict[str, set] = {"collection_id": set(), "analysis_result_id": set()}
    # instance rows per collection: the previous version's, with the staged rows added and
    # those they replace taken away (unknown while a version of an earlier release is active)
    counts = dict(previous.get("instances", {}) if previous_number else {})
    known = not previous_number or "instances" in previous
    if stage.get("items"):
        staged = f"read_parquet('{catalog.staging_dir / stage['items']}')"
        segment = catalog.new_segment_path(INGESTED_PREFIX)
        copy_to_parquet(con, f"""
            SELECT * REPLACE ({number}::BIGINT AS version_min, NULL::BIGINT AS version_max)
            FROM {staged} ORDER BY {', '.join(ITEM_ORDER)}""", segment)
        write_indexes(catalog, segment)
        items.append(segment.name)
        for key, values in touched.items():
            values.update(r[0] for r in con.execute(f"SELECT DISTINCT {key} FROM {staged}")
                          .fetchall() if r[0] is not None)
        for collection, n in con.execute(f"SELECT collection_id, count(*) FROM {staged} "
                                         "WHERE level = 'instance' GROUP BY 1").fetchall():
            counts[collection] = counts.get(collection, 0) + n
        if previous_number:
            # the previous version's rows of the staged instances: retired in this one (among
            # those ingest looked up, when it read them from that version; see _stage_run)
            lookups = stage.get("published") or {}
            rows = (parquet_scan(catalog.staging_dir / lookups["file"])
                    if lookups.get("version") == previous_number and lookups.get("file")
                    else catalog.relation(previous_number, "items"))
            replaced = con.execute(f"""
                SELECT SOPInstanceUID, collection_id, analysis_result_id FROM {rows}
                WHERE SOPInstanceUID IN (SELECT SOPInstanceUID FROM {staged})""").to_arrow_table()
            for collection in replaced["collection_id"].to_pylist():
                counts[collection] = counts.get(collection, 0) - 1
            if replaced.num_rows:
                tombstones = catalog.new_segment_path("retired")
                write_parquet_atomic(pa.table({
                    "SOPInstanceUID": replaced["SOPInstanceUID"],
                    "retired_in": pa.array([number] * replaced.num_rows, pa.int64())}),
                    tombstones)
                retired.append(tombstones.name)
                for key, values in touched.items():
                    values.update(v for v in replaced[key].to_pylist() if v is not None)

    clinical = [c for c in previous.get("clinical", [])
                if (c["source"], c["collection_id"]) not in
                {(s["source"], s["collection_id"]) for s in stage.get("clinical", [])}]
    for entry in stage.get("clinical", []):
        dest = catalog.segments_dir / entry["file"]
        shutil.copyfile(catalog.staging_dir / entry["file"], dest)
        clinical.append(entry)

    manifest = {
        "date_active": date_active or dt.date.today().isoformat(),
        "source": "ingest",
        "items": items,
        "retired": retired,
        "clinical": clinical,
        "stage_id": stage["id"],
    }
    if known:
        manifest["instances"] = {c: n for c, n in sorted(counts.items()) if n}
    present = _present(catalog, previous_number, manifest, number, touched)
    manifest["collections"] = [_next_membership_table(
        catalog, previous.get("collections", []), stage.get("collections", {}),
        present["collection_id"], "collection_id", number, "collections")]
    manifest["analysis_results"] = [_next_membership_table(
        catalog, previous["analysis_results"], {}, present["analysis_result_id"],
        "analysis_result_id", number, "analysis-results")] if previous.get(
        "analysis_results") else []
    published = catalog.publish_version(manifest, number=number)
    catalog.clear_stage()
    build_search_index(catalog, published, IndexChange(previous_number, frozenset(
        touched["collection_id"] | set(stage.get("collections", {})))) if previous_number
        else None)
    return published


def _present(catalog: Catalog, previous: int | None, manifest: dict, number: int,
             touched: dict[str, set]) -> dict[str, list[str]]:
    """For each key (collection_id, analysis_result_id): the values that have item rows in the
    new version. Those the publish did not touch are as in the previous version; the touched
    ones are looked up in the new version's rows, by value (segments are sorted by
    collection, so the lookup reads little)."""
    con = catalog.connection()
    out = {}
    for key, values in touched.items():
        kind = "collections" if key == "collection_id" else "analysis_results"
        before: set[str] = set()
        if previous and catalog.version(previous).manifest.get(kind):
            before = {r[0] for r in con.execute(
                f"SELECT {key} FROM {catalog.relation(previous, kind)}").fetchall()}
        found = {r[0] for r in con.execute(
            f"SELECT DISTINCT {key} FROM ({catalog.items_sql(manifest, number)}) "
            f"WHERE list_contains(?, {key})", [sorted(values)]).fetchall()} if values else set()
        out[key] = sorted((before - values) | found)
    return out


def _next_membership_table(catalog: Catalog, previous_files: list[str], staged: dict,
                           present: list[str], key: str, number: int, prefix: str) -> str:
    """Carry a collections-like table forward: staged rows override, and every row whose key
    is `present` (has items in the new version) gets that version appended to
    idc_data_versions."""
    con = catalog.connection()
    prev = " UNION ALL BY NAME ".join(
        f"SELECT * FROM read_parquet('{catalog.segments_dir / f}')" for f in previous_files)
    if staged:
        cols = list(COLLECTION_COLUMNS)
        new = pa.table({c: [({**{"collection_id": k}, **v}).get(c) for k, v in staged.items()]
                        for c in cols})
        con.register("staged_rows", new)
        casts = ", ".join(f"CAST({_q(c)} AS {t}) AS {_q(c)}" for c, t in COLLECTION_COLUMNS.items())
        staged_sql = f"SELECT {casts} FROM staged_rows"
        if prev:
            # metadata given at ingest wins; what it leaves out is kept from before
            merged_cols = ", ".join(
                f"coalesce(s.{_q(c)}, p.{_q(c)}) AS {_q(c)}" for c in cols if c != key)
            prev = f"""
                SELECT p.* REPLACE (p.{_q(key)} AS {_q(key)})
                FROM ({prev}) p WHERE p.{_q(key)} NOT IN (SELECT {_q(key)} FROM ({staged_sql}))
                UNION ALL BY NAME
                SELECT s.{_q(key)}, {merged_cols},
                       coalesce(p.idc_data_versions, []::BIGINT[]) AS idc_data_versions
                FROM ({staged_sql}) s LEFT JOIN ({prev}) p USING ({_q(key)})"""
        else:
            prev = f"SELECT *, []::BIGINT[] AS idc_data_versions FROM ({staged_sql})"
    path = catalog.new_segment_path(prefix)
    try:
        copy_to_parquet(con, f"""
            SELECT * REPLACE (CASE WHEN list_contains(?, {_q(key)})
                              THEN list_append(idc_data_versions, {number})
                              ELSE idc_data_versions END AS idc_data_versions)
            FROM ({prev}) ORDER BY {_q(key)}""", path, [present])
    finally:
        if staged:
            con.unregister("staged_rows")
    return path.name
