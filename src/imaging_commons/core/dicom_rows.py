"""Turn one DICOM file's header into the DICOM-derived columns of a catalogue instance row.

The archive-assigned columns (collection, UUIDs, URLs, sizes, versions, ...) are left to the
ingest code; everything here comes from the file alone, typed as the schema's ``sql_type``
says, so a row can go into the catalogue without further conversion.
"""

from __future__ import annotations

import datetime
import functools
import io
import math
import os
import re
import struct
from os import PathLike
from typing import Any, BinaryIO

import highdicom as hd
import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.uid import (
    Comprehensive3DSRStorage,
    ComprehensiveSRStorage,
    EnhancedSRStorage,
)

from imaging_commons.core.errors import InvalidRequest
from imaging_commons.core.schema import COLUMNS, SQL_TYPES

__all__ = ["ARCHIVE_COLUMNS", "DICOM_COLUMNS", "NotDicom", "instance_row", "is_uid",
           "read_header"]

# Set by the ingest code, never read from the file.
ARCHIVE_COLUMNS = frozenset({
    "collection_id", "crdc_instance_uuid", "crdc_series_uuid", "crdc_study_uuid", "gcs_url",
    "license_short_name", "program", "source_DOI", "tcia_species", "tcia_tumorLocation",
    "analysis_result_id", "instance_md5", "instance_size", "instance_crc32", "instance_count",
    "series_size_bytes", "blob_key", "level", "version_min", "version_max",
})
DICOM_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.name not in ARCHIVE_COLUMNS)

# TID 1500 measurement columns, filled by concept name. DOUBLE columns take numeric
# measurements, VARCHAR ones qualitative evaluations (Sphericity takes either).
# SUVbw is one of them: in IDC it is a lesion's SUV from a measurement report. A PET image
# only yields a Bq/ml-to-SUV scale factor, which is not that value, so none is computed.
_MEASUREMENT_COLUMNS = (
    "Apparent_Diffusion_Coefficient", "Diameter", "SUVbw", "Surface_area_of_mesh",
    "Total_Lesion_Glycolysis", "Volume", "Standardized_Added_Metabolic_Activity",
    "Standardized_Added_Metabolic_Activity_Background",
    *(f"{kind}_Within_{q}_Quarter_of_Intensity_Range"
      for kind in ("Glycolysis", "Percent") for q in ("First", "Second", "Third", "Fourth")),
    "Calcification", "Internal_structure", "Lobular_Pattern", "Malignancy", "Margin",
    "Sphericity", "Spiculation", "Subtlety_score", "Texture",
)
_SEGMENT_COLUMNS = ("SegmentNumber", "SegmentedPropertyCategoryCodeSequence",
                    "SegmentedPropertyTypeCodeSequence", "SegmentAlgorithmType")
# Every other DICOM column is named after the DICOM keyword it is read from.
_KEYWORD_COLUMNS = tuple(
    name for name in DICOM_COLUMNS
    if name not in {*_MEASUREMENT_COLUMNS, *_SEGMENT_COLUMNS, "StudyDate", "SeriesDate",
                    "TransferSyntaxUID", "AnatomicRegionSequence"}
)

_REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
# A UID per PS3.5 9.1: components of digits joined by single dots, at most 64 characters.
# PS3.5 also forbids leading zeros in a component ("1.02.3"), but real archives hold such
# UIDs, and a zero is as harmless as any other digit: they are accepted.
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_UID_RULE = "a UID is digits and dots, at most 64 characters"
# Every UID column a row has (the transfer syntax's is read from the file meta): each one, when
# present, must be a UID, or the file is refused (see _check_identifiers).
_UID_COLUMNS = tuple(name for name in DICOM_COLUMNS if name.endswith("UID"))
# Text identifiers and their longest value (PatientID is LO: 64; Modality is CS: 16).
_TEXT_IDENTIFIERS = {"PatientID": 64, "Modality": 16}
_CONTROL_OR_BACKSLASH = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_SR_CLASSES: dict[str, Any] = {
    EnhancedSRStorage: hd.sr.EnhancedSR,
    ComprehensiveSRStorage: hd.sr.ComprehensiveSR,
    Comprehensive3DSRStorage: hd.sr.Comprehensive3DSR,
}
_UNDEFINED_LENGTH = 0xFFFFFFFF
_NO_PREAMBLE = "not a DICOM file (no DICM preamble)"


