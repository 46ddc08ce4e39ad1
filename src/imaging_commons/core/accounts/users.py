"""Users and their passwords (argon2 hashes), and the shared NBIA guest."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime

from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, InvalidRequest, NotFound
from .tables import StoreParts, TokenRow, UserRow, rows_changed, storable

GUEST_USERNAME = "nbia_guest"
# Not an argon2 hash, so verification always fails: the guest is let in by name, never by password.
_UNUSABLE_PASSWORD = "!"


@dataclass(frozen=True, slots=True)
class User:
    id: int
    username: str
    email: str | None
    is_admin: bool
    date_joined: datetime
    last_login: datetime | None
    is_guest: bool


def user_of(row: UserRow) -> User:
    return User(row.id, row.username, row.email, row.is_admin, row.date_joined, row.last_login,
                row.username == GUEST_USERNAME)


def require_user(s, username: str) -> UserRow:
    row = s.scalar(select(UserRow).where(UserRow.username == username))
    if row is None:
        raise NotFound(f"No user {username}", not_found=[username])
    return row


def refuse_guest(username: str) -> None:
    if username == GUEST_USERNAME:
        raise InvalidRequest(f"User name {GUEST_USERNAME} is reserved for the guest")


class Users(StoreParts):
    def add_user(self, username: str, password: str, email: str | None = None,
                 is_admin: bool = False) -> User:
        refuse_guest(username)
        row = UserRow(username=username, email=email, password_hash=self._hasher.hash(password),
                      is_admin=is_admin, date_joined=self._clock())
        try:
            with self._session.begin() as s:
                s.add(row)
                s.flush()
                return user_of(row)
        except IntegrityError:
            raise Conflict(f"User {username} already exists") from None

    def set_password(self, username: str, password: str) -> None:
        """A new password, which ends every session of the user: their tokens are revoked."""
        refuse_guest(username)
        with self._session.begin() as s:
            row = require_user(s, username)
            row.password_hash = self._hasher.hash(password)
            s.execute(update(TokenRow).where(TokenRow.user_id == row.id).values(revoked=True))

    def get_user(self, username: str) -> User | None:
        if not storable(username):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(UserRow).where(UserRow.username == username))
            return user_of(row) if row else None

    def list_users(self) -> list[User]:
        with self._session.begin() as s:
            return [user_of(r) for r in s.scalars(select(UserRow).order_by(UserRow.id))]

    def delete_user(self, username: str) -> bool:
        """Removes the user with their tokens, grants and cohorts; their shared lists stay."""
        with self._session.begin() as s:
            return rows_changed(s, delete(UserRow).where(UserRow.username == username)) > 0

    def guest_user(self) -> User:
        """The shared anonymous NBIA account, created on first use."""
        guest = self.get_user(GUEST_USERNAME)
        if guest:
            return guest
        try:
            with self._session.begin() as s:
                row = UserRow(username=GUEST_USERNAME, password_hash=_UNUSABLE_PASSWORD,
                              date_joined=self._clock())
                s.add(row)
                s.flush()
                return user_of(row)
        except IntegrityError:  # another process created it between our read and insert
            guest = self.get_user(GUEST_USERNAME)
            if guest is None:
                raise
            return guest

    def authenticate(self, username: str, password: str) -> User | None:
        """The guest needs no password (and its shared last_login is not worth a write)."""
        if username == GUEST_USERNAME:
            return self.guest_user()
        if not storable(username):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(UserRow).where(UserRow.username == username))
            stored = row.password_hash if row else self._dummy_hash
            if not self._verify(stored, password) or not row:
                return None
            if self._hasher.check_needs_rehash(row.password_hash):
                row.password_hash = self._hasher.hash(password)
            row.last_login = self._clock()
            return user_of(row)

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


def dummy_hash(hasher) -> str:
    """A hash to verify against for unknown users, so a failed login costs the same either way."""
    return hasher.hash(secrets.token_urlsafe(16))
