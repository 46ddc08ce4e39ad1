"""next_page tokens: Fernet-encrypted (opaque, tamper-proof, as the real IDC server's were)
and bound to the caller who received them."""

from __future__ import annotations

import json

from cryptography.fernet import Fernet, InvalidToken as FernetInvalid


class InvalidPageToken(Exception):
    pass


class PageTokens:
    def __init__(self, secret: bytes, ttl_s: int = 7 * 24 * 3600):
        self._fernet = Fernet(secret)
        self._ttl = ttl_s

    def mint(self, state: dict, caller: str | None) -> str:
        return self._fernet.encrypt(json.dumps({"s": state, "u": caller}).encode()).decode()

    def open(self, token: str, caller: str | None) -> dict:
        """The state a token carries, if it is genuine, unexpired and the caller's own."""
        try:
            payload = json.loads(self._fernet.decrypt(token.encode(), ttl=self._ttl))
        except (FernetInvalid, ValueError, TypeError, UnicodeError):
            raise InvalidPageToken("Invalid next_page token") from None
        if payload.get("u") != caller:
            raise InvalidPageToken("Invalid next_page token")
        return payload["s"]
