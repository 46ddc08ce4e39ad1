"""The search indexes a process has open: each version's index files (see `search_index`)
read through DuckDB views, with the version's collections, opened once per process."""

from __future__ import annotations

import threading

from ..catalog import Catalog, parquet_scan
from ..search_index import INDEX_COLLECTION_COLUMNS, INDEX_TABLES, build_search_index
from .models import CollectionInfo, VersionIndex
from .species import species_of

# Indexes kept open (their views): the newest version's, and the one before it, which
# requests that began before a publish may still be reading.
KEPT_INDEXES = 2


class OpenIndexes:
    """The views of the last KEPT_INDEXES versions' indexes. Thread-safe."""

    def __init__(self, catalog: Catalog):
        self.catalog = catalog
        self._indexes: dict[int, VersionIndex] = {}
        self._lock = threading.Lock()

    def index(self, version: int) -> VersionIndex:
        with self._lock:
            if version not in self._indexes:
                self._indexes[version] = self._open(version)
                for stale in list(self._indexes)[:-KEPT_INDEXES]:
                    for view in self._indexes.pop(stale).tables:
                        self.catalog.connection().execute(f"DROP VIEW IF EXISTS {view}")
            return self._indexes[version]

    def _open(self, version: int) -> VersionIndex:
        """Views over a version's index files (built first if the version has none yet), and
        its collections, read from the index's small `collections` file."""
        index = build_search_index(self.catalog, version)
        con = self.catalog.connection()
        names = [f"nbia_{table}_v{version}" for table in INDEX_TABLES]
        for name, table in zip(names, INDEX_TABLES):
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM {index.scan(table)}")
        rows = con.execute(f"SELECT {', '.join(INDEX_COLLECTION_COLUMNS)} FROM "
                           f"{parquet_scan(index.folder / 'collections.parquet')}").fetchall()
        infos = {}
        for cid, name, species_text, *rest in rows:
            species, phantom = species_of(species_text)
            infos[cid] = CollectionInfo(cid, name or cid, species, phantom, *rest)
        dates = {v.version: v.date_active for v in self.catalog.versions()}
        series, rollup, patients, facets = names
        return VersionIndex(version, series, rollup, patients, facets, infos, dates)
