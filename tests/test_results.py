"""Materialised results: bounded in number and rows, recomputed when evicted."""

from __future__ import annotations

from imaging_commons.core.commons import Commons


def _state(modality: str) -> dict:
    return {"kind": "manifest", "version": 1, "fields": ["SOPInstanceUID"], "offset": 0,
            "filters": {"Modality": [modality]}}


def test_results_are_evicted_by_row_budget_and_recomputed(small_archive):
    commons = Commons(small_archive)
    store = commons.results
    store.max_rows = 10
    first = commons.page(_state("CT"), None, 5, None)  # far more than 10 rows of CT
    assert first.total > 10
    commons.page(_state("MR"), None, 5, None)
    assert len(store._jobs) == 1  # the CT result went over the budget and was dropped
    tables = {r[0] for r in commons.catalog.connection().execute(
        "SELECT table_name FROM duckdb_tables() WHERE table_name LIKE 'result_%'").fetchall()}
    assert len(tables) == 1
    again = commons.page(_state("CT"), None, 5, None)  # recomputed, same rows
    assert again.rows == first.rows and again.total == first.total


def test_results_are_evicted_by_count(small_archive):
    commons = Commons(small_archive)
    commons.results.max_results = 2
    for modality in ("CT", "MR", "US", "OT"):
        commons.page(_state(modality), None, 5, None)
    assert len(commons.results._jobs) == 2
