"""The account store, run against SQLite and (when one answers locally) real PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher
from cryptography.fernet import Fernet
from sqlalchemy import create_engine, text

from conftest import postgres_schema_url
from imaging_commons.core.accounts import (
    OWNER,
    READER,
    Accounts,
    CohortDeletion,
    InvalidToken,
)
from imaging_commons.core.errors import (
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Unauthenticated,
)
from imaging_commons.core.paging import InvalidPageToken, PageTokens, StateElsewhere


class Clock:
    """A hand-driven clock so expiry is tested without sleeping."""

    def __init__(self):
        self.now = datetime(2025, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'accounts.sqlite'}"
    else:
        yield from postgres_schema_url()


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def accounts(database_url, clock):
    # Cheap argon2id parameters keep the suite fast; the algorithm is the one production uses.
    acc = Accounts(database_url, token_lifetime_s=60, refresh_lifetime_s=600, clock=clock,
                   password_hasher=PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    yield acc
    acc.close()


def _query(database_url, sql, **params):
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(sql), params).all()
    finally:
        engine.dispose()


# -- users ---------------------------------------------------------------------------------

def test_password_stored_as_argon2id_hash(accounts, database_url):
    accounts.add_user("alice", "s3cret pass")
    [(stored,)] = _query(database_url, "SELECT password_hash FROM users WHERE username = :u",
                         u="alice")
    assert stored != "s3cret pass" and "s3cret" not in stored
    assert stored.startswith("$argon2id$")
    assert PasswordHasher().verify(stored, "s3cret pass")


def test_authenticate(accounts, clock):
    alice = accounts.add_user("alice", "pw", email="a@example.org", is_admin=True)
    assert alice.last_login is None and alice.date_joined == clock.now
    assert accounts.authenticate("alice", "wrong") is None
    assert accounts.authenticate("nobody", "pw") is None
    clock.advance(5)
    user = accounts.authenticate("alice", "pw")
    assert (user.username, user.email, user.is_admin, user.is_guest) == (
        "alice", "a@example.org", True, False)
    assert user.last_login == clock.now
    assert accounts.get_user("alice").last_login == clock.now


def test_unknown_user_still_pays_for_a_hash(database_url, clock):
    calls = []

    class CountingHasher(PasswordHasher):
        def verify(self, hash, password):
            calls.append(hash)
            return super().verify(hash, password)

    acc = Accounts(database_url, clock=clock,
                   password_hasher=CountingHasher(time_cost=1, memory_cost=1024, parallelism=1))
    try:
        assert acc.authenticate("nobody", "pw") is None
        assert len(calls) == 1 and calls[0].startswith("$argon2id$")
    finally:
        acc.close()


def test_login_upgrades_hash_when_parameters_change(database_url, clock, accounts):
    accounts.add_user("alice", "pw")
    stronger = Accounts(database_url, clock=clock,
                        password_hasher=PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1))
    try:
        assert stronger.authenticate("alice", "pw") is not None
    finally:
        stronger.close()
    [(stored,)] = _query(database_url, "SELECT password_hash FROM users WHERE username = 'alice'")
    assert "m=2048,t=2" in stored


def test_sqlite_runs_in_wal_mode(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    Accounts(url).close()
    assert _query(url, "PRAGMA journal_mode") == [("wal",)]


def test_duplicate_user_refused(accounts):
    accounts.add_user("alice", "pw")
    with pytest.raises(Conflict, match="User alice already exists"):
        accounts.add_user("alice", "other")
    assert accounts.authenticate("alice", "pw") is not None


def test_set_password_list_and_delete_users(accounts):
    pair = accounts.issue_tokens(accounts.add_user("alice", "old"))
    kept = accounts.issue_tokens(accounts.add_user("bob", "pw"))
    accounts.set_password("alice", "new")
    assert _reason(accounts.user_for_token, pair.access_token) == "revoked"
    assert _reason(accounts.refresh, pair.refresh_token) == "revoked"
    assert accounts.user_for_token(kept.access_token).username == "bob"
    assert accounts.authenticate("alice", "old") is None
    assert accounts.authenticate("alice", "new") is not None
    with pytest.raises(NotFound):
        accounts.set_password("nobody", "x")
    assert [u.username for u in accounts.list_users()] == ["alice", "bob"]
    assert accounts.delete_user("alice") is True
    assert accounts.delete_user("alice") is False
    assert accounts.get_user("alice") is None
    assert [u.username for u in accounts.list_users()] == ["bob"]


def test_guest(accounts):
    guest = accounts.guest_user()
    assert guest.is_guest and guest.username == "nbia_guest"
    assert accounts.guest_user().id == guest.id
    assert accounts.authenticate("nbia_guest", "anything at all") == guest
    assert accounts.authenticate("nbia_guest", "") == guest
    with pytest.raises(InvalidRequest):
        accounts.add_user("nbia_guest", "pw")
    with pytest.raises(InvalidRequest):
        accounts.grant("nbia_guest", "tcga-luad")
    assert accounts.granted_collections(guest) == frozenset()


# -- tokens --------------------------------------------------------------------------------

def test_token_round_trip(accounts):
    alice = accounts.add_user("alice", "pw")
    pair = accounts.issue_tokens(alice)
    assert (pair.expires_in, pair.refresh_expires_in) == (60, 600)
    assert pair.access_token != pair.refresh_token and len(pair.access_token) >= 43
    assert accounts.user_for_token(pair.access_token).username == "alice"
    with pytest.raises(InvalidToken) as err:  # a refresh token is not a bearer token
        accounts.user_for_token(pair.refresh_token)
    assert err.value.reason == "unknown"
    assert isinstance(err.value, Unauthenticated) and err.value.message == "Invalid or unknown token"


def test_only_token_hashes_are_stored(accounts, database_url):
    pair = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    rows = _query(database_url, "SELECT token_hash, kind, access_id, id FROM tokens")
    stored = {r.token_hash: r for r in rows}
    access = stored[hashlib.sha256(pair.access_token.encode()).hexdigest()]
    refresh = stored[hashlib.sha256(pair.refresh_token.encode()).hexdigest()]
    assert (access.kind, refresh.kind) == ("access", "refresh")
    assert refresh.access_id == access.id
    assert not {pair.access_token, pair.refresh_token} & set(stored)


def _reason(call, token):
    with pytest.raises(InvalidToken) as err:
        call(token)
    return err.value.reason


def test_expired_tokens(accounts, clock):
    pair = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    clock.advance(59)
    assert accounts.user_for_token(pair.access_token).username == "alice"
    clock.advance(1)
    assert _reason(accounts.user_for_token, pair.access_token) == "expired"
    clock.advance(600)
    assert _reason(accounts.refresh, pair.refresh_token) == "expired"
    assert accounts.purge_expired_tokens() == 2
    assert _reason(accounts.user_for_token, pair.access_token) == "unknown"


def test_issuing_tokens_deletes_those_expired_for_a_day(accounts, clock):
    """The token table does not grow with every sign-in ever made: issuing a pair deletes the
    tokens expired for a day, and keeps those expired more recently (still told as expired)."""
    old = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    clock.advance(600)  # both of alice's tokens expired, just now
    accounts.issue_tokens(accounts.add_user("bob", "pw"))
    assert _reason(accounts.refresh, old.refresh_token) == "expired"
    clock.advance(24 * 3600)
    accounts.issue_tokens(accounts.get_user("bob"))  # alice's pair goes
    assert _reason(accounts.refresh, old.refresh_token) == "unknown"
    assert accounts.purge_expired_tokens() == 2  # bob's first pair, expired for under a day


@pytest.mark.parametrize("garbage", ["", "x", "nope" * 10_000, "\x00\ud800 ü", None, 42])
def test_garbage_tokens_are_unknown(accounts, garbage):
    assert _reason(accounts.user_for_token, garbage) == "unknown"
    assert _reason(accounts.refresh, garbage) == "unknown"
    assert accounts.revoke(garbage) is False


def test_refresh_rotates(accounts):
    old = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    new = accounts.refresh(old.refresh_token)
    assert {new.access_token, new.refresh_token}.isdisjoint(
        {old.access_token, old.refresh_token})
    assert accounts.user_for_token(new.access_token).username == "alice"
    assert _reason(accounts.refresh, old.refresh_token) == "revoked"
    assert _reason(accounts.user_for_token, old.access_token) == "revoked"
    assert accounts.refresh(new.refresh_token).access_token


def test_refresh_token_is_claimed_atomically(accounts, database_url, clock):
    """A rival logout lands between refresh's validity check and its claim (the injected clock
    runs in between); the refresh must then fail rather than mint a second pair."""
    pair = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    rival = Accounts(database_url)

    def clock_letting_a_rival_in():
        rival.revoke(pair.access_token)
        return clock()

    racer = Accounts(database_url, clock=clock_letting_a_rival_in)
    try:
        assert _reason(racer.refresh, pair.refresh_token) == "revoked"
    finally:
        racer.close()
        rival.close()


def test_logout_revokes_access_and_refresh(accounts):
    alice = accounts.add_user("alice", "pw")
    pair, other = accounts.issue_tokens(alice), accounts.issue_tokens(alice)
    assert accounts.revoke(pair.access_token) is True
    assert accounts.revoke(pair.access_token) is False
    assert _reason(accounts.user_for_token, pair.access_token) == "revoked"
    assert _reason(accounts.refresh, pair.refresh_token) == "revoked"
    assert accounts.user_for_token(other.access_token).username == "alice"


def test_deleted_user_tokens_stop_working(accounts):
    pair = accounts.issue_tokens(accounts.add_user("alice", "pw"))
    accounts.delete_user("alice")
    assert _reason(accounts.user_for_token, pair.access_token) == "unknown"


# -- grants --------------------------------------------------------------------------------

def test_grants(accounts):
    alice = accounts.add_user("alice", "pw")
    bob = accounts.add_user("bob", "pw")
    assert accounts.granted_collections(alice) == frozenset()
    accounts.grant("alice", "TCGA-LUAD")
    accounts.grant("alice", "tcga-luad")
    accounts.grant("alice", "Restricted_One")
    assert accounts.granted_collections(alice) == {"tcga-luad", "restricted_one"}
    assert accounts.granted_collections(bob) == frozenset()
    assert accounts.revoke_grant("alice", "TCGA-luad") is True
    assert accounts.revoke_grant("alice", "tcga-luad") is False
    assert accounts.granted_collections(alice) == {"restricted_one"}
    with pytest.raises(NotFound):
        accounts.grant("nobody", "x")


# -- cohorts -------------------------------------------------------------------------------

def test_cohort_create_list_get(accounts, clock):
    alice = accounts.add_user("alice", "pw")
    filters = {"collection_id": ["tcga_luad"], "Modality": ["CT", "MR"], "age_btw": [65, 75]}
    first = accounts.create_cohort(alice, "lungs", "CT and MR", filters, 25)
    second = accounts.create_cohort(alice, "empty", "", {}, 24)
    assert second.cohort_id > first.cohort_id
    cohort, perm = accounts.get_cohort(alice, first.cohort_id)
    assert perm == OWNER
    assert (cohort.name, cohort.description, cohort.owner, cohort.filters, cohort.version,
            cohort.created) == ("lungs", "CT and MR", "alice", filters, 25, clock.now)
    assert [(c.cohort_id, p) for c, p in accounts.list_cohorts(alice)] == [
        (first.cohort_id, OWNER), (second.cohort_id, OWNER)]
    with pytest.raises(NotFound):
        accounts.get_cohort(alice, second.cohort_id + 100)


def test_cohort_permissions_and_sharing(accounts):
    alice = accounts.add_user("alice", "pw")
    bob = accounts.add_user("bob", "pw")
    carol = accounts.add_user("carol", "pw")
    cohort = accounts.create_cohort(alice, "c", "", {"Modality": ["CT"]}, 25)
    bobs = accounts.create_cohort(bob, "b", "", {}, 25)
    with pytest.raises(Forbidden):
        accounts.get_cohort(bob, cohort.cohort_id)
    with pytest.raises(Forbidden):
        accounts.share_cohort(bob, cohort.cohort_id, "carol")
    with pytest.raises(NotFound):
        accounts.share_cohort(alice, cohort.cohort_id + 100, "bob")
    with pytest.raises(NotFound):
        accounts.share_cohort(alice, cohort.cohort_id, "nobody")

    accounts.share_cohort(alice, cohort.cohort_id, "bob")
    accounts.share_cohort(alice, cohort.cohort_id, "bob")
    assert accounts.get_cohort(bob, cohort.cohort_id)[1] == READER
    assert [(c.cohort_id, p) for c, p in accounts.list_cohorts(bob)] == [
        (cohort.cohort_id, READER), (bobs.cohort_id, OWNER)]
    # A reader can neither re-share nor delete.
    with pytest.raises(Forbidden):
        accounts.share_cohort(bob, cohort.cohort_id, "carol")
    assert accounts.delete_cohort(bob, cohort.cohort_id) is CohortDeletion.NOT_OWNER
    assert accounts.list_cohorts(carol) == []
    with pytest.raises(Forbidden):
        accounts.get_cohort(carol, cohort.cohort_id)


def test_delete_cohort(accounts):
    alice = accounts.add_user("alice", "pw")
    bob = accounts.add_user("bob", "pw")
    cohort = accounts.create_cohort(alice, "c", "", {}, 25)
    accounts.share_cohort(alice, cohort.cohort_id, "bob")
    assert accounts.delete_cohort(bob, cohort.cohort_id) is CohortDeletion.NOT_OWNER
    assert accounts.delete_cohort(alice, cohort.cohort_id) is CohortDeletion.DELETED
    assert accounts.delete_cohort(alice, cohort.cohort_id) is CohortDeletion.NOT_FOUND
    assert accounts.delete_cohort(alice, 2**31) is CohortDeletion.NOT_FOUND  # past the ids
    assert accounts.list_cohorts(bob) == []
    with pytest.raises(NotFound):
        accounts.get_cohort(alice, cohort.cohort_id)
    # Ids are never reused, so a stale id cannot reach someone else's new cohort.
    assert accounts.create_cohort(bob, "new", "", {}, 25).cohort_id > cohort.cohort_id


def test_cohort_refusals_name_the_cohort(accounts):
    alice = accounts.add_user("alice", "pw")
    bob = accounts.add_user("bob", "pw")
    cohort = accounts.create_cohort(alice, "c", "", {}, 25)
    for missing in (cohort.cohort_id + 100, 2**31, 0):
        with pytest.raises(NotFound) as err:
            accounts.get_cohort(alice, missing)
        assert (err.value.message, err.value.not_found) == (
            f"Cohort {missing} not found", [str(missing)])
    with pytest.raises(Forbidden, match=f"^You do not have permission to access cohort "
                                        f"{cohort.cohort_id}$"):
        accounts.get_cohort(bob, cohort.cohort_id)


# -- shared lists --------------------------------------------------------------------------

def test_shared_lists(accounts, clock):
    alice = accounts.add_user("alice", "pw")
    uids = ["1.2.3.4", "1.2.3.5"]
    made = accounts.create_shared_list(alice, "my cart", "two series", "http://x/y",
                                       uids + uids[:1], visible=_all)
    assert made == accounts.get_shared_list("my cart")
    assert (made.series_uids, made.owner, made.url, made.created) == (
        uids, "alice", "http://x/y", clock.now)  # each series once, in the order given
    with pytest.raises(Conflict, match="^Duplicate list name$"):
        accounts.create_shared_list(None, "my cart", None, None, ["9.9"], visible=_all)
    assert accounts.get_shared_list("my cart").series_uids == uids
    anonymous = accounts.create_shared_list(None, "anon", None, None, [], visible=_all)
    assert anonymous.owner is None and anonymous.series_uids == []
    assert accounts.get_shared_list("missing") is None
    accounts.delete_user("alice")
    assert accounts.get_shared_list("my cart").owner is None


def _all(uids):
    return uids


def test_a_shared_list_holds_only_series_its_maker_sees(accounts):
    alice = accounts.add_user("alice", "pw")
    asked = []

    def visible(uids):
        asked.append(list(uids))
        return [u for u in uids if u != "1.2.3.5"]

    with pytest.raises(InvalidRequest) as err:
        accounts.create_shared_list(alice, "cart", None, None, ["1.2.3.4", "1.2.3.5", "1.2.3.5"],
                                    visible=visible)
    assert err.value.message == "User does not have permission for all series in list"
    assert err.value.not_found == ["1.2.3.5"] and asked == [["1.2.3.4", "1.2.3.5"]]
    assert accounts.get_shared_list("cart") is None


@pytest.mark.parametrize("name", ["x" * 256, "nul\x00name"])
def test_names_the_columns_cannot_hold_are_refused(accounts, name):
    owner = accounts.add_user("namer", "pw")
    with pytest.raises(InvalidRequest):
        accounts.create_cohort(owner, name, "", {"Modality": ["CT"]}, 1)
    with pytest.raises(InvalidRequest):
        accounts.create_shared_list(owner, name, None, None, ["1.2.3"], visible=_all)
    assert accounts.list_cohorts(owner) == [] and accounts.get_shared_list(name) is None
    assert accounts.get_user(name) is None and accounts.authenticate(name, "pw") is None


# -- paging states -------------------------------------------------------------------------

def test_large_paging_states_travel_by_reference(accounts, database_url, clock):
    """A state of thousands of UIDs is stored once under its hash; its tokens stay short, open
    in another process (a fresh PageTokens on the same database) and stay bound to the caller;
    a state no token names for longer than tokens live is dropped."""
    uids = [f"1.2.840.10008.{i}" for i in range(5000)]
    state = {"kind": "manifest", "version": 3, "filters": {"SeriesInstanceUID": uids},
             "fields": ["GCS_URL"], "offset": 0}
    secret = Fernet.generate_key()
    tokens = PageTokens(secret, accounts, ttl_s=3600)
    small = {**state, "filters": {"Modality": ["CT"]}}
    assert tokens.open(tokens.mint(small, "alice"), "alice") == small
    assert _query(database_url, "SELECT count(*) FROM page_states") == [(0,)]  # in the token

    first, second = tokens.mint(state, "alice"), tokens.mint({**state, "offset": 500}, "alice")
    assert len(first) < 400 and len(second) < 400
    assert _query(database_url, "SELECT count(*) FROM page_states") == [(1,)]  # one per state
    elsewhere = PageTokens(secret, accounts, ttl_s=3600)
    with pytest.raises(StateElsewhere):  # not read yet, and not allowed to wait for it
        elsewhere.open(second, "alice", may_wait=False)
    assert elsewhere.open(second, "alice") == {**state, "offset": 500}
    assert elsewhere.open(first, "alice", may_wait=False) == state  # read once, remembered
    with pytest.raises(StateElsewhere):  # this process has not marked it used today
        elsewhere.mint({**state, "offset": 1000}, "alice", may_wait=False)
    third = elsewhere.mint({**state, "offset": 1000}, "alice")
    assert elsewhere.mint(state, "alice", may_wait=False) and len(third) < 400
    with pytest.raises(InvalidPageToken):
        tokens.open(first, "bob")

    clock.advance(3600 + 2 * 24 * 3600)  # unused past a token's life (and a day's margin)
    accounts.keep_page_state("0" * 64, "{}", 3600 + 24 * 3600)  # any write purges
    assert _query(database_url, "SELECT key FROM page_states") == [("0" * 64,)]
    with pytest.raises(InvalidPageToken):  # a process that never read it asks the store
        PageTokens(secret, accounts, ttl_s=3600).open(first, "alice")
