"""The refusals the core states to its callers, one hierarchy for every capability.

Each class names a kind of refusal, not an HTTP status: an adapter maps the kinds to its own
wire in one place (`api/errors.py`). The message of a refusal is written for the person who
sent the request and never names a path on the server's disk. Exceptions that steer control
flow rather than refuse (a result still running, a page state kept elsewhere) are not here.
"""

from __future__ import annotations


class CommonsError(Exception):
    """A request the archive will not answer as asked; ``str()`` says why."""

    def __init__(self, message: str, not_found: list[str] | None = None):
        super().__init__(message)
        self.message = message
        self.not_found = list(not_found or [])  # the unknown names or ids the request held


class InvalidRequest(CommonsError):
    """The request itself is malformed or asks for something that cannot exist."""


class Unauthenticated(CommonsError):
    """No valid credentials where they are required."""


class Forbidden(CommonsError):
    """The caller is known but may not do this."""


class NotFound(CommonsError):
    """Nothing with that identifier exists that the caller may see."""


class Conflict(CommonsError):
    """The request clashes with the archive's state (a name taken, a writer busy)."""


class TooLarge(CommonsError):
    """The answer would be larger than the server sends at once."""


class TooManyAttempts(CommonsError):
    """Refused unchecked until `retry_after` seconds have passed."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(CommonsError):
    """The archive cannot answer this now (its storage, a dependency); trying later may work."""
