"""The core behind a request, typed: every handler reaches the archive through here."""

from __future__ import annotations

from fastapi import Request

from ..core.front_door import Commons


def commons_of(request: Request) -> Commons:
    """The one Commons of the app that is answering `request` (set by `create_app`)."""
    commons: Commons = request.app.state.commons
    return commons
