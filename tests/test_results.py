"""Materialised results: bounded in number and rows, recomputed when evicted."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.config import Archive, _running
from imaging_commons.core import results
from imaging_commons.core.front_door import Commons
from imaging_commons.core.pages import Page
from imaging_commons.core.recently_used import RecentlyUsed
from imaging_commons.core.results import ROW_COLUMN, Result, ResultStore


def _state(modality: str) -> dict:
    return {"kind": "manifest", "version": 1, "fields": manifest_fields(["SeriesInstanceUID"]),
            "offset": 0,
            "filters": {"Modality": [modality]}}


def test_results_are_evicted_by_memory_budget_and_recomputed(small_archive):
    commons = Commons(small_archive)
    store = commons.results
    first = commons.page(_state("CT"), None, 5, None)
    assert first.total > 5
    held = store.run(commons.compile_state(_state("CT"), None), None).table.nbytes
    store.max_bytes = held  # room for the CT result alone
    settled(store, commons.page(_state("MR"), None, 5, None))
    assert len(store._results) == 1  # the two went over the budget: the older (CT) was dropped
    again = commons.page(_state("CT"), None, 5, None)  # recomputed, same rows
    assert b"".join(again.rows_json()) == b"".join(first.rows_json()) and again.total == first.total
    store.max_bytes = 1 << 30
    settled(store, commons.page(_state("MR"), None, 5, None))
    assert len(store._results) == 2  # within the budget both stay


def settled(store: ResultStore, page: Page) -> None:
    """Wait for the page's result to be complete and counted against the store's budgets: it
    is counted under the store's lock, held from its completion to the count."""
    assert page.total >= 0
    with store._lock:
        pass


def test_results_are_evicted_by_count(small_archive):
    commons = Commons(small_archive)
    commons.results.max_results = 2
    for modality in ("CT", "MR", "US", "OT"):
        settled(commons.results, commons.page(_state(modality), None, 5, None))
    assert len(commons.results._results) == 2


def test_recently_used_forgets_the_least_recently_used_entry():
    made: list[str] = []

    def maker(key: str):
        return lambda: made.append(key) or key.upper()

    memo = RecentlyUsed(2)
    assert [memo.get(k, maker(k)) for k in ("a", "b", "a", "c")] == ["A", "B", "A", "C"]
    assert made == ["a", "b", "c"]  # "a" again came from memory
    memo.get("a", maker("a"))  # still held: "b" was the least recently used
    memo.get("b", maker("b"))
    assert made == ["a", "b", "c", "b"]


def test_a_result_too_large_for_memory_is_read_from_a_file(small_archive, monkeypatch):
    """Spilled to a memory-mapped Arrow file in this process's scratch folder, in many batches:
    every page is the same bytes as from memory, the file counts against the disk budget, not
    the memory one, and evicting the result removes it."""
    commons = Commons(small_archive)
    store = commons.results
    state = {**_state("CT"),
             "fields": manifest_fields(["SeriesInstanceUID", "StudyInstanceUID"])}
    compiled = commons.compile_state(state, None)
    in_memory = store.run(compiled, None)
    assert in_memory.file is None and in_memory.total > 5
    store._results.clear()
    monkeypatch.setattr(results, "BATCH_ROWS", 2)
    store.spill_bytes = 1
    spilled = store.run(compiled, None)
    assert spilled.file is not None and spilled.file.is_file()
    assert spilled.file.parent.parent == small_archive.process_scratch_dir()
    assert spilled.table.column(0).num_chunks > 2
    for offset, limit in ((0, 1), (0, 3), (1, 2), (2, 100), (spilled.total - 1, 5), (0, 10**6)):
        assert (b"".join(spilled.json_page(offset, limit))
                == b"".join(in_memory.json_page(offset, limit)))
    store.max_bytes = 0  # a spilled result takes no memory: it is not evicted for memory
    store.run(commons.compile_state(_state("MR"), None), None)
    assert spilled.file.is_file() and len(store._results) == 2
    store.max_bytes, store.max_disk_bytes = 1 << 30, 0  # over the disk budget now
    store.run(commons.compile_state(_state("US"), None), None)
    assert not spilled.file.exists() and compiled.key not in store._results


def test_process_scratch_folders_of_ended_processes_are_removed(tmp_path):
    archive = Archive(tmp_path / "archive")
    host = socket.gethostname()
    ended = archive.scratch_dir / f"{host}-{_pid_not_running()}"
    running = archive.scratch_dir / f"{host}-{os.getppid()}"
    elsewhere = archive.scratch_dir / f"other-host-{_pid_not_running()}"
    for folder in (ended, running, elsewhere):
        (folder / "results").mkdir(parents=True)
    mine = archive.process_scratch_dir()
    assert mine.is_dir() and mine.name == f"{host}-{os.getpid()}"
    assert not ended.exists() and running.is_dir() and elsewhere.is_dir()


def _pid_not_running() -> int:
    return next(pid for pid in itertools.count(4_000_000) if not _running(pid))


def test_a_process_scratch_folder_goes_when_the_process_ends(tmp_path):
    code = ("import sys; from imaging_commons.config import Archive; "
            "folder = Archive(sys.argv[1]).process_scratch_dir(); "
            "(folder / 'results').mkdir(); (folder / 'results' / 'r.arrow').write_bytes(b'x'); "
            "print(folder)")
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "archive")],
                          capture_output=True, text=True, check=True)
    folder = Path(done.stdout.strip())
    assert folder.parent == Archive(tmp_path / "archive").scratch_dir and not folder.exists()


def _rows_batch(rows: list[dict]) -> pa.RecordBatch:
    return pa.record_batch({ROW_COLUMN: pa.array([orjson.dumps(r) + b"," for r in rows])})


def test_a_page_is_read_while_its_result_is_still_arriving():
    """A page's rows are handed out as their batches arrive, the rest once they come or the
    result completes; together they are the page the complete result gives."""
    rows = [{"i": i} for i in range(7)]
    batches = [_rows_batch(rows[a:b]) for a, b in ((0, 3), (3, 5), (5, 7))]
    result = Result("key")
    assert not result.started(0)
    page = result.json_page(1, 5)
    result.add(batches[0])
    assert result.started(0) and not result.complete
    first: list[bytes] = []  # read in a thread: a reader waiting for the whole would hang
    early = threading.Thread(target=lambda: first.extend(bytes(next(page)) for _ in range(2)),
                             daemon=True)
    early.start()
    early.join(5)
    assert first == [b"[", b'{"i":1},{"i":2}']
    rest: list[bytes] = []
    reader = threading.Thread(target=lambda: rest.extend(bytes(p) for p in page))
    reader.start()  # it waits for rows still to come
    result.add(batches[1])
    result.finish(pa.Table.from_batches(batches))
    reader.join(10)
    assert orjson.loads(b'[{"i":1},{"i":2}' + b"".join(rest)) == rows[1:6]
    assert b"".join(result.json_page(1, 5)) == b'[{"i":1},{"i":2}' + b"".join(rest)
    assert result.total == 7


def test_readers_of_a_failed_result_get_its_error():
    result = Result("key")
    waiting: list[BaseException] = []

    def read() -> None:
        try:
            list(result.json_page(0, 5))
        except OSError as error:
            waiting.append(error)

    reader = threading.Thread(target=read)
    reader.start()
    result.add(_rows_batch([{"i": 0}]))
    result.fail(OSError(28, "No space left on device"))
    reader.join(10)
    assert [e.errno for e in waiting] == [28] and result.failed
    with pytest.raises(OSError):
        result.started(0)
