"""Accounts shared by the IDC-API and NBIA-REST front ends: users, bearer tokens, collection
grants, saved cohorts, shared carts and the paging states too large for a next_page token, in
one transactional store (SQLite or PostgreSQL).

Every method opens its own short transaction and returns frozen dataclasses, so callers never
hold ORM objects (or a session) across requests."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import (
    JSON,
    DateTime,
    ForeignKey,
    String,
    Text,
    create_engine,
    delete,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

GUEST_USERNAME = "nbia_guest"
OWNER = "OWNER"
READER = "READER"
COHORT_DELETED = "Cohort deleted"
COHORT_NOT_FOUND = "Cohort not found"
COHORT_NOT_OWNER = "Not the owner of this cohort"
ACCESS = "access"
REFRESH = "refresh"
# Not an argon2 hash, so verification always fails: the guest is let in by name, never by password.
_UNUSABLE_PASSWORD = "!"


class AccountError(Exception):
    """A request the account store refuses (duplicate name, unknown user, ...)."""


class InvalidToken(AccountError):
    """A bearer or refresh token that does not grant access; `reason` is unknown/expired/revoked."""

    def __init__(self, reason: str):
        super().__init__(f"Invalid token: {reason}")
        self.reason = reason


class NotFound(AccountError):
    pass


class Forbidden(AccountError):
    pass


@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str | None
    is_admin: bool
    date_joined: datetime
    last_login: datetime | None
    is_guest: bool


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


@dataclass(frozen=True)
class Cohort:
    cohort_id: int
    name: str
    description: str
    owner: str
    filters: dict
    version: int
    created: datetime


@dataclass(frozen=True)
class SharedList:
    name: str
    description: str | None
    url: str | None
    series_uids: list[str]
    owner: str | None
    created: datetime


class _UTCDateTime(TypeDecorator):
    """SQLite stores no time zone; writing UTC and re-attaching it on read makes both backends
    hand back aware UTC datetimes that compare correctly with the clock."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else value.astimezone(UTC)

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


class _Base(DeclarativeBase):
    type_annotation_map = {datetime: _UTCDateTime()}


class _UserRow(_Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    date_joined: Mapped[datetime]
    last_login: Mapped[datetime | None]


class _TokenRow(_Base):
    __tablename__ = "tokens"
    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(7))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime]
    revoked: Mapped[bool] = mapped_column(default=False)
    # SET NULL, not CASCADE: purging an expired access token must not kill its live refresh token.
    access_id: Mapped[int | None] = mapped_column(
        ForeignKey("tokens.id", ondelete="SET NULL"), index=True)


class _GrantRow(_Base):
    __tablename__ = "collection_grants"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class _CohortRow(_Base):
    __tablename__ = "cohorts"
    # Without AUTOINCREMENT SQLite reuses the highest id after a delete; a cohort id must stay dead.
    __table_args__ = {"sqlite_autoincrement": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text)
    owner_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    filters: Mapped[dict] = mapped_column(JSON)
    version: Mapped[int]
    created: Mapped[datetime]
    owner: Mapped[_UserRow] = relationship(lazy="joined")


class _CohortReaderRow(_Base):
    __tablename__ = "cohort_readers"
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"),
                                           primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class _SharedListRow(_Base):
    __tablename__ = "shared_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    series_uids: Mapped[list] = mapped_column(JSON)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created: Mapped[datetime]
    owner: Mapped[_UserRow | None] = relationship(lazy="joined")


class _PageStateRow(_Base):
    """A paging state too large to travel in its next_page token (a filter of thousands of
    UIDs): the token names it by its content hash instead."""
    __tablename__ = "page_states"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    used: Mapped[datetime] = mapped_column(index=True)  # when a token last named it


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    # surrogatepass: any str a client can send hashes instead of raising UnicodeEncodeError.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _rows_changed(session, statement) -> int:
    """Rows an UPDATE or DELETE changed."""
    result: CursorResult = session.execute(statement)  # (what a DML statement answers)
    return result.rowcount


def _user(row: _UserRow) -> User:
    return User(row.id, row.username, row.email, row.is_admin, row.date_joined, row.last_login,
                row.username == GUEST_USERNAME)


def _cohort(row: _CohortRow) -> Cohort:
    return Cohort(row.id, row.name, row.description, row.owner.username, row.filters,
                  row.version, row.created)


