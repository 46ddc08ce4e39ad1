"""instance_row/read_header over real files: pydicom's bundled test files (never downloaded)
and SEG/SR objects built here with highdicom from CT_small.dcm."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pydicom.data
import pytest
from highdicom.sr import CodedConcept
from pydicom.datadict import tag_for_keyword
from pydicom.sr.codedict import codes

from imaging_commons.core import dicom_rows
from imaging_commons.core.dicom_rows import (
    ARCHIVE_COLUMNS,
    DICOM_COLUMNS,
    NotDicom,
    instance_row,
    read_header,
)
from imaging_commons.core.schema import BY_NAME, SQL_TYPES

TEST_FILES = Path(pydicom.data.__file__).parent / "test_files"
ALL_FILES = sorted(p for p in TEST_FILES.rglob("*") if p.is_file())
PY_TYPES = {"VARCHAR": str, "DOUBLE": float, "BIGINT": int}
LOCAL = "99IMGCOMMONS"  # private coding scheme for test concepts without a well-known code
SEGMENT_COLUMNS = ("SegmentNumber", "SegmentedPropertyCategoryCodeSequence",
                   "SegmentedPropertyTypeCodeSequence", "SegmentAlgorithmType")


def assert_schema_types(row: dict) -> None:
    assert set(row) == set(DICOM_COLUMNS)
    for name, value in row.items():
        sql_type = SQL_TYPES[name]
        if sql_type == "VARCHAR[]":
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), name
        elif value is not None:
            assert type(value) is PY_TYPES[sql_type], (name, value)
            assert value != "", name


@pytest.fixture(scope="module")
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(TEST_FILES / "CT_small.dcm")


def test_columns_are_schema_minus_archive_columns():
    assert ARCHIVE_COLUMNS <= set(BY_NAME)
    assert set(DICOM_COLUMNS) == set(BY_NAME) - ARCHIVE_COLUMNS
    # a DICOM column is read from the DICOM keyword it is named after, or is an SR measurement
    quarters = ("First", "Second", "Third", "Fourth")
    measurements = {
        "Apparent_Diffusion_Coefficient", "Diameter", "SUVbw", "Surface_area_of_mesh",
        "Total_Lesion_Glycolysis", "Volume", "Standardized_Added_Metabolic_Activity",
        "Standardized_Added_Metabolic_Activity_Background", "Calcification",
        "Internal_structure", "Lobular_Pattern", "Malignancy", "Margin", "Sphericity",
        "Spiculation", "Subtlety_score", "Texture",
        *(f"{kind}_Within_{q}_Quarter_of_Intensity_Range"
          for kind in ("Glycolysis", "Percent") for q in quarters),
    }
    assert {n for n in DICOM_COLUMNS if tag_for_keyword(n) is None} == measurements


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about invalid values
@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(TEST_FILES)))
def test_every_bundled_file_gives_a_typed_row_or_not_dicom(path):
    try:
        ds = read_header(path)
    except NotDicom as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert_schema_types(instance_row(ds))


def _row_or_reason(source) -> dict | str:
    try:
        return instance_row(read_header(source))
    except NotDicom as exc:
        return str(exc)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_plain_text_fast_path_reads_what_pydicom_reads(monkeypatch):
    """Ingest decodes plain ASCII text itself; over every bundled file (all character sets,
    both VR encodings, padded and multi-valued values) the rows must be exactly what
    pydicom's own conversion gives, and reading from memory the same as from the path."""
    decode = dicom_rows._plain_text
    decoded = []  # values the fast path answered: it must carry most of the work

    def counting(element):
        value = decode(element)
        decoded.append(value is not None)
        return value

    monkeypatch.setattr(dicom_rows, "_plain_text", counting)
    fast = {path.name: _row_or_reason(path.read_bytes()) for path in ALL_FILES}
    monkeypatch.setattr(dicom_rows, "_plain_text", lambda element: None)
    slow = {path.name: _row_or_reason(path) for path in ALL_FILES}
    assert fast == slow
    assert sum(isinstance(row, dict) for row in fast.values()) > 100
    assert sum(decoded) > 0.7 * len(decoded)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("integer, decimal", [
    (b"0012", b"2.50"), (b" 12 ", b" 2.5"), (b"1.0 ", b"1e2 "), (b"+5  ", b"2,5 "),
    (b"1.5 ", b"abcd"), (b"7A9X", b"1\\2 "), (b"1\\2 ", b"-0.0"), (b"    ", b"    "),
])
def test_odd_number_strings_read_as_pydicom_reads_them(tmp_path, ct, monkeypatch, integer,
                                                       decimal):
    ds = ct.copy()
    ds.SeriesNumber, ds.InstanceNumber, ds.SliceThickness = "9001", "9002", "9003"
    ds.save_as(tmp_path / "base.dcm")
    data = (tmp_path / "base.dcm").read_bytes()
    for old, new in [(b"9001", integer), (b"9002", integer), (b"9003", decimal)]:
        assert data.count(old) == 1
        data = data.replace(old, new)
    fast = _row_or_reason(data)
    monkeypatch.setattr(dicom_rows, "_plain_text", lambda element: None)
    assert fast == _row_or_reason(data)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bundled_files_split_as_expected():
    """Guards the per-file test above against passing by rejecting everything."""
    outcomes = {}
    for path in ALL_FILES:
        try:
            outcomes[path.name] = instance_row(read_header(path))["Modality"]
        except NotDicom as exc:
            outcomes[path.name] = str(exc)
    assert sum(v in {"CT", "MR", "OT", "US", "NM", "CR"} for v in outcomes.values()) > 100
    assert outcomes["README.txt"] == "not a DICOM file (no DICM preamble)"
    assert outcomes["DICOMDIR"] == "missing StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"
    assert outcomes["rtplan_truncated.dcm"].startswith("truncated or corrupt")
    # pixel data declared 8192 bytes long, 8130 present
    assert outcomes["MR_truncated.dcm"].startswith("truncated or corrupt: pixel data")


