"""Import of the real IDC catalogue shipped by the `idc-index-data` package (IDC release v25).

IDC series are known at series level only: one item row per series, with the public
`s3://idc-open-data/<crdc_series_uuid>/*` URL, and no instance rows are ever invented.
Series of earlier releases come from `prior_versions_index`, so every release 1..25 is a
version whose series set is the one IDC held then.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .catalog import (
    ITEM_ORDER,
    RANKED_KEYS,
    Catalog,
    _q,
    copy_to_parquet,
    items_select,
    one_row,
    rank_column,
)
from .errors import Conflict, Unavailable
from .ingest.writers import exclusive
from .search_index import build_search_index


@dataclass(frozen=True, slots=True)
class ImportSummary:
    series: int
    prior_series: int
    collections: int
    analysis_results: int
    versions: int
    active: int


def index_dir() -> Path:
    import idc_index_data

    if idc_index_data.IDC_INDEX_PARQUET_FILEPATH is None:
        raise Unavailable("the idc-index-data package holds no idc_index.parquet")
    return Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent


def _series_rows_sql(d: Path, current: bool) -> str:
    """The current (v25) series, or the prior releases' series, in the item schema."""
    latest = f"""
        SELECT i.collection_id, i.analysis_result_id, i.PatientID, i.SeriesInstanceUID,
               i.StudyInstanceUID, i.source_DOI, i.PatientAge, i.PatientSex, i.StudyDate,
               i.StudyDescription, i.BodyPartExamined, i.Modality, i.SOPClassUID,
               i.TransferSyntaxUID, i.Manufacturer, i.ManufacturerModelName, i.SeriesDate,
               i.SeriesDescription, i.SeriesNumber, i.instanceCount AS instance_count,
               i.license_short_name, i.crdc_series_uuid, i.series_aws_url AS gcs_url,
               CAST(round(i.series_size_MB * 1000000) AS BIGINT) AS series_size_bytes,
               i.series_revised_idc_version AS version_min, NULL AS version_max
        FROM read_parquet('{d / "idc_index.parquet"}') i"""
    prior = f"""
        SELECT p.collection_id, p.PatientID, p.SeriesInstanceUID, p.StudyInstanceUID,
               p.Modality, p.crdc_series_uuid, p.series_aws_url AS gcs_url,
               CAST(round(p.series_size_MB * 1000000) AS BIGINT) AS series_size_bytes,
               p.min_idc_version AS version_min, p.max_idc_version AS version_max
        FROM read_parquet('{d / "prior_versions_index.parquet"}') p"""
    return f"""
        WITH s AS ({latest if current else prior})
        SELECT s.*, 'series' AS level, c.program_id AS program, c.species AS tcia_species,
               c.tumor_locations AS tcia_tumorLocation
        FROM s LEFT JOIN read_parquet('{d / "collections_index.parquet"}') c
             USING (collection_id)"""


