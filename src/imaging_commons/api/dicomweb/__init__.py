"""DICOMweb (PS3.18) under /dicomweb: QIDO-RS searches over the active version."""

from .routes import router

__all__ = ["router"]
