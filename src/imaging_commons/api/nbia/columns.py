"""NBIA's columns: how one answer writes values (`Wire`), every wire column the catalogue can
fill under each name NBIA gives it (`VALUES`), and the columns of each list answer."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace

from ...core.search import Scope
from .vocabulary import species_description

# What a list answer's rows are made from: a record of the core (read by attribute name).
Record = object


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

    def values(self, record: Record, columns: Sequence[str]) -> list:
        return [VALUES[c](record, self) if c in VALUES else None for c in columns]


def _field(attribute: str) -> Callable[[Record, Wire], object]:
    return lambda r, w: getattr(r, attribute, None)


def _series_number(record: Record, wire: Wire):
    text = getattr(record, "series_number", None)
    return int(text) if text and text.isdigit() and len(text) < 10 else text


def _field_as_text(attribute: str) -> Callable[[Record, Wire], object]:
    """A number NBIA writes as text: its series metadata is a table of strings, which clients
    (the Go ports of the Data Retriever) read into string fields."""
    def text(record: Record, wire: Wire) -> str | None:
        value = getattr(record, attribute, None)
        return None if value is None else str(value)
    return text


def _collection_fact(fact: Callable) -> Callable[[Record, Wire], object]:
    def value(record: Record, wire: Wire):
        cid = getattr(record, "collection_id", None)
        info = wire.scope.collection(cid) if cid else None
        return fact(info) if info else None
    return value


def _first_species(word: Callable) -> Callable[[Record, Wire], object]:
    return _collection_fact(lambda c: word(c.species[0]) if c.species else None)


def _released(record: Record, wire: Wire) -> str | None:
    return wire.scope.release_date(getattr(record, "version_min", None))


def _license_name(record: Record, wire: Wire) -> str | None:
    return (getattr(record, "license_long_name", None)
            or getattr(record, "license_short_name", None))


def _third_party(record: Record, wire: Wire) -> str:
    return "YES" if getattr(record, "analysis_result_id", None) else "NO"


# The record attribute each wire column names, under every name NBIA gives it.
ATTRIBUTES = {name: attribute for names, attribute in (
    (("SeriesInstanceUID", "Series UID", "Series ID", "Series Instance UID"), "series_uid"),
    (("StudyInstanceUID", "Study UID", "Study Instance UID"), "study_uid"),
    (("PatientID", "PatientId", "Subject ID", "Patient ID"), "patient_id"),
    (("Collection", "Project", "Collection Name"), "collection"),
    (("Modality",), "modality"),
    (("BodyPartExamined", "Body Part Examined"), "body_part"),
    (("Manufacturer",), "manufacturer"),
    (("ManufacturerModelName", "Manufacturer Model Name"), "model"),
    (("SeriesDescription", "Series Description"), "series_description"),
    (("StudyDescription", "StudyDesc", "Study Description"), "study_description"),
    (("PatientSex", "Patient Sex"), "patient_sex"),
    (("PatientAge", "Patient Age"), "patient_age"),
    (("EthnicGroup", "Ethnic Group"), "ethnic_group"),
    (("SOP Class UID",), "sop_class_uid"),
    (("ImageCount", "Image Count", "ObjectCount"), "image_count"),
    (("FileSize", "TotalSizeInBytes"), "size_bytes"),
    (("LicenseURI", "License URI", "License URL"), "license_url"),
    (("SeriesCount",), "series_count"),
    (("SOPInstanceUID",), "sop_instance_uid"),
) for name in names}
# Every wire column NBIA writes that the catalogue can fill, under each name NBIA gives it,
# from a record of the core (a series, patient, study or image record, or a value).
# Columns missing here (ProtocolName, SoftwareVersions, PatientName, ...) have no data.
VALUES: dict[str, Callable[[Record, Wire], object]] = {
    **{name: _field(attribute) for name, attribute in ATTRIBUTES.items()},
    **dict.fromkeys(("SeriesDate", "Series Date"),
                    lambda r, w: w.date(getattr(r, "series_date", None))),
    **dict.fromkeys(("StudyDate", "Study Date"),
                    lambda r, w: w.date(getattr(r, "study_date", None))),
    **dict.fromkeys(("DateReleased", "Date Released"), lambda r, w: w.date(_released(r, w))),
    **dict.fromkeys(("TimeStamp", "MaxSubmissionTimestamp", "Max Submission Timestamp"),
                    lambda r, w: w.timestamp(_released(r, w))),
    **dict.fromkeys(("Number of Images", "Number of images"), _field_as_text("image_count")),
    **dict.fromkeys(("File Size", "File Size (Bytes)"), _field_as_text("size_bytes")),
    "SeriesNumber": _series_number,
    "Series Number": _field("series_number"),
    **dict.fromkeys(("LicenseName", "License Name"), _license_name),
    **dict.fromkeys(("CollectionURI", "Collection URI", "DataDescriptionURI",
                     "Data Description URI"),
                    lambda r, w: doi_url(getattr(r, "source_doi", None))),
    **dict.fromkeys(("ThirdPartyAnalysis", "Third Party Analysis", "3rd Party Analysis"),
                    _third_party),
    "Phantom": _collection_fact(lambda c: "YES" if c.phantom else "NO"),
    **dict.fromkeys(("SpeciesCode", "Species Code"), _first_species(lambda s: s.code)),
    **dict.fromkeys(("SpeciesDescription", "Species Description"),
                    _first_species(species_description)),
    "Authorized": lambda r, w: 1,
}


def value_record(column: str, value: object) -> Record:
    """A bare value (of a value list) as a record holding it under its column's attribute."""
    return SimpleNamespace(**{ATTRIBUTES[column]: value})

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