def test_ct_small(ct):
    row = instance_row(read_header(TEST_FILES / "CT_small.dcm"))
    assert row["PatientID"] == "1CT1"
    assert row["Modality"] == "CT"
    assert row["SliceThickness"] == 5.0 and isinstance(row["SliceThickness"], float)
    assert row["StudyDate"] == "2004-01-19"
    assert row["SeriesDate"] == "1997-04-30"
    assert row["ImageType"] == ["ORIGINAL", "PRIMARY", "AXIAL"]
    assert row["Allergies"] == [] and row["MedicalAlerts"] == []
    assert row["SeriesNumber"] == "1" and row["InstanceNumber"] == 1
    assert row["SOPInstanceUID"] == ct.SOPInstanceUID
    assert row["TransferSyntaxUID"] == "1.2.840.10008.1.2.1"
    assert row["Volume"] is None and row["SegmentNumber"] is None


def test_keyword_columns_are_read_and_typed(tmp_path, ct):
    ds = ct.copy()
    values = {
        "AdditionalPatientHistory": "prior surgery", "BodyPartExamined": "CHEST",
        "EthnicGroup": "E1", "Occupation": "baker", "PatientComments": "calm",
        "ReasonForStudy": "cough", "RequestedProcedureComments": "low dose",
        "SmokingStatus": "YES", "LastMenstrualDate": "20010203", "PatientSize": "1.75",
        "PatientWeight": "71.5", "PregnancyStatus": 4, "SeriesNumber": "0501",
        "InstanceNumber": "12", "SeriesDescription": "lung window", "StudyDescription": "",
        "Allergies": ["penicillin", "latex"], "MedicalAlerts": "pacemaker",
    }
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    region = pydicom.Dataset()
    region.CodeValue, region.CodingSchemeDesignator, region.CodeMeaning = (
        "51185008", "SCT", "Thorax")
    ds.AnatomicRegionSequence = [region]
    ds.save_as(tmp_path / "all.dcm")

    row = instance_row(read_header(tmp_path / "all.dcm"))

    assert_schema_types(row)
    assert row["AdditionalPatientHistory"] == "prior surgery"
    assert row["BodyPartExamined"] == "CHEST"
    assert row["LastMenstrualDate"] == "20010203"
    assert row["PatientSize"] == 1.75 and row["PatientWeight"] == 71.5
    assert row["PregnancyStatus"] == "4"
    assert row["SeriesNumber"] == "501"
    assert row["InstanceNumber"] == 12
    assert row["StudyDescription"] is None  # empty string
    assert row["Allergies"] == ["penicillin", "latex"]
    assert row["MedicalAlerts"] == ["pacemaker"]
    assert row["AnatomicRegionSequence"] == "Thorax"
    assert row["PatientSex"] == "O" and row["FrameOfReferenceUID"] == ct.FrameOfReferenceUID
    # every other schema column named after a DICOM keyword is checked here or in test_ct_small
    keyword_columns = {n for n in DICOM_COLUMNS if tag_for_keyword(n) is not None}
    checked = {*values, "AnatomicRegionSequence", "PatientSex", "FrameOfReferenceUID",
               "PatientID", "Modality", "SliceThickness", "StudyDate", "SeriesDate",
               "ImageType", "SOPInstanceUID", "TransferSyntaxUID", "Manufacturer",
               "ManufacturerModelName", "PatientAge", "SOPClassUID", "StudyInstanceUID",
               "SeriesInstanceUID", *SEGMENT_COLUMNS}
    assert keyword_columns <= checked
    assert row["Manufacturer"] == "GE MEDICAL SYSTEMS" and row["PatientAge"] == "000Y"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_invalid_values_become_none_or_are_coerced(tmp_path, ct):
    ds = ct.copy()
    ds.PatientWeight, ds.SliceThickness, ds.InstanceNumber = "71.5", "5.25", "7391"
    ds.StudyDate, ds.SeriesDate = "20011231", "19990615"
    ds.save_as(tmp_path / "ok.dcm")
    data = (tmp_path / "ok.dcm").read_bytes()
    # same-length edits, so the file stays well-formed while the values break their VRs
    for old, new in [(b"71.5", b"ab.c"), (b"5.25", b"5,25"), (b"7391", b"7A9X"),
                     (b"20011231", b"20011331"), (b"19990615", b"1999-6-1")]:
        assert data.count(old) == 1
        data = data.replace(old, new)
    (tmp_path / "bad.dcm").write_bytes(data)

    row = instance_row(read_header(tmp_path / "bad.dcm"))

    assert_schema_types(row)
    assert row["PatientWeight"] is None
    assert row["SliceThickness"] == 5.25
    assert row["InstanceNumber"] is None
    assert row["StudyDate"] is None and row["SeriesDate"] is None
    assert row["PatientID"] == "1CT1"


