"""The NBIA search index on disk: built once per version, in a temporary folder renamed into
place, read by every later process through views, and answering what the catalogue holds.
Expected values are counted independently with DuckDB over the version's item rows."""

from __future__ import annotations

import shutil
import threading
from dataclasses import fields
from pathlib import Path

import pytest

from imaging_commons.config import Archive
from imaging_commons.core import search_index as index_module
from imaging_commons.core.front_door import Commons
from imaging_commons.core.search import Criteria, SeriesRecord, Sort
from imaging_commons.core.search.service import SERIES_COLUMNS
from imaging_commons.core.search_index import (
    INDEX_TABLES,
    SERIES_ORDER,
    build_search_index,
    index_dir,
    read_index,
)

INDEX_FILES = {*INDEX_TABLES, "chunks.json", "collections.parquet"}


def answers(commons: Commons) -> tuple:
    """What a server would answer from the index: a page of the simple search, the series of
    the active version, a text search and the collections."""
    search = commons.search
    scope = search.scope(None)
    return (search.search(scope, Criteria(), Sort(), 0, 50),
            search.series(scope, Criteria()),
            search.text_search(scope, "CT"),
            scope.visible_collections())


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(f.relative_to(folder)): (f.stat().st_ino, f.stat().st_mtime_ns)
            for f in folder.rglob("*")}


def leftovers(archive: Archive) -> list[str]:
    return [p.name for p in (archive.catalog_dir / "indexes").glob(".nbia-v*")]


def test_publish_builds_the_index_and_processes_read_it_without_rebuilding(small_archive,
                                                                          monkeypatch):
    """The fixture's publish built version 1's index: no process builds it again."""
    folder = index_dir(Commons(small_archive).catalog, 1)
    assert {f.name for f in folder.iterdir()} == INDEX_FILES
    built = files_of(folder)

    def no_rebuild(*args):
        raise AssertionError("the index was built again")

    monkeypatch.setattr(index_module, "_write_index", no_rebuild)
    first = Commons(small_archive)
    assert index_dir(first.catalog, 1) == folder
    expected = answers(first)
    assert leftovers(small_archive) == []
    second = Commons(Archive(small_archive.root))
    assert answers(second) == expected
    assert expected[1]  # (the samples' series, not an empty answer)
    assert files_of(folder) == built


def test_the_index_is_read_through_views_only(small_archive):
    """Nothing of the index is held in memory: its tables are views over its files."""
    commons = Commons(small_archive)
    index = commons.search.index(1)
    con = commons.catalog.connection()
    tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views() "
                                       "WHERE NOT internal").fetchall()}
    assert not tables & set(index.tables)
    assert set(index.tables) <= views


