"""Shared carts (NBIA's shared lists): a named, saved list of series. A cart holds only series
its maker may see, and its name is unique."""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from ..errors import Conflict, InvalidRequest
from .tables import SharedListRow, StoreParts, check_name, storable
from .users import User

NAME_TAKEN = "Duplicate list name"
NOT_ALL_VISIBLE = "User does not have permission for all series in list"


@dataclass(frozen=True, slots=True)
class SharedList:
    name: str
    description: str | None
    url: str | None
    series_uids: list[str]
    owner: str | None
    created: datetime


def _shared_list(row: SharedListRow) -> SharedList:
    return SharedList(row.name, row.description, row.url, list(row.series_uids),
                      row.owner.username if row.owner else None, row.created)


class Carts(StoreParts):
    def create_shared_list(self, owner: User | None, name: str, description: str | None,
                           url: str | None, series_uids: list[str], *,
                           visible: Callable[[list[str]], Collection[str]]) -> SharedList:
        """Save the series (each once, in the order given) under `name`. `visible` answers
        which of a list of series the owner may see: a series the owner may not see is
        refused as one that does not exist (InvalidRequest); a name taken is a Conflict."""
        uids = list(dict.fromkeys(series_uids))
        seen = set(visible(uids))
        unseen = [uid for uid in uids if uid not in seen]
        if unseen:
            raise InvalidRequest(NOT_ALL_VISIBLE, not_found=unseen)
        check_name("list", name)
        if self.get_shared_list(name) is not None:
            raise Conflict(NAME_TAKEN)
        row = SharedListRow(name=name, description=description, url=url, series_uids=uids,
                            owner_id=owner.id if owner else None, created=self._clock())
        try:
            with self._session.begin() as s:
                s.add(row)
                s.flush()
                return _shared_list(row)
        except IntegrityError:  # made by a concurrent request since the look-up
            raise Conflict(NAME_TAKEN) from None

    def get_shared_list(self, name: str) -> SharedList | None:
        if not storable(name):
            return None
        with self._session.begin() as s:
            row = s.scalar(select(SharedListRow).where(SharedListRow.name == name))
            return _shared_list(row) if row else None