def test_garbage_and_empty_files_are_not_dicom(tmp_path):
    (tmp_path / "garbage.bin").write_bytes(bytes(range(256)) * 40)
    (tmp_path / "empty.dcm").write_bytes(b"")
    for name in ("garbage.bin", "empty.dcm"):
        with pytest.raises(NotDicom, match=r"^not a DICOM file \(no DICM preamble\)$"):
            read_header(tmp_path / name)


def test_missing_path_is_not_a_skip():
    with pytest.raises(FileNotFoundError):
        read_header(TEST_FILES / "does-not-exist.dcm")


def _pixel_data_offset(path: Path) -> int:
    with open(path, "rb") as fp:
        pydicom.dcmread(fp, stop_before_pixels=True)
        return fp.tell()


@pytest.mark.parametrize("where, reason", [
    ("in pixel data", "truncated or corrupt: pixel data ends past the end of the file"),
    ("in pixel data header", "truncated or corrupt: "),
    ("in last value", r"truncated or corrupt: element \(0043,104E\) cut short"),
    ("in file meta", "missing StudyInstanceUID, SeriesInstanceUID, SOPInstanceUID"),
])
def test_truncated_copy_is_not_dicom(tmp_path, where, reason):
    data = (TEST_FILES / "CT_small.dcm").read_bytes()
    pixels = _pixel_data_offset(TEST_FILES / "CT_small.dcm")
    cut = {"in pixel data": len(data) // 2, "in pixel data header": pixels + 5,
           "in last value": pixels - 1, "in file meta": 200}[where]
    (tmp_path / "cut.dcm").write_bytes(data[:cut])
    with pytest.raises(NotDicom, match=f"^{reason}"):
        read_header(tmp_path / "cut.dcm")


