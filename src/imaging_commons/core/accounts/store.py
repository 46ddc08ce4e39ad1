"""`Accounts`: the account store, one database (SQLite or PostgreSQL) holding every part."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from argon2 import PasswordHasher
from sqlalchemy import create_engine, event
from sqlalchemy.orm import sessionmaker

from .carts import Carts
from .cohorts import Cohorts
from .grants import Grants
from .page_states import PageStates
from .tables import Base, utcnow
from .tokens import Tokens
from .users import Users, dummy_hash


class Accounts(Users, Tokens, Grants, Cohorts, Carts, PageStates):
    """The account store. Every method opens its own short transaction and returns frozen
    dataclasses, so callers never hold ORM objects (or a session) across requests.

    `clock` and `password_hasher` are injectable so tests can expire tokens without sleeping
    and hash cheaply; deployments keep the argon2id defaults."""

    def __init__(self, database_url: str, token_lifetime_s: int = 7200,
                 refresh_lifetime_s: int = 86400, *, clock: Callable[[], datetime] = utcnow,
                 password_hasher: PasswordHasher | None = None):
        self._engine = create_engine(database_url, pool_pre_ping=True)
        if self._engine.dialect.name == "sqlite":
            event.listen(self._engine, "connect", _sqlite_pragmas)
        Base.metadata.create_all(self._engine)
        self._session = sessionmaker(self._engine, expire_on_commit=False)
        self._token_lifetime = token_lifetime_s
        self._refresh_lifetime = refresh_lifetime_s
        self._clock = clock
        self._hasher = password_hasher or PasswordHasher()
        self._dummy_hash = dummy_hash(self._hasher)

    def close(self) -> None:
        self._engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    """WAL lets the server read while the admin CLI writes; SQLite ignores FKs unless asked,
    and the ON DELETE rules of the tables depend on them."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