def test_stale_indexes_drop_only_their_views(small_archive):
    commons = Commons(small_archive)
    catalog = commons.catalog
    for _ in range(2):  # two more versions holding the same rows
        catalog.publish_version(catalog.version(1).manifest)
    indexes = [commons.search.index(v) for v in (1, 2, 3)]
    con = catalog.connection()
    views = {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    assert not set(indexes[0].tables) & views
    assert set(indexes[1].tables) | set(indexes[2].tables) <= views
    assert index_dir(catalog, 1).is_dir()  # (the files stay for the next process)
    assert commons.search.index(1).series == indexes[0].series  # opened again from disk


@pytest.fixture
def unindexed(small_archive) -> Archive:
    """The samples' archive as a publish killed before building its index left it."""
    shutil.rmtree(index_dir(Commons(small_archive).catalog, 1))
    return small_archive


def test_a_half_built_index_left_behind_is_ignored_and_removed(unindexed):
    """A build that died left its temporary folder (a publish killed before its version's index
    was in place): the index is built beside it, and the next build (holding the build lock, so
    no other build is live) removes it."""
    indexes = unindexed.catalog_dir / "indexes"
    junk = indexes / ".nbia-v1.tmp-xyz"
    junk.mkdir(parents=True)
    (junk / "series.parquet").write_bytes(b"not parquet")
    (indexes / ".nbia-v7.tmp-0123").mkdir()  # another version's
    commons = Commons(unindexed)
    page = commons.search.search(commons.search.scope(None), Criteria(), Sort(), 0, 10)
    assert page.total_patients > 0
    assert {f.name for f in index_dir(commons.catalog, 1).iterdir()} == INDEX_FILES
    assert leftovers(unindexed) == []


def test_builds_at_once_make_one_index(unindexed, monkeypatch):
    """Processes that open a missing index together: one builds, the others wait for it and
    take it (each Commons has its own DuckDB database, as a process would)."""
    writes = []
    write = index_module._write_index

    def counted_write(catalog, version, folder, since=None):
        writes.append(version)
        write(catalog, version, folder, since)

    monkeypatch.setattr(index_module, "_write_index", counted_write)
    catalogs = [Commons(Archive(unindexed.root)).catalog for _ in range(3)]
    folders, errors = [], []
    together = threading.Barrier(len(catalogs))

    def build(catalog):
        together.wait()
        try:
            folders.append(build_search_index(catalog, 1).folder)
        except Exception as e:  # (reported by the assertion below)
            errors.append(e)

    threads = [threading.Thread(target=build, args=(c,)) for c in catalogs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert writes == [1]
    assert folders == [index_dir(catalogs[0], 1)] * 3
    assert leftovers(unindexed) == []


def test_a_build_that_loses_the_race_keeps_the_index_in_place(unindexed, monkeypatch):
    """Where the build lock does not reach (another host), a build may finish second: its
    rename fails, and the index already in place is kept."""
    catalog = Commons(unindexed).catalog
    folder = index_dir(catalog, 1)
    write = index_module._write_index

    def other_host_finishes_first(catalog, version, tmp, since=None):
        write(catalog, version, tmp, since)
        shutil.copytree(tmp, folder)
        (folder / "from-the-other-host").touch()

    monkeypatch.setattr(index_module, "_write_index", other_host_finishes_first)
    assert build_search_index(catalog, 1).folder == folder
    assert (folder / "from-the-other-host").exists()
    assert leftovers(unindexed) == []


# ----- the index answers what the catalogue holds ----------------------------------------------
@pytest.fixture(scope="module")
def demo(demo_archive_dir) -> Commons:
    """The demo archive's active version (IDC v25 and pydicom's samples), its index built as a
    server would build it."""
    return Commons(Archive(demo_archive_dir))


def counted(commons: Commons, sql: str) -> dict:
    """{collection_id: value} of an independent query over the active version's item rows."""
    items = commons.catalog.relation(commons.catalog.active_version(), "items")
    con = commons.catalog.connection()
    return dict(con.execute(sql.format(items=items) + " GROUP BY collection_id").fetchall())


def test_patients_per_collection_and_modality(demo):
    """Patients are (collection, PatientID): series without a PatientID share one patient."""
    search = demo.search
    scope = search.scope(None)
    patients = "SELECT collection_id, count(DISTINCT (collection_id, PatientID)) FROM {items}"
    assert dict(search.value_counts(scope, "collection_id", Criteria())) == counted(
        demo, patients)
    assert dict(search.value_counts(scope, "collection_id", Criteria(modalities=["MR"]))) == (
        counted(demo, patients + " WHERE Modality = 'MR'"))
    ct_patients = counted(demo, patients + " WHERE Modality = 'CT'")
    page = search.search(scope, Criteria(modalities=["CT"]), Sort(), 0, 5)
    assert page.total_patients == sum(ct_patients.values())


@pytest.mark.slow
def test_the_whole_series_stream_is_in_series_order_with_each_collections_counts(demo):
    """Whole lists stream from the index file unsorted: its rows are in SERIES_ORDER (DuckDB
    sorts NULLs last), and they hold each collection's series and images (one pass over the
    catalogue's million series for both checks)."""
    attribute = dict(zip(SERIES_COLUMNS, (f.name for f in fields(SeriesRecord))))
    order = [attribute[c.strip()] for c in SERIES_ORDER.split(",")]
    keys = []
    series: dict[str, int] = {}
    images: dict[str, int] = {}
    for batch in demo.search.iter_series(demo.search.scope(None), Criteria()):
        for row in batch:
            keys.append(tuple((getattr(row, a) is None, getattr(row, a) or "") for a in order))
            series[row.collection_id] = series.get(row.collection_id, 0) + 1
            images[row.collection_id] = images.get(row.collection_id, 0) + row.image_count
    assert len(keys) > 1_000_000
    assert keys == sorted(keys)
    assert series == counted(demo, "SELECT collection_id, count(DISTINCT SeriesInstanceUID) "
                                   "FROM {items}")
    assert images == counted(demo, "SELECT collection_id, sum(instance_count)::BIGINT "
                                   "FROM {items}")
    assert len(series) > 100 and all(isinstance(n, int) for n in images.values())


# ----- built from the previous version's index ------------------------------------------------
def index_tables(catalog, folder: Path) -> dict[str, list]:
    """Every table of an index folder: `series` in its stored order, the others sorted."""
    con = catalog.connection()
    index = read_index(folder)
    out = {"collections": con.execute(f"SELECT * FROM read_parquet('{folder}/collections.parquet')"
                                      f" ORDER BY ALL").fetchall()}
    for table in INDEX_TABLES:
        order = "" if table == "series" else " ORDER BY ALL"
        out[table] = con.execute(f"SELECT * FROM {index.scan(table)}{order}").fetchall()
    return out


def chunk_of(folder: Path) -> dict[str, tuple[str, int]]:
    """{collection_id: (its chunk, the inode of the chunk's series file)}."""
    return {cid: (chunk.name, (folder / "series" / f"{chunk.name}.parquet").stat().st_ino)
            for chunk in read_index(folder).chunks for cid in chunk.collections}


@pytest.mark.parametrize("chunk_rows", [index_module.CHUNK_ROWS, 2])
def test_an_index_built_from_the_previous_one_is_the_index_built_whole(tmp_path, monkeypatch,
                                                                        chunk_rows):
    """Publish builds each version's index from the previous one's, working out only the
    collections the version changed: new ones, one that instances moved out of and into, one
    whose facts alone changed (its name), and a publish of clinical data only. Each is the same,
    table by table and row by row, as an index built from all of the version's item rows; with
    chunks of 2 series, each collection is a chunk of its own, and the chunks of collections a
    publish left alone are the previous index's files."""
    from imaging_commons.core.ingest import ingest, publish, stage_clinical
    from test_segments import sample_batches

    monkeypatch.setattr(index_module, "CHUNK_ROWS", chunk_rows)
    archive = Archive(tmp_path / "archive", compact_every_s=0)
    catalog = Commons(archive).catalog
    batches = sample_batches(3)
    ingest(catalog, batches[0], "first")
    ingest(catalog, batches[1], "second")
    publish(catalog)
    ingest(catalog, batches[2], "third")
    publish(catalog)
    ingest(catalog, batches[0][:5], "third")  # five instances move from "first"
    publish(catalog)
    ingest(catalog, batches[1][:1], "second", metadata={"collection_name": "Two"})
    publish(catalog)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,age\nx,3\n")
    stage_clinical(catalog, clinical, "first", "trial")
    last = publish(catalog)
    assert last == 5
    names = {}
    for version in range(1, last + 1):
        whole = tmp_path / f"whole-v{version}"
        whole.mkdir()
        index_module._write_index(catalog, version, whole)
        assert index_tables(catalog, index_dir(catalog, version)) == index_tables(catalog, whole)
        names[version] = dict(catalog.connection().execute(
            f"SELECT collection_id, collection FROM {read_index(whole).scan('series')}"
        ).fetchall())
    assert names[3]["second"] == "second" and names[4]["second"] == "Two"
    if chunk_rows == 2:
        chunks = {v: chunk_of(index_dir(catalog, v)) for v in range(1, last + 1)}
        assert len({name for name, _ in chunks[1].values()}) == 2
        kept = {2: {"first", "second"}, 3: {"second"}, 4: {"first", "third"},
                5: {"first", "second", "third"}}  # (clinical data changes no series)
        for version, collections in kept.items():
            for cid, chunk in chunks[version].items():
                assert (chunk == chunks[version - 1].get(cid)) == (cid in collections), (
                    version, cid)


def test_chunks_stay_in_order_few_and_kept_where_untouched():
    """Many publishes, each changing, adding or removing a few collections of random sizes:
    the chunks hold every collection once, in collection order; a chunk holding no changed
    collection and no new one in its range is kept; no two neighbours both hold fewer than
    CHUNK_ROWS / 2 series."""
    import random

    rng = random.Random(7)
    limit = index_module.CHUNK_ROWS
    chunks: tuple = ()
    sizes: dict[str, int] = {}
    for _ in range(200):
        changed = set(rng.sample(sorted(sizes), min(len(sizes), rng.randint(0, 3))))
        changed |= {f"c{rng.randint(0, 999):03d}" for _ in range(rng.randint(0, 3))}
        for cid in changed:
            if cid in sizes and rng.random() < 0.2:
                del sizes[cid]  # every series moved out
            else:
                sizes[cid] = rng.choice([1, 50, limit // 8, limit // 3, 2 * limit])
        fresh = {cid: sizes[cid] for cid in sorted(changed) if cid in sizes}
        plan = index_module._plan(chunks, frozenset(changed), fresh)
        for part in plan:
            if isinstance(part, index_module.Chunk):
                assert part in chunks and not changed & part.collections.keys()
                assert not any(part.first <= cid <= part.last for cid in fresh)
        chunks = tuple(part if isinstance(part, index_module.Chunk) else index_module.Chunk(
            f"n{rng.random()}", {cid: n for cid, _, n in part}) for part in plan)
        listed = [cid for chunk in chunks for cid in chunk.collections]
        assert listed == sorted(sizes)
        assert all(chunk.collections == {c: sizes[c] for c in chunk.collections}
                   for chunk in chunks)
        assert all(a.rows >= limit // 2 or b.rows >= limit // 2
                   for a, b in zip(chunks, chunks[1:]))
    assert len(chunks) <= 4 * sum(sizes.values()) // limit + 1