class NotDicom(InvalidRequest):
    """The file cannot give a catalogue row; ``str()`` is a one-line reason for the skip log."""


# a binary file object: an open file, BytesIO, or a raw reader such as ingest's
_Binary = BinaryIO | io.RawIOBase


def read_header(source: str | PathLike | bytes | _Binary) -> pydicom.Dataset:
    """Read a file's header (no pixel data), refusing what cannot become a catalogue row.
    ``source`` is the file's path, its whole content already in memory, or a binary file
    object positioned anywhere in it (what ingest passes: small files are read once, for the
    header and the copy alike; larger ones through the descriptor it opened, never reopened
    by path). The file object's end (seek to end) is taken as the file's size.

    Raises NotDicom for non-DICOM files, truncated or corrupt ones, and files lacking any of
    the Study/Series/SOP Instance UIDs. Errors opening the path itself (missing file,
    permissions) propagate: they say nothing about the file's content. A value that is merely
    invalid for its VR does not reject the file: instance_row reads it as None instead (the
    identifiers excepted: see _check_identifiers).

    Files without the 128-byte preamble and "DICM" prefix (older writers, raw datasets) are
    accepted only if a forced read finds valid-looking Study/Series/SOP Instance UIDs and a
    SOP Class UID: a forced read parses almost any bytes, and those four elements are what
    tells a headerless dataset from text or binary that happens to parse.
    """
    if isinstance(source, (str, PathLike)):
        with open(source, "rb") as f:
            return read_header(f)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    size = fp.seek(0, os.SEEK_END)
    fp.seek(0)
    forced = False
    ds: pydicom.Dataset
    try:
        ds = pydicom.dcmread(fp, stop_before_pixels=True)
    except InvalidDicomError:
        ds, forced = _forced_read(fp), True
    except Exception as exc:
        raise NotDicom(_one_line(f"truncated or corrupt: {exc}")) from exc
    problem = _truncation(ds, fp, size)  # before _get converts (and so alters) the last element
    if forced and not all(is_uid(_get(ds, kw)) for kw in (*_REQUIRED_UIDS, "SOPClassUID")):
        raise NotDicom(_NO_PREAMBLE)
    if problem:
        raise NotDicom(_one_line(f"truncated or corrupt: {problem}"))
    missing = [kw for kw in _REQUIRED_UIDS if _convert(_get(ds, kw), "VARCHAR") is None]
    if missing:
        raise NotDicom(f"missing {', '.join(missing)}")
    return ds


def _forced_read(fp: _Binary) -> pydicom.Dataset:
    """Read a file lacking the DICM prefix as a bare dataset, if pydicom can at all.

    defer_size keeps a forced read of a large non-DICOM file from loading bogus huge values.
    """
    fp.seek(0)
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True, force=True, defer_size="1 MB")
    except Exception as exc:
        raise NotDicom(_NO_PREAMBLE) from exc


def is_uid(value: object) -> bool:
    """Whether an element's value (as _get gives it) is one UID; only the trailing NUL or space
    padding DICOM allows is ignored (a backslash made it a list: several values)."""
    if not isinstance(value, str):
        return False
    text = value.rstrip(_PADDING)
    return len(text) <= 64 and _UID.fullmatch(text) is not None


def _truncation(ds: pydicom.Dataset, fp: _Binary, size: int) -> str | None:
    """Why the parsed data does not end where the file does, if it does not.

    pydicom reads truncated files silently: a short last value, a dropped partial element
    header, or pixel data shorter than its declared length all give a "valid" dataset. An
    interrupted copy must be skipped, not catalogued, so the end of the parsed data is
    compared with the file size (a cut exactly between two elements stays undetectable).
    """
    try:
        syntax = _get(ds.file_meta, "TransferSyntaxUID")
        if syntax is not None and syntax.is_deflated:
            return None  # positions refer to the inflated stream; zlib reports cuts itself
        if fp.tell() < size:  # the read stopped before the pixel data element
            if _element_end(fp, *ds.original_encoding) > size:
                return "pixel data ends past the end of the file"
            return None
        last = ds.get_item(next(reversed(ds.keys()))) if len(ds) else None  # type: ignore[call-overload]  # keys of a dict: reversible
        if (isinstance(last, RawDataElement) and last.length != _UNDEFINED_LENGTH
                and last.value_tell + last.length != size):
            return f"element {last.tag} cut short at the end of the file"
        return None
    except Exception as exc:
        return str(exc)


