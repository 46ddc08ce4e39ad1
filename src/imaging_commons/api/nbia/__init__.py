"""The NBIA REST API: the advanced API NBIA documents and the versioned public API (v1, v2,
v4) that tcia_utils calls, over the core's search, downloads and imaging.

Routes read their parameters (`params`: query string, plus form fields on POST), turn them
into a `core.search.Criteria` (`criteria`), ask the core in the caller's scope (restricted
collections the caller may not see are never in it) and write NBIA's wire formats
(`formats`, `columns`, `answers`): JSON lists with null values left out, CSV, XML, HTML,
`.tcia` manifests. v4 refuses parameters a route does not take and writes dates as
MM-DD-YYYY; v1/v2 write them as NBIA's timestamps.
"""

from fastapi import APIRouter

from . import advanced, images, lists, public
from .routing import is_heavy, search_router

router = APIRouter()
router.include_router(search_router)
router.include_router(images.router)

__all__ = ["advanced", "is_heavy", "lists", "public", "router"]