@exclusive
def import_idc(catalog: Catalog, progress=None) -> ImportSummary:
    """Import the IDC index into an archive that has no published version yet (holding the
    writer lock, as every writer does)."""
    if catalog._state()["versions"]:
        raise Conflict("import-idc builds versions 1..25 and must run on a new archive "
                       "(this one already has published versions).")
    d = index_dir()
    con = catalog.connection()
    step = progress or (lambda msg: None)

    step("series")
    # current and prior series in segments of their own: a query on the active version then
    # scans the current ones alone (DuckDB's statistics rule the prior segment out) instead of
    # filtering every prior series away each time
    items_paths = [catalog.new_segment_path("idc-series"),
                   catalog.new_segment_path("idc-series-prior")]
    # each key's rank is worked out across both segments, so that ranks compare between them
    # (each on the key alone: a window over the whole rows would sort them all five times)
    con.execute(f"""
        CREATE TEMP TABLE imported AS SELECT *, row_number() OVER () AS row_no FROM (
            SELECT *, true AS current FROM ({items_select(con, _series_rows_sql(d, True))})
            UNION ALL
            SELECT *, false AS current FROM ({items_select(con, _series_rows_sql(d, False))}))""")
    ranks = [f"(SELECT row_no, dense_rank() OVER (ORDER BY {_q(k)})::INTEGER "
             f"AS {_q(rank_column(k))} FROM imported WHERE {_q(k)} IS NOT NULL)"
             for k in RANKED_KEYS]
    joined = "imported " + " ".join(f"LEFT JOIN {r} USING (row_no)" for r in ranks)
    for path, current in zip(items_paths, (True, False)):
        copy_to_parquet(con, f"SELECT * EXCLUDE (current, row_no) FROM {joined} "
                             f"WHERE current = {current} ORDER BY {', '.join(ITEM_ORDER)}", path)
    con.execute("DROP TABLE imported")
    src = f"read_parquet({[str(p) for p in items_paths]})"
    versions = con.execute(
        f"SELECT idc_version, version_timestamp FROM "
        f"read_parquet('{d / 'version_metadata_index.parquet'}') ORDER BY 1").fetchall()
    last = versions[-1][0]
    # the releases each collection / analysis result appears in, from its series' ranges
    membership = f"""
        WITH ranges AS (
            SELECT DISTINCT {{key}} AS key, version_min, coalesce(version_max, {last}) AS vmax
            FROM {src} WHERE {{key}} IS NOT NULL)
        SELECT key, list(DISTINCT v ORDER BY v) AS idc_data_versions
        FROM ranges, range(version_min, vmax + 1) t(v) GROUP BY key"""

    step("collections")
    collections_path = catalog.new_segment_path("idc-collections")
    copy_to_parquet(con, f"""
        SELECT c.collection_id, c.collection_name, c.cancer_types AS cancer_type,
               c.tumor_locations AS tumor_location, c.species, c.subjects AS subject_count,
               c.sources[1].source_doi AS doi, c.description, c.program_id AS program,
               array_to_string(list_distinct(list_transform(c.sources, s -> s.ImageTypes)), ', ')
                   AS image_types,
               c.supporting_data, c.status, c.updated AS date_updated,
               c.sources[1].license.license_short_name AS license_short_name,
               c.sources[1].license.license_long_name AS license_long_name,
               c.sources[1].license.license_url AS license_url,
               'US' AS location, false AS restricted, m.idc_data_versions
        FROM read_parquet('{d / "collections_index.parquet"}') c
        JOIN ({membership.format(key="collection_id")}) m ON m.key = c.collection_id
        ORDER BY c.collection_id""", collections_path)

    step("analysis results")
    analysis_path = catalog.new_segment_path("idc-analysis-results")
    copy_to_parquet(con, f"""
        SELECT a.analysis_result_id, a.analysis_result_title AS title, a.source_DOI AS doi,
               'US' AS location, a.subjects AS subject_count, a.collections, a.modalities,
               NULL::VARCHAR AS cancer_type, a.updated AS date_updated,
               a.license_short_name, a.description, m.idc_data_versions
        FROM read_parquet('{d / "analysis_results_index.parquet"}') a
        JOIN ({membership.format(key="analysis_result_id")}) m ON m.key = a.analysis_result_id
        ORDER BY a.analysis_result_id""", analysis_path)

    step("versions")
    unique = _unique_keys(con, src, last)
    for number, date in versions:
        catalog.publish_version({
            "unique_keys": unique[number],
            "date_active": str(date)[:10],
            "source": "idc-index-data",
            "items": [p.name for p in items_paths],
            "collections": [collections_path.name],
            "analysis_results": [analysis_path.name],
            "clinical": [],
            "instances": {},  # (IDC's series are known at series level only)
        }, number=number, active=(number == last))
    counts = one_row(con, f"SELECT count(*) FILTER (WHERE version_max IS NULL), "
                          f"count(*) FILTER (WHERE version_max IS NOT NULL) FROM {src}")
    (n_coll,) = one_row(con, f"SELECT count(*) FROM read_parquet('{collections_path}')")
    (n_ar,) = one_row(con, f"SELECT count(*) FROM read_parquet('{analysis_path}')")
    step("search index")
    build_search_index(catalog, last)
    return ImportSummary(counts[0], counts[1], n_coll, n_ar, len(versions), last)


def _unique_keys(con, src: str, last: int) -> dict[int, list[str]]:
    """For each release, the ranked keys that every one of its series has, each a different
    value (see Catalog.key_ranks). Worked out from version ranges: a key is not unique in the
    releases where a row lacks it, nor where two rows with one value overlap."""
    out = {number: set(RANKED_KEYS) for number in range(1, last + 1)}
    for key in RANKED_KEYS:
        spans = con.execute(f"""
            SELECT DISTINCT version_min, coalesce(version_max, {last}) FROM {src}
            WHERE {_q(key)} IS NULL""").fetchall()
        shared = con.execute(f"""
            SELECT list((version_min, coalesce(version_max, {last}))) FROM {src}
            WHERE {_q(key)} IS NOT NULL GROUP BY {_q(key)} HAVING count(*) > 1""").fetchall()
        for (ranges,) in shared:
            seen: set[int] = set()
            for low, high in ranges:
                span = set(range(low, high + 1))
                spans.extend((v, v) for v in span & seen)
                seen |= span
        for low, high in spans:
            for number in range(low, high + 1):
                out[number].discard(key)
    return {number: sorted(keys) for number, keys in out.items()}