def _element_end(fp: _Binary, implicit_vr: bool, little_endian: bool) -> int:
    """File offset just past the pixel data element at ``fp``, by seeking, not reading it.

    Pixel data VRs (OB/OW/OF/OD) have 4-byte lengths. Like pydicom, an explicit-VR file whose
    element has no VR letters is read as implicit there (some writers do this). Encapsulated
    (undefined-length) data is walked fragment by fragment up to its sequence delimiter.
    """
    order = "<" if little_endian else ">"
    header = fp.read(8)
    if not implicit_vr and header[4:6].isupper():
        header = fp.read(4)  # tag, VR, 2 reserved bytes, then the 4-byte length
    (length,) = struct.unpack(order + "L", header[-4:])
    if length != _UNDEFINED_LENGTH:
        return fp.tell() + length
    while True:
        group, element, length = struct.unpack(order + "HHL", fp.read(8))
        if (group, element) == (0xFFFE, 0xE0DD):
            return fp.tell()
        fp.seek(length, os.SEEK_CUR)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def instance_row(ds: pydicom.Dataset) -> dict[str, Any]:
    """The DICOM-derived columns (DICOM_COLUMNS) of ``ds``, typed per the schema.

    Absent, empty or unreadable values are None, except list columns, which are [] as in
    IDC's dicomMetadata (BigQuery REPEATED fields are never NULL). Raises NotDicom when an
    identifier is not one (see _check_identifiers).
    """
    _check_identifiers(ds)
    row = {name: _convert(_get(ds, name), SQL_TYPES[name]) for name in _KEYWORD_COLUMNS}
    row["StudyDate"] = _iso_date(_get(ds, "StudyDate"))
    row["SeriesDate"] = _iso_date(_get(ds, "SeriesDate"))
    row["TransferSyntaxUID"] = _convert(_element_value(ds, "TransferSyntaxUID"), "VARCHAR")
    row["AnatomicRegionSequence"] = _code_meaning(ds, "AnatomicRegionSequence")
    row.update(_segment_columns(ds))
    row.update(dict.fromkeys(_MEASUREMENT_COLUMNS))
    row.update(_measurement_columns(ds))
    return row


def _check_identifiers(ds: pydicom.Dataset) -> None:
    """Refuse (NotDicom) a file whose UIDs, PatientID or Modality are not what their names say.

    These values leave the catalogue in places where other characters mean something: blob
    and download paths ("../"), manifest and report lines, HTTP headers (CR, LF), C strings
    (NUL), DICOM's own value separator (backslash). Nor can such a value just read as None,
    as other invalid values do: the UIDs name the instance, its series and study, and a
    PatientID or Modality of None would file the instance under none. So the file is refused
    whole, with a reason naming the field. Values are judged as the file holds them, before
    _convert strips them: only DICOM's trailing padding is ignored.
    """
    for name in _UID_COLUMNS:
        value = _element_value(ds, name)
        if value not in (None, "") and not is_uid(value):
            raise NotDicom(f"invalid {name} {_shown(value)}: {_UID_RULE}")
    for name, longest in _TEXT_IDENTIFIERS.items():
        value = _get(ds, name)
        if value in (None, ""):
            continue
        text = value.rstrip(_PADDING) if isinstance(value, str) else _as_text(value)
        if len(text) > longest or _CONTROL_OR_BACKSLASH.search(text):
            raise NotDicom(f"invalid {name} {_shown(text)}: a {name} is at most {longest} "
                           "characters, with no control characters or backslash")


