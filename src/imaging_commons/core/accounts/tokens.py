"""Bearer (access) and refresh tokens: random, stored as SHA-256 hashes; a refresh rotates
both, and logout revokes both."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import delete, select, update

from ..errors import Unauthenticated
from .tables import StoreParts, TokenRow, UserRow, digest, rows_changed
from .users import User, user_of

ACCESS = "access"
REFRESH = "refresh"
# Expired tokens are deleted when new ones are issued, once they have been expired this long:
# until then a client still hears that its token expired rather than that it is unknown.
EXPIRED_KEPT = timedelta(days=1)


class InvalidToken(Unauthenticated):
    """A bearer or refresh token that does not grant access; `reason` is unknown, expired,
    revoked or no such user."""

    def __init__(self, reason: str):
        super().__init__(f"Invalid or {reason} token")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int
    refresh_expires_in: int


class Tokens(StoreParts):
    def issue_tokens(self, user: User) -> TokenPair:
        with self._session.begin() as s:
            return self._issue(s, user.id)

    def user_for_token(self, token: str) -> User:
        with self._session.begin() as s:
            row = s.get(UserRow, self._live(s, token, ACCESS).user_id)
            if row is None:  # (tokens go with their user; one removed meanwhile)
                raise InvalidToken("no such user")
            return user_of(row)

    def refresh(self, refresh_token: str) -> TokenPair:
        """Rotates the pair. The conditional UPDATE makes the refresh token single-use even when
        two requests present it at once: only one of them flips `revoked`."""
        with self._session.begin() as s:
            row = self._live(s, refresh_token, REFRESH)
            claimed = rows_changed(s, update(TokenRow)
                                   .where(TokenRow.id == row.id, TokenRow.revoked.is_(False))
                                   .values(revoked=True))
            if not claimed:
                raise InvalidToken("revoked")
            if row.access_id is not None:
                s.execute(update(TokenRow).where(TokenRow.id == row.access_id)
                          .values(revoked=True))
            return self._issue(s, row.user_id)

    def revoke(self, access_token: str) -> bool:
        """Logout: revokes the access token and its refresh token; False if nothing was live."""
        with self._session.begin() as s:
            row = self._lookup(s, access_token, ACCESS)
            if row is None or row.revoked:
                return False
            row.revoked = True
            s.execute(update(TokenRow).where(TokenRow.access_id == row.id).values(revoked=True))
            return True

    def purge_expired_tokens(self, expired_for: timedelta = timedelta(0)) -> int:
        """Deletes the tokens expired for at least `expired_for`, which keeps the token table
        from growing forever (every issue does it for EXPIRED_KEPT); how many rows went."""
        with self._session.begin() as s:
            return self._purge(s, expired_for)

    def _purge(self, s, expired_for: timedelta) -> int:
        return rows_changed(s, delete(TokenRow).where(
            TokenRow.expires_at <= self._clock() - expired_for))

    def _issue(self, s, user_id: int) -> TokenPair:
        self._purge(s, EXPIRED_KEPT)
        now, access, refresh = self._clock(), secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        access_row = TokenRow(token_hash=digest(access), kind=ACCESS, user_id=user_id,
                              expires_at=now + timedelta(seconds=self._token_lifetime))
        s.add(access_row)
        s.flush()
        s.add(TokenRow(token_hash=digest(refresh), kind=REFRESH, user_id=user_id,
                       expires_at=now + timedelta(seconds=self._refresh_lifetime),
                       access_id=access_row.id))
        return TokenPair(access, refresh, self._token_lifetime, self._refresh_lifetime)

    @staticmethod
    def _lookup(s, token, kind: str) -> TokenRow | None:
        if not isinstance(token, str) or not token:
            return None
        return s.scalar(select(TokenRow).where(TokenRow.token_hash == digest(token),
                                               TokenRow.kind == kind))

    def _live(self, s, token, kind: str) -> TokenRow:
        row = self._lookup(s, token, kind)
        if row is None:
            raise InvalidToken("unknown")
        if row.revoked:
            raise InvalidToken("revoked")
        if row.expires_at <= self._clock():
            raise InvalidToken("expired")
        return row