def test_file_without_preamble_is_accepted_only_with_its_uids(tmp_path):
    row = instance_row(read_header(TEST_FILES / "ExplVR_LitEndNoMeta.dcm"))
    assert row["Modality"] == "RTPLAN" and row["SOPInstanceUID"]
    with pytest.raises(NotDicom, match="no DICM preamble"):
        read_header(TEST_FILES / "no_meta.dcm")  # a bare dataset without the UIDs
    data = (TEST_FILES / "ExplVR_LitEndNoMeta.dcm").read_bytes()
    (tmp_path / "cut.dcm").write_bytes(data[:-3])
    with pytest.raises(NotDicom, match="^truncated or corrupt"):
        read_header(tmp_path / "cut.dcm")


# --- SEG -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def seg(ct, tmp_path_factory) -> hd.seg.Segmentation:
    mask = np.zeros((1, ct.Rows, ct.Columns, 2), dtype=bool)
    mask[0, 10:20, 10:20, 0] = True
    mask[0, 40:50, 40:50, 1] = True
    algorithm = hd.AlgorithmIdentificationSequence(
        name="test", family=codes.DCM.ArtificialIntelligence, version="1")
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=prop, algorithm_identification=algorithm,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC)
        for number, label, category, prop in [
            (1, "lung", codes.SCT.Tissue, codes.SCT.Lung),
            (2, "liver", codes.SCT.AnatomicalStructure, codes.SCT.Liver),
        ]
    ]
    return hd.seg.Segmentation(
        source_images=[ct], pixel_array=mask, segment_descriptions=descriptions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        series_instance_uid=hd.UID(), series_number=2, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test",
        software_versions="1", device_serial_number="1")


@pytest.fixture(scope="module")
def seg_path(seg, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("seg") / "seg.dcm"
    seg.save_as(path)
    return path


def test_highdicom_segmentation_fills_segment_columns(seg_path):
    row = instance_row(read_header(seg_path))
    assert_schema_types(row)
    assert row["Modality"] == "SEG"
    assert row["SOPClassUID"] == "1.2.840.10008.5.1.4.1.1.66.4"
    assert row["SegmentNumber"] == "1,2"
    assert row["SegmentedPropertyCategoryCodeSequence"] == "Tissue, Anatomical Structure"
    assert row["SegmentedPropertyTypeCodeSequence"] == "Lung, Liver"
    assert row["SegmentAlgorithmType"] == "AUTOMATIC"


def test_bundled_seg_and_item_highdicom_refuses(tmp_path):
    row = instance_row(read_header(TEST_FILES / "liver_1frame.dcm"))
    assert [row[c] for c in SEGMENT_COLUMNS] == ["1", "Tissue", "Liver", "SEMIAUTOMATIC"]

    ds = pydicom.dcmread(TEST_FILES / "liver_1frame.dcm")
    ds.SegmentSequence[0].SegmentAlgorithmType = "GUESSED"  # not an enumerated value
    with pytest.raises(ValueError):
        _ = hd.seg.SegmentDescription.from_dataset(ds.SegmentSequence[0]).algorithm_type
    ds.save_as(tmp_path / "odd.dcm")
    row = instance_row(read_header(tmp_path / "odd.dcm"))
    assert [row[c] for c in SEGMENT_COLUMNS] == ["1", "Tissue", "Liver", "GUESSED"]


# --- SR --------------------------------------------------------------------------------------


def _measurement(meaning: str, value: float, unit) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=CodedConcept(meaning[:16], LOCAL, meaning), value=value,
                             unit=unit)


