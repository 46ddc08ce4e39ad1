"""Materialised results: bounded in number and rows, recomputed when evicted."""

from __future__ import annotations

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
