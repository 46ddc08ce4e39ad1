"""The account store's tables (SQLAlchemy), and what every part of the store shares: the
session factory, the clock, and the checks on names the columns must be able to hold."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime

from argon2 import PasswordHasher
from sqlalchemy import JSON, DateTime, ForeignKey, String, Text
from sqlalchemy.engine import CursorResult
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, sessionmaker
from sqlalchemy.types import TypeDecorator

from ..errors import InvalidRequest

NAME_LIMIT = 255


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


class Base(DeclarativeBase):
    type_annotation_map = {datetime: _UTCDateTime()}


class UserRow(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(150), unique=True)
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255))
    is_admin: Mapped[bool] = mapped_column(default=False)
    date_joined: Mapped[datetime]
    last_login: Mapped[datetime | None]


class TokenRow(Base):
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


class GrantRow(Base):
    __tablename__ = "collection_grants"
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True)
    collection_id: Mapped[str] = mapped_column(String(255), primary_key=True)


class CohortRow(Base):
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
    owner: Mapped[UserRow] = relationship(lazy="joined")


class CohortReaderRow(Base):
    __tablename__ = "cohort_readers"
    cohort_id: Mapped[int] = mapped_column(ForeignKey("cohorts.id", ondelete="CASCADE"),
                                           primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"),
                                         primary_key=True, index=True)


class SharedListRow(Base):
    __tablename__ = "shared_lists"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    description: Mapped[str | None] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    series_uids: Mapped[list] = mapped_column(JSON)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    created: Mapped[datetime]
    owner: Mapped[UserRow | None] = relationship(lazy="joined")


class PageStateRow(Base):
    """A paging state too large to travel in its next_page token (a filter of thousands of
    UIDs): the token names it by its content hash instead."""
    __tablename__ = "page_states"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(Text)
    used: Mapped[datetime] = mapped_column(index=True)  # when a token last named it


class StoreParts:
    """What each part of the account store (users, tokens, grants, ...) works with; the
    `Accounts` store sets them up once."""

    _session: sessionmaker
    _clock: Callable[[], datetime]
    _hasher: PasswordHasher
    _dummy_hash: str
    _token_lifetime: int
    _refresh_lifetime: int


def utcnow() -> datetime:
    return datetime.now(UTC)


def digest(token: str) -> str:
    # surrogatepass: any str a client can send hashes instead of raising UnicodeEncodeError.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def rows_changed(session, statement) -> int:
    """Rows an UPDATE or DELETE changed."""
    result: CursorResult = session.execute(statement)  # (what a DML statement answers)
    return result.rowcount


def check_name(kind: str, name: str) -> None:
    """Names go into String(255) columns: PostgreSQL would refuse longer ones (and NULs) with
    a database error, so refuse them here with a message a user can act on."""
    if len(name) > NAME_LIMIT:
        raise InvalidRequest(f"The {kind} name is longer than {NAME_LIMIT} characters")
    if "\x00" in name:
        raise InvalidRequest(f"The {kind} name holds a NUL character")


def storable(name: object) -> bool:
    """Whether a name could be stored at all: looking up one that could not (PostgreSQL
    refuses NUL characters even in a query) simply finds nothing."""
    return isinstance(name, str) and len(name) <= NAME_LIMIT and "\x00" not in name
