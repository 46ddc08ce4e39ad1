"""Ingest of DICOM files into the staged next version, clinical tables, and publishing of that
version.

Files are read with pydicom (headers only, `files`), hashed while they are copied into the
blob store (`blobs`), and described by one instance row each; rows go to the staging area
(`staging`), clinical tables too (`clinical`), and `publish` (`publishing`) turns the stage
into a new immutable version. The writers of an archive take turns under its writer lock,
and what a killed run left behind is removed by the next (`writers`)."""

from .blobs import crdc_uuid
from .clinical import ClinicalSource, stage_clinical
from .files import MAX_FILE_SIZE_ENV, iter_files, max_file_size
from .publishing import publish
from .staging import IngestReport, ingest
from .writers import writing

__all__ = ["MAX_FILE_SIZE_ENV", "ClinicalSource", "IngestReport", "crdc_uuid", "ingest",
           "iter_files", "max_file_size", "publish", "stage_clinical", "writing"]