def _evaluation(name: str, value: str) -> hd.sr.QualitativeEvaluation:
    return hd.sr.QualitativeEvaluation(name=CodedConcept(name[:16], LOCAL, name),
                                       value=CodedConcept(value[:16], LOCAL, value))


@pytest.fixture(scope="module")
def sr_path(ct, seg, tmp_path_factory) -> Path:
    def planar(diameter, evaluations):
        return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="nodule"),
            referenced_region=hd.sr.ImageRegion(
                graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
                graphic_data=np.array([[10.0, 10.0], [20.0, 10.0], [20.0, 20.0], [10.0, 10.0]]),
                source_image=hd.sr.SourceImageForRegion.from_source_image(ct)),
            finding_type=codes.SCT.Nodule,
            measurements=[
                hd.sr.Measurement(name=codes.SCT.Diameter, value=diameter,
                                  unit=codes.UCUM.Millimeter),
                _measurement("Sphericity", 0.8, codes.UCUM.NoUnits),
            ],
            qualitative_evaluations=evaluations)

    volumetric = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="nodule volume"),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
            segment_number=1,
            source_images=[hd.sr.SourceImageForSegmentation.from_source_image(ct)]),
        finding_type=codes.SCT.Nodule,
        measurements=[
            hd.sr.Measurement(name=codes.SCT.Volume, value=1234.5,
                              unit=codes.UCUM.CubicMillimeter),
            _measurement("Surface area of mesh", 321.0, codes.UCUM.SquareMillimeter),
            _measurement("SUVbw", 3.25, CodedConcept("{SUVbw}g/ml", "UCUM", "SUVbw")),
        ])
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.LN.CTUnspecifiedBodyRegion,
        imaging_measurements=[
            planar(12.5, [_evaluation("Malignancy", "Highly Suspicious"),
                          _evaluation("Spiculation", "No Spiculation"),
                          _evaluation("Lobular Pattern", "Marked"),
                          _evaluation("internal-structure", "Soft Tissue")]),
            planar(99.0, [_evaluation("Malignancy", "Unlikely")]),
            volumetric,
        ])
    sr = hd.sr.Comprehensive3DSR(
        evidence=[ct, seg], content=report, series_instance_uid=hd.UID(), series_number=3,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="test")
    path = tmp_path_factory.mktemp("sr") / "sr.dcm"
    sr.save_as(path)
    return path


def test_tid1500_measurement_report_fills_measurement_columns(sr_path):
    ds = read_header(sr_path)
    row = instance_row(ds)
    assert_schema_types(row)
    assert row["Modality"] == "SR"
    assert row["Volume"] == 1234.5
    assert row["Diameter"] == 12.5  # the first of the two nodules
    assert row["Surface_area_of_mesh"] == 321.0
    assert row["SUVbw"] == 3.25
    assert row["Sphericity"] == "0.8"
    assert row["Malignancy"] == "Highly Suspicious"
    assert row["Spiculation"] == "No Spiculation"
    assert row["Lobular_Pattern"] == "Marked"
    assert row["Internal_structure"] == "Soft Tissue"  # hyphen and case differ from the column
    assert row["Texture"] is None and row["Total_Lesion_Glycolysis"] is None
    assert type(ds) is pydicom.FileDataset  # highdicom worked on a copy


def test_sr_that_is_not_a_measurement_report_gives_no_measurements():
    row = instance_row(read_header(TEST_FILES / "test-SR.dcm"))  # Comprehensive SR, no TID
    assert row["Modality"] == "SR" and row["SOPInstanceUID"]
    assert all(row[name] is None for name in ("Volume", "Diameter", "Malignancy", "SUVbw"))
