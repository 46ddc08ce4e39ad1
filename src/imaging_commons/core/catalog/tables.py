"""What the catalogue's tables are made of: the item columns and their order, the keys that
can single out a row, the collections and analysis-results tables, and the SQL that shapes
a relation into the item schema."""

from __future__ import annotations

import hashlib
import re

import duckdb

from ..schema import COLUMNS, SQL_TYPES

ITEM_COLUMNS = [c.name for c in COLUMNS]

# Columns that can single out an item row, which manifests and queries are often ordered by.
# The IDC import writes each one's rank beside it (its place in the sort order of that column's
# values across the import's segments): a result led by one of them, where it is unique in the
# version, is then sorted by integers instead of long strings that share long prefixes.
RANKED_KEYS = ("SeriesInstanceUID", "SOPInstanceUID", "crdc_series_uuid", "crdc_instance_uuid",
               "gcs_url")
# The order item segments are written in (and compaction keeps): a collection's, a patient's,
# a study's and a series' rows lie together.
ITEM_ORDER = ("collection_id", "PatientID", "StudyInstanceUID", "SeriesInstanceUID",
              "SOPInstanceUID")
# What an ingest looks up of the instances it meets in the active version (published_instances)
PUBLISHED_COLUMNS = ("SOPInstanceUID", "crdc_instance_uuid", "collection_id", "analysis_result_id")


# Names of the item segments ingest writes (and compaction merges them into): instance rows that
# name blobs of the archive's own, unlike the IDC import's series.
INGESTED_PREFIX = "local-items"
COMPACTED_PREFIX = "compacted-items"


def rank_column(key: str) -> str:
    """The rank of `key`'s value (a name no attribute can have: it holds a space)."""
    return f"{key} rank"


COLLECTION_COLUMNS = {
    "collection_id": "VARCHAR",
    "collection_name": "VARCHAR",
    "cancer_type": "VARCHAR",
    "tumor_location": "VARCHAR",
    "species": "VARCHAR",
    "subject_count": "BIGINT",
    "doi": "VARCHAR",
    "description": "VARCHAR",
    "program": "VARCHAR",
    "image_types": "VARCHAR",
    "supporting_data": "VARCHAR",
    "status": "VARCHAR",
    "date_updated": "VARCHAR",
    "license_short_name": "VARCHAR",
    "license_long_name": "VARCHAR",
    "license_url": "VARCHAR",
    "location": "VARCHAR",
    "restricted": "BOOLEAN",
}

ANALYSIS_RESULT_COLUMNS = {
    "analysis_result_id": "VARCHAR",
    "title": "VARCHAR",
    "doi": "VARCHAR",
    "location": "VARCHAR",
    "subject_count": "BIGINT",
    "collections": "VARCHAR",
    "modalities": "VARCHAR",
    "cancer_type": "VARCHAR",
    "date_updated": "VARCHAR",
    "license_short_name": "VARCHAR",
    "description": "VARCHAR",
}



def items_select(con: duckdb.DuckDBPyConnection, source_sql: str) -> str:
    """A SELECT that shapes any relation into the item schema, in schema column order:
    columns the source lacks become typed NULLs."""
    present = {d[0] for d in con.execute(f"SELECT * FROM ({source_sql}) LIMIT 0").description}
    cols = ", ".join(
        f"CAST({_q(c) if c in present else 'NULL'} AS {SQL_TYPES[c]}) AS {_q(c)}"
        for c in ITEM_COLUMNS
    )
    return f"SELECT {cols} FROM ({source_sql})"


def empty_items_sql() -> str:
    return "SELECT " + ", ".join(
        f"CAST(NULL AS {SQL_TYPES[c]}) AS {_q(c)}" for c in ITEM_COLUMNS
    ) + " WHERE false"


def normalise_collection_id(name: str) -> str:
    """IDC's collection_id form: lower case, '-' and ' ' become '_' (TCGA-LUAD -> tcga_luad)."""
    return re.sub(r"[-\s]", "_", name.strip().lower())


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def one_row(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> tuple:
    """The row of a query that answers exactly one (an aggregate without GROUP BY)."""
    row = con.execute(sql, params or []).fetchone()
    if row is None:
        raise RuntimeError(f"expected a row from: {sql[:200]}")
    return row


def stable_pk(uid: str) -> int:
    """A stable integer key for a UID (NBIA's APIs address series and images by integer id):
    52 bits of its md5, so it survives any re-import and fits a JSON number exactly."""
    return int.from_bytes(hashlib.md5(uid.encode()).digest()[:8], "little") >> 12


def stable_pk_sql(column_sql: str) -> str:
    """The same key computed inside DuckDB, so a query can filter on it."""
    return f"(md5_number_upper({column_sql}) >> 12)"
