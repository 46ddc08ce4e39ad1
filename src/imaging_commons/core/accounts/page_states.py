"""Paging states too large for a next_page token, kept under their content hash."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError

from .tables import PageStateRow, StoreParts


class PageStates(StoreParts):
    def keep_page_state(self, key: str, state: str, keep_s: int) -> None:
        """Store a state under its content hash `key` (or mark it used again), and drop the
        states no token has named for `keep_s` seconds."""
        now = self._clock()
        try:
            with self._session.begin() as s:
                s.execute(delete(PageStateRow).where(
                    PageStateRow.used < now - timedelta(seconds=keep_s)))
                row = s.get(PageStateRow, key)
                if row is None:
                    s.add(PageStateRow(key=key, state=state, used=now))
                else:
                    row.used = now
        except IntegrityError:
            pass  # another process stored the same state (same key, same text) meanwhile

    def page_state(self, key: str) -> str | None:
        with self._session.begin() as s:
            row = s.get(PageStateRow, key)
            return row.state if row else None
