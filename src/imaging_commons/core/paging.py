"""next_page tokens: Fernet-encrypted (opaque, tamper-proof, as the real IDC server's were)
and bound to the caller who received them.

A token carries its paging state. A state too large for a URL (a filter of thousands of UIDs
made tokens of megabytes, which no server or proxy takes in a request line) is kept in the
accounts database under its content hash, and the token carries the hash and the offset."""

from __future__ import annotations

import hashlib
import json
from datetime import date
from typing import Protocol

from cryptography.fernet import Fernet
from cryptography.fernet import InvalidToken as FernetInvalid

from .errors import InvalidRequest
from .recently_used import RecentlyUsed

INLINE_STATE_BYTES = 2048  # a larger state goes to the store: its token stays ~300 characters
STATES_KEPT = 256  # stored states remembered by this process


class InvalidPageToken(InvalidRequest):
    """A token that is not genuine, has expired, is another caller's, or names a state no
    longer kept."""


class StateElsewhere(Exception):
    """The token's state is to be read from the store or written to it, and the caller may
    not wait for that."""


class StateStore(Protocol):
    def keep_page_state(self, key: str, state: str, keep_s: int) -> None: ...

    def page_state(self, key: str) -> str | None: ...


class PageTokens:
    def __init__(self, secret: bytes, store: StateStore, ttl_s: int = 7 * 24 * 3600):
        self._fernet = Fernet(secret)
        self._store = store
        self._ttl = ttl_s
        self._states = RecentlyUsed(STATES_KEPT)  # key -> state text, read or written here
        self._written = RecentlyUsed(STATES_KEPT)  # key@day: stored (or marked used) that day

    def mint(self, state: dict, caller: str | None, may_wait: bool = True) -> str:
        """A token for `state`. Raises StateElsewhere when the state must be written to the
        store (not yet written today by this process) and `may_wait` is false."""
        rest = {k: v for k, v in state.items() if k != "offset"}
        text = json.dumps(rest, sort_keys=True, separators=(",", ":"))
        if len(text) <= INLINE_STATE_BYTES:
            payload = {"s": state, "u": caller}
        else:
            key = hashlib.sha256(text.encode()).hexdigest()
            def write() -> None:
                if not may_wait:
                    raise StateElsewhere(key)
                self._store.keep_page_state(key, text, self._ttl + 24 * 3600)

            # written once a day at most: the store keeps a state while a token naming it
            # may be alive
            self._written.get(f"{key}@{date.today()}", write)
            self._states.get(key, lambda: text)
            payload = {"r": key, "o": state.get("offset"), "u": caller}
        return self._fernet.encrypt(json.dumps(payload).encode()).decode()

    def open(self, token: str, caller: str | None, may_wait: bool = True) -> dict:
        """The state a token carries, if it is genuine, unexpired and the caller's own.
        Raises StateElsewhere when the state must be read from the store and `may_wait` is
        false."""
        try:
            payload = json.loads(self._fernet.decrypt(token.encode(), ttl=self._ttl))
        except (FernetInvalid, ValueError, TypeError, UnicodeError):
            raise InvalidPageToken("Invalid next_page token") from None
        if payload.get("u") != caller:
            raise InvalidPageToken("Invalid next_page token")
        if "s" in payload:
            return payload["s"]
        key = payload["r"]

        def read() -> str:
            if not may_wait:
                raise StateElsewhere(key)
            text = self._store.page_state(key)
            if text is None:  # unused for longer than a token lives
                raise InvalidPageToken("Invalid next_page token")
            return text

        state = json.loads(self._states.get(key, read))
        if payload["o"] is not None:
            state["offset"] = payload["o"]
        return state
