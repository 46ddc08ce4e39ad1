"""NBIA's columns: how one answer writes values (`Wire`), every wire column the catalogue can
fill under each name NBIA gives it (`VALUES`), and the columns of each list answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ...core.search import Scope
from .vocabulary import species_description


def doi_url(doi: str | None) -> str | None:
    return f"https://doi.org/{doi}" if doi else None


@dataclass(frozen=True)
class Wire:
    """How one answer writes values: v4 writes dates MM-DD-YYYY, v1/v2 as NBIA timestamps,
    the advanced API as ISO dates."""

    version: int | None
    scope: Scope

    def date(self, iso: str | None) -> str | None:
        if not iso:
            return None
        try:
            day = dt.date.fromisoformat(iso)
        except ValueError:
            return iso
        if self.version == 4:
            return day.strftime("%m-%d-%Y")
        return f"{iso} 00:00:00.0" if self.version else iso

    def timestamp(self, iso: str | None) -> str | None:
        return self.date(iso) if self.version == 4 or not iso else f"{iso} 00:00:00.0"

    def values(self, record: dict, columns: Sequence[str]) -> list:
        return [VALUES[c](record, self) if c in VALUES else None for c in columns]


def _field(key: str) -> Callable[[dict, Wire], object]:
    return lambda r, w: r.get(key)


def _series_number(record: dict, wire: Wire):
    text = record.get("SeriesNumber")
    return int(text) if text and text.isdigit() and len(text) < 10 else text


def _field_as_text(key: str) -> Callable[[dict, Wire], object]:
    """A number NBIA writes as text: its series metadata is a table of strings, which clients
    (the Go ports of the Data Retriever) read into string fields."""
    return lambda r, w: None if r.get(key) is None else str(r[key])


def _collection_fact(fact: Callable) -> Callable[[dict, Wire], object]:
    def value(record: dict, wire: Wire):
        cid = record.get("collection_id")
        info = wire.scope.collection(cid) if cid else None
        return fact(info) if info else None
    return value


def _first_species(word: Callable) -> Callable[[dict, Wire], object]:
    return _collection_fact(lambda c: word(c.species[0]) if c.species else None)


def _released(record: dict, wire: Wire) -> str | None:
    return wire.scope.release_date(record.get("version_min"))


_SAME_FIELD = (
    (("SeriesInstanceUID", "Series UID", "Series ID", "Series Instance UID"), "SeriesInstanceUID"),
    (("StudyInstanceUID", "Study UID", "Study Instance UID"), "StudyInstanceUID"),
    (("PatientID", "PatientId", "Subject ID", "Patient ID"), "PatientID"),
    (("Collection", "Project", "Collection Name"), "collection"),
    (("Modality",), "Modality"),
    (("BodyPartExamined", "Body Part Examined"), "BodyPartExamined"),
    (("Manufacturer",), "Manufacturer"),
    (("ManufacturerModelName", "Manufacturer Model Name"), "ManufacturerModelName"),
    (("SeriesDescription", "Series Description"), "SeriesDescription"),
    (("StudyDescription", "StudyDesc", "Study Description"), "StudyDescription"),
    (("PatientSex", "Patient Sex"), "PatientSex"),
    (("PatientAge", "Patient Age"), "PatientAge"),
    (("EthnicGroup", "Ethnic Group"), "EthnicGroup"),
    (("SOP Class UID",), "SOPClassUID"),
    (("ImageCount", "Image Count", "ObjectCount"), "image_count"),
    (("FileSize", "TotalSizeInBytes"), "size_bytes"),
    (("LicenseURI", "License URI", "License URL"), "license_url"),
    (("SeriesCount",), "series_count"),
    (("SOPInstanceUID",), "SOPInstanceUID"),
)
# Every wire column NBIA writes that the catalogue can fill, under each name NBIA gives it.
# Columns missing here (ProtocolName, SoftwareVersions, PatientName, ...) have no data.
VALUES: dict[str, Callable[[dict, Wire], object]] = {
    **{name: _field(key) for names, key in _SAME_FIELD for name in names},
    **dict.fromkeys(("SeriesDate", "Series Date"), lambda r, w: w.date(r.get("SeriesDate"))),
    **dict.fromkeys(("StudyDate", "Study Date"), lambda r, w: w.date(r.get("StudyDate"))),
    **dict.fromkeys(("DateReleased", "Date Released"), lambda r, w: w.date(_released(r, w))),
    **dict.fromkeys(("TimeStamp", "MaxSubmissionTimestamp", "Max Submission Timestamp"),
                    lambda r, w: w.timestamp(_released(r, w))),
    **dict.fromkeys(("Number of Images", "Number of images"), _field_as_text("image_count")),
    **dict.fromkeys(("File Size", "File Size (Bytes)"), _field_as_text("size_bytes")),
    "SeriesNumber": _series_number,
    "Series Number": _field("SeriesNumber"),
    **dict.fromkeys(("LicenseName", "License Name"),
                    lambda r, w: r.get("license_long_name") or r.get("license_short_name")),
    **dict.fromkeys(("CollectionURI", "Collection URI", "DataDescriptionURI",
                     "Data Description URI"), lambda r, w: doi_url(r.get("source_DOI"))),
    **dict.fromkeys(("ThirdPartyAnalysis", "Third Party Analysis", "3rd Party Analysis"),
                    lambda r, w: "YES" if r.get("analysis_result_id") else "NO"),
    "Phantom": _collection_fact(lambda c: "YES" if c.phantom else "NO"),
    **dict.fromkeys(("SpeciesCode", "Species Code"), _first_species(lambda s: s.code)),
    **dict.fromkeys(("SpeciesDescription", "Species Description"),
                    _first_species(species_description)),
    "Authorized": lambda r, w: 1,
}

SERIES_COLUMNS = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "PatientID", "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "TimeStamp", "LicenseName", "LicenseURI", "CollectionURI", "FileSize", "DateReleased",
    "StudyDesc", "StudyDate", "ThirdPartyAnalysis")
UPDATED_SERIES_COLUMNS_V4 = (
    "SeriesInstanceUID", "StudyInstanceUID", "Modality", "ProtocolName", "SeriesDate",
    "SeriesDescription", "BodyPartExamined", "SeriesNumber", "AnnotationsFlag", "Collection",
    "Site", "PatientID", "PatientSex", "PatientAge", "AdmittingDiagnosisDescription",
    "Manufacturer", "ManufacturerModelName", "SoftwareVersions", "ImageCount",
    "MaxSubmissionTimestamp", "LicenseName", "LicenseURI", "DataDescriptionURI", "FileSize",
    "ReleasedStatus", "DateReleased", "StudyDesc", "StudyDate", "ThirdPartyAnalysis")
PATIENT_COLUMNS = ("PatientId", "PatientName", "PatientSex", "EthnicGroup", "Collection",
                   "Phantom", "SpeciesCode", "SpeciesDescription")
STUDY_COLUMNS = ("StudyInstanceUID", "StudyDate", "StudyDescription",
                 "AdmittingDiagnosesDescription", "StudyID", "PatientAge", "PatientID",
                 "PatientName", "PatientSex", "EthnicGroup", "Collection", "SeriesCount",
                 "LongitudinalTemporalEventType", "LongitudinalTemporalOffsetFromEvent")
SERIES_METADATA_COLUMNS = (
    "Series UID", "Collection", "3rd Party Analysis", "Data Description URI", "Subject ID",
    "Study UID", "Study Description", "Study Date", "Series Description", "Manufacturer",
    "Modality", "SOP Class UID", "Number of Images", "File Size", "File Location",
    "Series Number", "License Name", "License URL", "Annotation Size", "Date Released",
    "Series Date", "Protocol Name", "Body Part Examined", "Annotations Flag",
    "Manufacturer Model Name", "Software Versions", "TimeStamp")
SERIES_METADATA_CSV_V4 = (
    "Patient ID", "Patient Name", "Patient Sex", "Ethnic Group", "Phantom", "Species Code",
    "Species Description", "Study Instance UID", "Study Date", "Study Description",
    "Admitting Diagnosis Description", "Study ID", "Patient Age",
    "Longitudinal Temporal Event Type", "Longitudinal Temporal Offset From Event",
    "Series Instance UID", "Project", "Modality", "Protocol Name", "Series Date",
    "Series Description", "Body Part Examined", "Series Number", "Annotations Flag",
    "Manufacturer", "Manufacturer Model Name", "Pixel Spacing(mm)- Row", "Slice Thickness(mm)",
    "Software Versions", "Image Count", "Max Submission Timestamp", "License Name",
    "License URI", "Collection URI", "File Size", "Date Released", "Third Party Analysis",
    "Authorized")
SERIES_METADATA2_COLUMNS = (
    "Subject ID", "Study UID", "Study Description", "Study Date", "Series ID",
    "Series Description", "Number of images", "File Size (Bytes)", "Collection Name",
    "Modality", "Manufacturer", "3rd Party Analysis", "Data Description URI", "Series Number",
    "License Name", "License URL", "Date Released", "Series Date", "Protocol Name",
    "Body Part Examined", "Annotations Flag", "Manufacturer Model Name", "Software Versions",
    "TimeStamp")

