"""Collection grants: which restricted collections a user may see."""

from __future__ import annotations

from sqlalchemy import delete, select

from .tables import GrantRow, StoreParts, rows_changed
from .users import User, refuse_guest, require_user


class Grants(StoreParts):
    def grant(self, username: str, collection_id: str) -> None:
        """Refused for the guest: anything granted to it would be granted to everyone."""
        refuse_guest(username)
        with self._session.begin() as s:
            key = (require_user(s, username).id, collection_id.lower())
            if s.get(GrantRow, key) is None:
                s.add(GrantRow(user_id=key[0], collection_id=key[1]))

    def revoke_grant(self, username: str, collection_id: str) -> bool:
        with self._session.begin() as s:
            user_id = require_user(s, username).id
            return rows_changed(s, delete(GrantRow).where(
                GrantRow.user_id == user_id,
                GrantRow.collection_id == collection_id.lower())) > 0

    def granted_collections(self, user: User) -> frozenset[str]:
        """Empty for the guest, since grant() refuses it."""
        with self._session.begin() as s:
            return frozenset(s.scalars(select(GrantRow.collection_id)
                                       .where(GrantRow.user_id == user.id)))
