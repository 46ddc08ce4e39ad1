"""Paging without HTTP: next_page tokens (minted, opened, tampered with, another caller's) and
pages read by key over a small real archive (first, next and last pages, and their totals)."""

from __future__ import annotations

import orjson
import pytest

from imaging_commons.api.idc.params import manifest_fields
from imaging_commons.config import Archive
from imaging_commons.core import keyset
from imaging_commons.core.errors import InvalidRequest
from imaging_commons.core.front_door import Commons
from imaging_commons.core.keyset import KeysetPage
from imaging_commons.core.paging import InvalidPageToken

STATE = {"kind": "dicomMetadata", "version": 1, "filters": {}, "fields": [], "offset": 0}


def test_a_token_opens_to_the_state_it_was_minted_for(small_archive):
    tokens = Commons(small_archive).tokens
    state = {**STATE, "offset": 40, "after": ["pydicom_samples", "p1", None, "1.2", "1.2.3"]}
    assert tokens.open(tokens.mint(state, "alice"), "alice") == state
    assert tokens.open(tokens.mint(state, None), None) == state


@pytest.mark.parametrize("opened_by", ["bob", None])
def test_a_token_is_refused_to_another_caller(small_archive, opened_by):
    tokens = Commons(small_archive).tokens
    with pytest.raises(InvalidPageToken):
        tokens.open(tokens.mint(STATE, "alice"), opened_by)
    with pytest.raises(InvalidPageToken):
        tokens.open(tokens.mint(STATE, None), "bob")


@pytest.mark.parametrize("tamper", [
    lambda t: t[:40] + ("A" if t[40] != "A" else "B") + t[41:],  # one character changed
    lambda t: t[:-4],  # cut short
    lambda t: "not-a-token",
    lambda t: "",
])
def test_a_tampered_token_is_refused_as_an_invalid_request(small_archive, tamper):
    tokens = Commons(small_archive).tokens
    with pytest.raises(InvalidPageToken) as refused:
        tokens.open(tamper(tokens.mint(STATE, "alice")), "alice")
    assert isinstance(refused.value, InvalidRequest)  # (answered 400 by either API)
    assert str(refused.value) == "Invalid next_page token"


def test_a_token_of_another_archive_is_refused(small_archive, tmp_path):
    other = Commons(Archive(tmp_path / "other")).tokens
    with pytest.raises(InvalidPageToken):
        Commons(small_archive).tokens.open(other.mint(STATE, "alice"), "alice")


def instance_rows(commons: Commons, version: int) -> int:
    items = commons.catalog.relation(version, "items")
    return commons.catalog.connection().execute(
        f"SELECT count(*) FROM {items} WHERE level = 'instance'").fetchone()[0]


def all_pages(commons: Commons, state: dict, size: int) -> list[KeysetPage]:
    """Every page from `state` on, each next one from the state its token carries."""
    pages, tokens = [], commons.tokens
    while state is not None:
        page = commons.page(state, None, size, None)
        assert isinstance(page, KeysetPage)
        pages.append(page)
        state = page.next_state and tokens.open(tokens.mint(page.next_state, None), None)
    return pages


def test_instance_metadata_pages_by_key_hold_every_instance_once(small_archive):
    commons = Commons(small_archive)
    total = instance_rows(commons, 1)
    assert total > 20
    pages = all_pages(commons, dict(STATE), 7)
    first, last = pages[0], pages[-1]
    assert first.offset == 0 and first.returned == 7 and first.next_state["after"]
    assert [p.offset for p in pages] == list(range(0, total, 7))
    assert all(p.total == total for p in pages)
    assert last.returned == total - last.offset and last.next_state is None
    rows = [row for p in pages for row in orjson.loads(b"".join(p.rows_json()))]
    assert len(rows) == total == len({row["SOPInstanceUID"] for row in rows})
    whole = commons.page(dict(STATE), None, total, None)
    assert orjson.loads(b"".join(whole.rows_json())) == rows


def test_an_instance_manifest_is_paged_by_key_from_a_page_to_the_next(small_archive,
                                                                       monkeypatch):
    monkeypatch.setattr(keyset, "KEYSET_FROM_ROWS", 0)  # (the archive is small)
    commons = Commons(small_archive)
    state = {"kind": "manifest", "version": 1, "filters": {}, "offset": 0,
             "fields": manifest_fields(["SOPInstanceUID", "GCS_URL"])}
    pages = all_pages(commons, state, 10)
    total = instance_rows(commons, 1)
    assert len(pages) == -(-total // 10) and all(p.total == total for p in pages)
    rows = [row for p in pages for row in orjson.loads(b"".join(p.rows_json()))]
    uids = [row["SOPInstanceUID"] for row in rows]
    assert uids == sorted(uids) and len(set(uids)) == total
    assert pages[-1].next_state is None


def test_a_page_by_offset_alone_of_a_keyed_answer_is_refused(small_archive):
    """A state with an offset but no key (a token of an earlier release) is a 400's refusal."""
    commons = Commons(small_archive)
    with pytest.raises(InvalidRequest, match="start the query again"):
        commons.page({**STATE, "offset": 10}, None, 5, None)
