"""The catalogue on disk: item segments, version manifests, `published.json`, the stage, the
writer lock and DuckDB views per version (`store`); the item columns, keys and tables
(`tables`); atomic file writes (`files`)."""

from .files import (
    copy_to_parquet,
    parquet_scan,
    sync_folder,
    write_json_atomic,
    write_parquet_atomic,
)
from .store import WRITER_BUSY, Catalog, NothingPublished, Version, WriterBusy
from .tables import (
    ANALYSIS_RESULT_COLUMNS,
    COLLECTION_COLUMNS,
    COMPACTED_PREFIX,
    INGESTED_PREFIX,
    ITEM_COLUMNS,
    ITEM_ORDER,
    PUBLISHED_COLUMNS,
    RANKED_KEYS,
    _q,
    empty_items_sql,
    items_select,
    normalise_collection_id,
    one_row,
    rank_column,
    stable_pk,
    stable_pk_sql,
)

__all__ = ["ANALYSIS_RESULT_COLUMNS", "COLLECTION_COLUMNS", "COMPACTED_PREFIX", "INGESTED_PREFIX",
           "ITEM_COLUMNS", "ITEM_ORDER", "PUBLISHED_COLUMNS", "RANKED_KEYS", "WRITER_BUSY",
           "Catalog", "NothingPublished", "Version", "WriterBusy", "_q", "copy_to_parquet",
           "empty_items_sql", "items_select", "normalise_collection_id", "one_row",
           "parquet_scan", "rank_column", "stable_pk", "stable_pk_sql", "sync_folder",
           "write_json_atomic", "write_parquet_atomic"]
