"""The demo archive that `make serve` builds on first run: the real IDC v25 catalogue plus
pydicom's own sample DICOM files, ingested and published as a version of their own."""

from __future__ import annotations

from pathlib import Path

from .errors import Conflict
from .idc_import import import_idc
from .ingest import ingest, publish

DEMO_COLLECTION = "pydicom_samples"


def pydicom_sample_dir() -> Path:
    """The test files that ship inside the pydicom package (no download involved)."""
    import pydicom.data

    return Path(pydicom.data.__file__).parent / "test_files"


def build_demo(commons, echo=print) -> None:
    catalog = commons.catalog
    if catalog._state()["versions"]:
        echo(f"archive {commons.archive.root} already built (active version "
             f"{catalog.active_version()})")
        return
    echo(f"building the demo archive in {commons.archive.root}")
    summary = import_idc(catalog, progress=lambda s: echo(f"importing IDC {s}"))
    echo(f"imported {summary.series} IDC series in {summary.collections} collections")
    report = ingest(catalog, [pydicom_sample_dir()], DEMO_COLLECTION, progress=True, metadata={
        "description": "Sample DICOM files shipped with the pydicom package.",
        "license_short_name": "MIT", "program": "pydicom", "species": "Human"})
    for line in report.lines()[:1]:
        echo(line)
    try:
        echo(f"published version {publish(catalog)}")
    except Conflict as e:  # nothing staged (the samples were there already)
        echo(f"nothing published: {e}")