def _shared_list(row: _SharedListRow) -> SharedList:
    return SharedList(row.name, row.description, row.url, list(row.series_uids),
                      row.owner.username if row.owner else None, row.created)


def _require_user(s, username: str) -> _UserRow:
    row = s.scalar(select(_UserRow).where(_UserRow.username == username))
    if row is None:
        raise AccountError(f"No user {username}")
    return row


NAME_LIMIT = 255


def _check_name(kind: str, name: str) -> None:
    """Names go into String(255) columns: PostgreSQL would refuse longer ones (and NULs) with
    a database error, so refuse them here with a message a user can act on."""
    if len(name) > NAME_LIMIT:
        raise AccountError(f"The {kind} name is longer than {NAME_LIMIT} characters")
    if "\x00" in name:
        raise AccountError(f"The {kind} name holds a NUL character")


def _storable(name: object) -> bool:
    """Whether a name could be stored at all: looking up one that could not (PostgreSQL
    refuses NUL characters even in a query) simply finds nothing."""
    return isinstance(name, str) and len(name) <= NAME_LIMIT and "\x00" not in name


def _refuse_guest(username: str) -> None:
    if username == GUEST_USERNAME:
        raise AccountError(f"User name {GUEST_USERNAME} is reserved for the guest")


class Accounts:
    """The account store. `clock` and `password_hasher` are injectable so tests can expire
    tokens without sleeping and hash cheaply; deployments keep the argon2id defaults."""

    def __init__(self, database_url: str, token_lifetime_s: int = 7200,
                 refresh_lifetime_s: int = 86400, *, clock: Callable[[], datetime] = _utcnow,
                 password_hasher: PasswordHasher | None = None):
        self._engine = create_engine(database_url, pool_pre_ping=True)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        _Base.metadata.create_all(self._engine)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        self._token_lifetime = token_lifetime_s
        self._refresh_lifetime = refresh_lifetime_s
        self._clock = clock
        self._hasher = password_hasher or PasswordHasher()
        # Verified against for unknown users so a failed login costs the same either way.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(16))

    def close(self) -> None:
        self._engine.dispose()

    # -- users -----------------------------------------------------------------------------

    def add_user(self, username: str, password: str, email: str | None = None,
                 is_admin: bool = False) -> User:
        _refuse_guest(username)
        row = _UserRow(username=username, email=email, password_hash=self._hasher.hash(password),
                       is_admin=is_admin, date_joined=self._clock())
        try:
            with self._session.begin() as s:
                s.add(row)
                s.flush()
                return _user(row)
        except IntegrityError:
            raise AccountError(f"User {username} already exists") from None

    def set_password(self, username: str, password: str) -> None:
        _refuse_guest(username)
        with self._session.begin() as s:
            _require_user(s, username).password_hash = self._hasher.hash(password)

    def get_user(self, username: str) -> User | None:
        if not _storable(username):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(_UserRow).where(_UserRow.username == username))
            return _user(row) if row else None

    def list_users(self) -> list[User]:
        with self._session.begin() as s:
            return [_user(r) for r in s.scalars(select(_UserRow).order_by(_UserRow.id))]

    def delete_user(self, username: str) -> bool:
        """Removes the user with their tokens, grants and cohorts; their shared lists stay."""
        with self._session.begin() as s:
            return _rows_changed(s, delete(_UserRow).where(_UserRow.username == username)) > 0

    def guest_user(self) -> User:
        """The shared anonymous NBIA account, created on first use."""
        guest = self.get_user(GUEST_USERNAME)
        if guest:
            return guest
        try:
            with self._session.begin() as s:
                row = _UserRow(username=GUEST_USERNAME, password_hash=_UNUSABLE_PASSWORD,
                               date_joined=self._clock())
                s.add(row)
                s.flush()
                return _user(row)
        except IntegrityError:  # another process created it between our read and insert
            guest = self.get_user(GUEST_USERNAME)
            if guest is None:
                raise
            return guest

    def authenticate(self, username: str, password: str) -> User | None:
        """The guest needs no password (and its shared last_login is not worth a write)."""
        if username == GUEST_USERNAME:
            return self.guest_user()
        if not _storable(username):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(_UserRow).where(_UserRow.username == username))
            stored = row.password_hash if row else self._dummy_hash
            if not self._verify(stored, password) or not row:
                return None
            if self._hasher.check_needs_rehash(row.password_hash):
                row.password_hash = self._hasher.hash(password)
            row.last_login = self._clock()
            return _user(row)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False

    # -- tokens ----------------------------------------------------------------------------

    def issue_tokens(self, user: User) -> TokenPair:
        with self._session.begin() as s:
            return self._issue(s, user.id)

    def user_for_token(self, token: str) -> User:
        with self._session.begin() as s:
            row = s.get(_UserRow, self._live(s, token, ACCESS).user_id)
            if row is None:  # (tokens go with their user; one removed meanwhile)
                raise InvalidToken("no such user")
            return _user(row)

    def refresh(self, refresh_token: str) -> TokenPair:
        """Rotates the pair. The conditional UPDATE makes the refresh token single-use even when
        two requests present it at once: only one of them flips `revoked`."""
        with self._session.begin() as s:
            row = self._live(s, refresh_token, REFRESH)
            claimed = _rows_changed(s, update(_TokenRow)
                                    .where(_TokenRow.id == row.id, _TokenRow.revoked.is_(False))
                                    .values(revoked=True))
            if not claimed:
                raise InvalidToken("revoked")
            if row.access_id is not None:
                s.execute(update(_TokenRow).where(_TokenRow.id == row.access_id)
                          .values(revoked=True))
            return self._issue(s, row.user_id)

    def revoke(self, access_token: str) -> bool:
        """Logout: revokes the access token and its refresh token; False if nothing was live."""
        with self._session.begin() as s:
            row = self._lookup(s, access_token, ACCESS)
            if row is None or row.revoked:
                return False
            row.revoked = True
            s.execute(update(_TokenRow).where(_TokenRow.access_id == row.id).values(revoked=True))
            return True

    def purge_expired_tokens(self) -> int:
        """Keeps the token table from growing forever; returns how many rows went."""
        with self._session.begin() as s:
            return _rows_changed(s, delete(_TokenRow)
                                 .where(_TokenRow.expires_at <= self._clock()))

    def _issue(self, s, user_id: int) -> TokenPair:
        now, access, refresh = self._clock(), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        access_row = _TokenRow(token_hash=_digest(access), kind=ACCESS, user_id=user_id,
                               expires_at=now + timedelta(seconds=self._token_lifetime))
        s.add(access_row)
        s.flush()
        s.add(_TokenRow(token_hash=_digest(refresh), kind=REFRESH, user_id=user_id,
                        expires_at=now + timedelta(seconds=self._refresh_lifetime),
                        access_id=access_row.id))
        return TokenPair(access, refresh, self._token_lifetime, self._refresh_lifetime)

    @staticmethod
    def _lookup(s, token, kind: str) -> _TokenRow | None:
        if not isinstance(token, str) or not token:
            return None
        return s.scalar(select(_TokenRow).where(_TokenRow.token_hash == _digest(token),
                                                _TokenRow.kind == kind))

    def _live(self, s, token, kind: str) -> _TokenRow:
        row = self._lookup(s, token, kind)
        if row is None:
            raise InvalidToken("unknown")
        if row.revoked:
            raise InvalidToken("revoked")
        if row.expires_at <= self._clock():
            raise InvalidToken("expired")
        return row

    # -- collection grants -----------------------------------------------------------------

    def grant(self, username: str, collection_id: str) -> None:
        """Refused for the guest: anything granted to it would be granted to everyone."""
        _refuse_guest(username)
        with self._session.begin() as s:
            key = (_require_user(s, username).id, collection_id.lower())
            if s.get(_GrantRow, key) is None:
                s.add(_GrantRow(user_id=key[0], collection_id=key[1]))

    def revoke_grant(self, username: str, collection_id: str) -> bool:
        with self._session.begin() as s:
            user_id = _require_user(s, username).id
            return _rows_changed(s, delete(_GrantRow).where(
                _GrantRow.user_id == user_id,
                _GrantRow.collection_id == collection_id.lower())) > 0

    def granted_collections(self, user: User) -> frozenset[str]:
        """Empty for the guest, since grant() refuses it."""
        with self._session.begin() as s:
            return frozenset(s.scalars(select(_GrantRow.collection_id)
                                       .where(_GrantRow.user_id == user.id)))

    # -- cohorts ---------------------------------------------------------------------------

    def create_cohort(self, owner: User, name: str, description: str, filters: dict,
                      version: int) -> Cohort:
        _check_name("cohort", name)
        with self._session.begin() as s:
            row = _CohortRow(name=name, description=description, owner_id=owner.id,
                             filters=filters, version=version, created=self._clock())
            s.add(row)
            s.flush()
            return _cohort(row)

    def list_cohorts(self, user: User) -> list[tuple[Cohort, str]]:
        shared = select(_CohortReaderRow.cohort_id).where(_CohortReaderRow.user_id == user.id)
        with self._session.begin() as s:
            rows = s.scalars(select(_CohortRow)
                             .where(or_(_CohortRow.owner_id == user.id, _CohortRow.id.in_(shared)))
                             .order_by(_CohortRow.id))
            return [(_cohort(r), OWNER if r.owner_id == user.id else READER) for r in rows]

    def get_cohort(self, user: User, cohort_id: int) -> tuple[Cohort, str]:
        with self._session.begin() as s:
            row = self._existing_cohort(s, cohort_id)
            if row.owner_id == user.id:
                return _cohort(row), OWNER
            if s.get(_CohortReaderRow, (row.id, user.id)) is not None:
                return _cohort(row), READER
            raise Forbidden(f"No permission on cohort {cohort_id}")

    def delete_cohort(self, user: User, cohort_id: int) -> str:
        """Returns a result string (not an exception): the IDC API reports it per cohort id."""
        with self._session.begin() as s:
            row = s.get(_CohortRow, cohort_id)
            if row is None:
                return COHORT_NOT_FOUND
            if row.owner_id != user.id:
                return COHORT_NOT_OWNER
            s.delete(row)
            return COHORT_DELETED

    def share_cohort(self, owner: User, cohort_id: int, username: str) -> None:
        with self._session.begin() as s:
            row = self._existing_cohort(s, cohort_id)
            if row.owner_id != owner.id:
                raise Forbidden(f"Only the owner can share cohort {cohort_id}")
            reader = _require_user(s, username)
            if s.get(_CohortReaderRow, (row.id, reader.id)) is None:
                s.add(_CohortReaderRow(cohort_id=row.id, user_id=reader.id))

    @staticmethod
    def _existing_cohort(s, cohort_id: int) -> _CohortRow:
        row = s.get(_CohortRow, cohort_id)
        if row is None:
            raise NotFound(f"Cohort {cohort_id} not found")
        return row

    # -- shared lists (NBIA saved carts) ---------------------------------------------------

    def create_shared_list(self, owner: User | None, name: str, description: str | None,
                           url: str | None, series_uids: list[str]) -> SharedList:
        _check_name("list", name)
        row = _SharedListRow(name=name, description=description, url=url,
                             series_uids=list(series_uids),
                             owner_id=owner.id if owner else None, created=self._clock())
        try:
            with self._session.begin() as s:
                s.add(row)
                s.flush()
                return _shared_list(row)
        except IntegrityError:
            raise AccountError(f"A list named {name} already exists") from None

    def get_shared_list(self, name: str) -> SharedList | None:
        if not _storable(name):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(_SharedListRow).where(_SharedListRow.name == name))
            return _shared_list(row) if row else None

    # -- paging states ---------------------------------------------------------------------

    def keep_page_state(self, key: str, state: str, keep_s: int) -> None:
        """Store a state under its content hash `key` (or mark it used again), and drop the
        states no token has named for `keep_s` seconds."""
        now = self._clock()
        try:
            with self._session.begin() as s:
                s.execute(delete(_PageStateRow).where(
                    _PageStateRow.used < now - timedelta(seconds=keep_s)))
                row = s.get(_PageStateRow, key)
                if row is None:
                    s.add(_PageStateRow(key=key, state=state, used=now))
                else:
                    row.used = now
        except IntegrityError:
            pass  # another process stored the same state (same key, same text) meanwhile

    def page_state(self, key: str) -> str | None:
        with self._session.begin() as s:
            row = s.get(_PageStateRow, key)
            return row.state if row else None


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets the server read while the admin CLI writes; SQLite ignores FKs unless asked,
    and the ON DELETE rules above depend on them."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
