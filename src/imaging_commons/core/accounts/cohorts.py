"""Saved cohorts (a filter set pinned to a data version) and the readers they are shared with."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select

from ..errors import Forbidden, NotFound
from .tables import CohortReaderRow, CohortRow, StoreParts, check_name
from .users import User, require_user

OWNER = "OWNER"
READER = "READER"
# Cohort ids are the database's INTEGER keys (32-bit on PostgreSQL): no id outside 1..this
# can name a cohort.
MAX_COHORT_ID = 2**31 - 1


class CohortDeletion(enum.Enum):
    """What asking to delete one cohort came to (reported per id, never raised)."""

    DELETED = "deleted"
    NOT_FOUND = "not found"
    NOT_OWNER = "not the owner"


@dataclass(frozen=True, slots=True)
class Cohort:
    cohort_id: int
    name: str
    description: str
    owner: str
    filters: dict
    version: int
    created: datetime


def _cohort(row: CohortRow) -> Cohort:
    return Cohort(row.id, row.name, row.description, row.owner.username, row.filters,
                  row.version, row.created)


class Cohorts(StoreParts):
    def create_cohort(self, owner: User, name: str, description: str, filters: dict,
                      version: int) -> Cohort:
        check_name("cohort", name)
        with self._session.begin() as s:
            row = CohortRow(name=name, description=description, owner_id=owner.id,
                            filters=filters, version=version, created=self._clock())
            s.add(row)
            s.flush()
            return _cohort(row)

    def list_cohorts(self, user: User) -> list[tuple[Cohort, str]]:
        shared = select(CohortReaderRow.cohort_id).where(CohortReaderRow.user_id == user.id)
        with self._session.begin() as s:
            rows = s.scalars(select(CohortRow)
                             .where(or_(CohortRow.owner_id == user.id, CohortRow.id.in_(shared)))
                             .order_by(CohortRow.id))
            return [(_cohort(r), OWNER if r.owner_id == user.id else READER) for r in rows]

    def get_cohort(self, user: User, cohort_id: int) -> tuple[Cohort, str]:
        """The cohort and the caller's permission on it (OWNER or READER)."""
        with self._session.begin() as s:
            row = _existing_cohort(s, cohort_id)
            if row.owner_id == user.id:
                return _cohort(row), OWNER
            if s.get(CohortReaderRow, (row.id, user.id)) is not None:
                return _cohort(row), READER
            raise Forbidden(f"You do not have permission to access cohort {cohort_id}")

    def delete_cohort(self, user: User, cohort_id: int) -> CohortDeletion:
        """Only the owner deletes a cohort; the outcome is returned, not raised, so that a
        request naming several cohorts can report each."""
        with self._session.begin() as s:
            row = s.get(CohortRow, cohort_id) if 0 < cohort_id <= MAX_COHORT_ID else None
            if row is None:
                return CohortDeletion.NOT_FOUND
            if row.owner_id != user.id:
                return CohortDeletion.NOT_OWNER
            s.delete(row)
            return CohortDeletion.DELETED

    def share_cohort(self, owner: User, cohort_id: int, username: str) -> None:
        with self._session.begin() as s:
            row = _existing_cohort(s, cohort_id)
            if row.owner_id != owner.id:
                raise Forbidden(f"Only the owner can share cohort {cohort_id}")
            reader = require_user(s, username)
            if s.get(CohortReaderRow, (row.id, reader.id)) is None:
                s.add(CohortReaderRow(cohort_id=row.id, user_id=reader.id))


def _existing_cohort(s, cohort_id: int) -> CohortRow:
    row = s.get(CohortRow, cohort_id) if 0 < cohort_id <= MAX_COHORT_ID else None
    if row is None:
        raise NotFound(f"Cohort {cohort_id} not found", not_found=[str(cohort_id)])
    return row
