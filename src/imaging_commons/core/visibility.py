"""The visibility rule: which restricted collections of a version a caller may not see.

Every answer that lists or pages the catalogue leaves these collections out; the rule lives
here alone."""

from __future__ import annotations

from .accounts import Accounts, User
from .catalog import Catalog


def hidden_collections(catalog: Catalog, accounts: Accounts, user: User | None,
                       version: int) -> frozenset[str]:
    """Restricted collections of a version that the caller has no grant for (none for an
    administrator)."""
    restricted = catalog.restricted_collections(version)
    if not restricted or (user is not None and user.is_admin):
        return frozenset()
    granted = accounts.granted_collections(user) if user else frozenset()
    return restricted - granted
