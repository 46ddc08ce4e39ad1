"""Materialised results: bounded in number and rows, recomputed when evicted."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
from pathlib import Path

from imaging_commons.config import Archive, _running
from imaging_commons.core import results
from imaging_commons.core.commons import Commons
from imaging_commons.core.results import RecentlyUsed


def _state(modality: str) -> dict:
    return {"kind": "manifest", "version": 1, "fields": ["SOPInstanceUID"], "offset": 0,
            "filters": {"Modality": [modality]}}


def test_results_are_evicted_by_memory_budget_and_recomputed(small_archive):
    commons = Commons(small_archive)
    store = commons.results
    first = commons.page(_state("CT"), None, 5, None)
    assert first.total > 5
    held = store.run(commons.compile_state(_state("CT"), None), None).table.nbytes
    store.max_bytes = held  # room for the CT result alone
    commons.page(_state("MR"), None, 5, None)
    assert len(store._jobs) == 1  # the two went over the budget: the older (CT) was dropped
    again = commons.page(_state("CT"), None, 5, None)  # recomputed, same rows
    assert b"".join(again.rows_json) == b"".join(first.rows_json) and again.total == first.total
    store.max_bytes = 1 << 30
    commons.page(_state("MR"), None, 5, None)
    assert len(store._jobs) == 2  # within the budget both stay


def test_results_are_evicted_by_count(small_archive):
    commons = Commons(small_archive)
    commons.results.max_results = 2
    for modality in ("CT", "MR", "US", "OT"):
        commons.page(_state(modality), None, 5, None)
    assert len(commons.results._jobs) == 2


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
    state = {**_state("CT"), "fields": ["SOPInstanceUID", "SeriesInstanceUID"]}
    compiled = commons.compile_state(state, None)
    in_memory = store.run(compiled, None)
    assert in_memory.file is None and in_memory.total > 5
    store._jobs.clear()
    monkeypatch.setattr(results, "BATCH_ROWS", 2)
    store.spill_bytes = 1
    spilled = store.run(compiled, None)
    assert spilled.file is not None and spilled.file.is_file()
    assert spilled.file.parent.parent == small_archive.process_scratch_dir()
    assert spilled.table.column(0).num_chunks > 2
    for offset, limit in ((0, 1), (0, 3), (1, 2), (2, 100), (spilled.total - 1, 5), (0, 10**6)):
        assert (b"".join(spilled.json_page(offset, limit)[0])
                == b"".join(in_memory.json_page(offset, limit)[0]))
    store.max_bytes = 0  # a spilled result takes no memory: it is not evicted for memory
    store.run(commons.compile_state(_state("MR"), None), None)
    assert spilled.file.is_file() and len(store._jobs) == 2
    store.max_bytes, store.max_disk_bytes = 1 << 30, 0  # over the disk budget now
    store.run(commons.compile_state(_state("US"), None), None)
    assert not spilled.file.exists() and compiled.key not in store._jobs


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