def _as_text(value: object) -> str:
    """A value as text: several values joined by DICOM's backslash, bytes as Latin-1."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, (list, MultiValue)):
        return "\\".join(map(str, value))
    return str(value)


def _shown(value: object) -> str:
    """A value for a one-line reason: quoted and escaped as repr() does (a CR or LF in it
    cannot start a line of the report), and cut to 80 characters."""
    text = _as_text(value)
    return repr(text[:80]) + ("..." if len(text) > 80 else "")


def _element_value(ds: pydicom.Dataset, name: str) -> object:
    """The value a column is read from: the transfer syntax's in the file meta, every other
    one in the dataset."""
    return _get(getattr(ds, "file_meta", None) if name == "TransferSyntaxUID" else ds, name)


@functools.cache
def _tag(keyword: str) -> BaseTag:
    return Tag(keyword)


def _get(ds, keyword: str) -> Any:
    """The element's value, or None if absent or if pydicom cannot convert it. Looked up by
    tag: ingest reads ~40 keywords per file, most absent, and pydicom's keyword access
    (attribute lookup, keyword table) costs more than the check itself. Plain ASCII text is
    decoded here, as pydicom would decode it (see _plain_text)."""
    if ds is None:
        return None
    tag = _tag(keyword)
    try:
        element = ds.get_item(tag)
        if element is None:
            return None
        if isinstance(element, RawDataElement):
            text = _plain_text(element)
            if text is not None:
                return text
        return ds[tag].value
    except Exception:
        return None


# How pydicom trims the text VRs: string VRs lose trailing padding then split at backslashes;
# text VRs split, then each value loses its padding; single-valued VRs never split. Decimal
# and integer strings split like string VRs; an integer string becomes an int, as pydicom's IS
# does (so "0501" reads as 501), and anything else stays text for _convert to judge.
_STRING_VRS = frozenset({"AS", "CS", "DA", "DT", "TM", "UI", "DS", "IS"})
_TEXT_VRS = frozenset({"LO", "SH", "UC"})
_SINGLE_VRS = frozenset({"LT", "ST", "UT", "UR"})
_PLAIN_VRS = _STRING_VRS | _TEXT_VRS | _SINGLE_VRS
_PADDING = "\0 "


@functools.cache
def _dictionary_vr(tag: BaseTag) -> str | None:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


def _plain_text(element: RawDataElement) -> str | int | list | None:
    """A raw text element's value as pydicom would convert it, or None when only pydicom can
    say (other VRs, or bytes that are not plain ASCII: another character set may apply, and
    ISO 2022 escapes are ASCII bytes that switch sets). Converting a raw element through
    pydicom (hooks, validation, MultiValue) costs more than reading the file did; most
    values are short ASCII strings, read here in a few string operations."""
    vr = element.VR or _dictionary_vr(element.tag)
    value = element.value
    if vr not in _PLAIN_VRS or not isinstance(value, bytes):
        return None
    if not value:
        return ""
    if not value.isascii() or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr in _SINGLE_VRS:
        return text.rstrip(_PADDING)
    parts: list = (text.rstrip(_PADDING).split("\\") if vr in _STRING_VRS
                   else [part.rstrip(_PADDING) for part in text.split("\\")])
    if vr == "IS":
        parts = [_integer(part) for part in parts]
    return parts[0] if len(parts) == 1 else parts


def _integer(text: str) -> int | str:
    try:
        number = float(text)
    except ValueError:
        return text
    return int(number) if number.is_integer() else text


def _convert(value: object, sql_type: str) -> Any:
    """Coerce a pydicom value to the Python type of ``sql_type``; None if impossible.

    Multi-valued numbers keep their first value (a DS/IS column holds one number); other
    multi-valued text is joined with DICOM's backslash separator.
    """
    if isinstance(value, bytes):  # e.g. a value pydicom kept raw because its VR was unknown
        value = value.decode("utf-8", "replace").strip("\x00 ")
    if sql_type == "VARCHAR[]":
        if value is None or value == "":
            return []
        values = value if isinstance(value, (list, MultiValue)) else [value]
        return [str(v).strip() for v in values]
    if isinstance(value, (list, MultiValue)):
        if sql_type == "VARCHAR":
            value = "\\".join(str(v).strip() for v in value)
        else:
            value = value[0] if len(value) else None
    if value is None:
        return None
    if sql_type == "VARCHAR":
        # str(int(...)) so IS "0501" and US 4 give "501" and "4", as IDC has them
        text = str(int(value)) if isinstance(value, int) else str(value).strip()
        return text or None
    try:
        number = float(str(value).replace(",", "."))  # a decimal comma is a common DS error
    except ValueError:
        return None
    if not math.isfinite(number):
        return None
    if sql_type == "DOUBLE":
        return number
    return int(number) if number.is_integer() else None  # BIGINT


def _iso_date(value: object) -> str | None:
    """DICOM DA ``YYYYMMDD`` as ISO ``YYYY-MM-DD``; None for anything else."""
    text = str(value or "").strip()
    if not re.fullmatch(r"\d{8}", text):
        return None
    try:
        return datetime.date(int(text[:4]), int(text[4:6]), int(text[6:])).isoformat()
    except ValueError:
        return None


def _code_meaning(ds, keyword: str) -> str | None:
    """CodeMeaning of the first item of a code sequence."""
    try:
        return _convert(ds[keyword][0].get("CodeMeaning"), "VARCHAR")
    except Exception:
        return None


def _segment_columns(ds: pydicom.Dataset) -> dict[str, str | None]:
    """SEG segment descriptions, one comma-joined string per column over all segments.

    Read per item with highdicom's SegmentDescription, which needs no pixel data (unlike a
    whole Segmentation); an item highdicom refuses is read with plain pydicom instead.
    """
    segments = [_segment(item) for item in (_get(ds, "SegmentSequence") or [])]
    numbers, categories, types, algorithms = zip(*segments) if segments else ((),) * 4
    return {
        "SegmentNumber": _join(numbers, ","),
        "SegmentedPropertyCategoryCodeSequence": _join(categories, ", "),
        "SegmentedPropertyTypeCodeSequence": _join(types, ", "),
        "SegmentAlgorithmType": _join(algorithms, ", "),
    }


def _segment(item: pydicom.Dataset) -> tuple[str | None, ...]:
    """(number, category meaning, type meaning, algorithm type) of one segment item."""
    try:
        seg = hd.seg.SegmentDescription.from_dataset(item)
        return (str(seg.segment_number), seg.segmented_property_category.meaning,
                seg.segmented_property_type.meaning, seg.algorithm_type.value)
    except Exception:
        return (_convert(_get(item, "SegmentNumber"), "VARCHAR"),
                _code_meaning(item, "SegmentedPropertyCategoryCodeSequence"),
                _code_meaning(item, "SegmentedPropertyTypeCodeSequence"),
                _convert(_get(item, "SegmentAlgorithmType"), "VARCHAR"))


def _join(values, sep: str) -> str | None:
    """Distinct non-empty values in first-seen order, joined; None if there are none."""
    distinct = dict.fromkeys(v for v in values if v)
    return sep.join(distinct) or None


def _normalise(concept: str) -> str:
    """Concept meaning or column name in comparable form: "Surface area of mesh" and
    "Surface_area_of_mesh" both give "surface_area_of_mesh"."""
    return re.sub(r"[\s\-_]+", "_", concept.strip()).casefold()


_BY_CONCEPT = {_normalise(name): name for name in _MEASUREMENT_COLUMNS}


def _measurement_columns(ds: pydicom.Dataset) -> dict[str, object]:
    """TID 1500 measurement-report values by concept name, the first of each name winning.

    Read through highdicom's SR classes, which understand the template's measurement groups.
    Anything else (other SR templates, SR classes highdicom lacks, documents it refuses)
    gives no values: these columns only mean something for measurement reports.
    """
    sr_class = _SR_CLASSES.get(_convert(_get(ds, "SOPClassUID"), "VARCHAR"))
    if sr_class is None:
        return {}
    try:
        report = sr_class.from_dataset(ds).content  # copies: the caller's ds is not altered
        if not isinstance(report, hd.sr.MeasurementReport):
            return {}
        groups = [*report.get_planar_roi_measurement_groups(),
                  *report.get_volumetric_roi_measurement_groups(),
                  *report.get_image_measurement_groups()]
        items = [(item.name.meaning, item.value)
                 for group in groups for item in group.get_measurements()]
        items += [(item.name.meaning, item.value.meaning)  # type: ignore[union-attr]
                  for group in groups for item in group.get_qualitative_evaluations()]
    except Exception:
        return {}
    values: dict[str, object] = {}
    for meaning, value in items:
        column = _BY_CONCEPT.get(_normalise(meaning))
        if column is not None and values.get(column) is None:
            values[column] = _convert(value, SQL_TYPES[column])
    return values


def warm_up() -> None:
    """Build highdicom's lazily loaded tables of the standard now. The first SEG costs ~0.3 s
    of JSON parsing; done once in a parent process, forked ingest workers share the result
    instead of each paying it."""
    from pydicom.sr.codedict import codes

    description = hd.seg.SegmentDescription(
        segment_number=1, segment_label="warm-up",
        segmented_property_category=codes.SCT.Tissue, segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL)
    hd.seg.SegmentDescription.from_dataset(description)
