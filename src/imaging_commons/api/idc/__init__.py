"""The IDC API v1 under /v1: strict parameter and body validation, cohort definitions, the
paged manifest, query and dicomMetadata endpoints, the 202 answer, and pages written from the
result's own buffers.

Contract: docs/specs/idc-api-v1.md. Every JSON body carries `code` equal to the HTTP status;
paths are served with and without a trailing slash, and at the notebook's alternate paths.
The route modules register their handlers on `router` as they are imported."""

from . import cohorts, descriptive, manifests, queries  # noqa: F401  (they register routes)
from .models import with_page_size_limit
from .routing import router

__all__ = ["router", "with_page_size_limit"]
