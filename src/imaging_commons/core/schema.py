"""The catalogue's column set: one definition that ingest, import, the attribute registry
and the API serialisers all read, so a column is declared exactly once."""

from __future__ import annotations

from dataclasses import dataclass

CONTINUOUS_NUMERIC = "CONTINUOUS_NUMERIC"
CATEGORICAL = "CATEGORICAL"
CATEGORICAL_NUMERIC = "CATEGORICAL_NUMERIC"
TEXT = "TEXT"
STRING = "STRING"


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str  # DuckDB type of the stored column
    data_type: str | None  # attribute-registry type; None = not a filter attribute
    units: str | None = None
    wire_string: bool = False  # the real server returns this numeric column as a string
    in_dicom_metadata: bool = True  # part of IDC's fixed /dicomMetadata column set


def _c(name, sql_type="VARCHAR", data_type=CATEGORICAL, **kw) -> Column:
    return Column(name, sql_type, data_type, **kw)


_QUARTERS = ("First", "Second", "Third", "Fourth")

# Every column of IDC's documented dicomMetadata example, then the storage columns this
# archive adds.
COLUMNS: tuple[Column, ...] = (
    _c("AdditionalPatientHistory", data_type=TEXT),
    _c("Allergies", "VARCHAR[]", None),
    _c("AnatomicRegionSequence", data_type=STRING),
    _c("Apparent_Diffusion_Coefficient", "DOUBLE", CONTINUOUS_NUMERIC, units="um2/s"),
    _c("BodyPartExamined"),
    _c("Calcification"),
    _c("Diameter", "DOUBLE", CONTINUOUS_NUMERIC, units="mm"),
    _c("EthnicGroup"),
    _c("FrameOfReferenceUID", data_type=STRING),
    *(
        _c(f"Glycolysis_Within_{q}_Quarter_of_Intensity_Range", "DOUBLE", CONTINUOUS_NUMERIC,
           units="g")
        for q in _QUARTERS
    ),
    _c("ImageType", "VARCHAR[]", None),
    _c("Internal_structure"),
    _c("LastMenstrualDate", data_type=STRING),
    _c("Lobular_Pattern"),
    _c("Malignancy"),
    _c("Manufacturer"),
    _c("ManufacturerModelName"),
    _c("Margin"),
    _c("MedicalAlerts", "VARCHAR[]", None),
    _c("Modality"),
    _c("Occupation", data_type=TEXT),
    _c("PatientAge", data_type=STRING),
    _c("PatientComments", data_type=TEXT),
    _c("PatientID", data_type=STRING),
    _c("PatientSize", "DOUBLE", CONTINUOUS_NUMERIC, units="m"),
    _c("PatientWeight", "DOUBLE", CONTINUOUS_NUMERIC, units="kg"),
    *(
        _c(f"Percent_Within_{q}_Quarter_of_Intensity_Range", "DOUBLE", CONTINUOUS_NUMERIC,
           units="%")
        for q in _QUARTERS
    ),
    _c("PregnancyStatus", "VARCHAR", CATEGORICAL_NUMERIC),
    _c("ReasonForStudy", data_type=TEXT),
    _c("RequestedProcedureComments", data_type=TEXT),
    _c("SOPClassUID"),
    _c("SOPInstanceUID", data_type=STRING),
    _c("SUVbw", "DOUBLE", CONTINUOUS_NUMERIC, units="g/ml"),
    _c("SegmentAlgorithmType"),
    _c("SegmentNumber", "VARCHAR", CATEGORICAL_NUMERIC),
    _c("SegmentedPropertyCategoryCodeSequence"),
    _c("SegmentedPropertyTypeCodeSequence"),
    _c("SeriesDescription", data_type=TEXT),
    _c("SeriesInstanceUID", data_type=STRING),
    _c("SeriesNumber", data_type=STRING),
    _c("SliceThickness", "DOUBLE", CONTINUOUS_NUMERIC, units="mm", wire_string=True),
    _c("SmokingStatus"),
    _c("Sphericity"),
    _c("Spiculation"),
    _c("Standardized_Added_Metabolic_Activity", "DOUBLE", CONTINUOUS_NUMERIC, units="g"),
    _c("Standardized_Added_Metabolic_Activity_Background", "DOUBLE", CONTINUOUS_NUMERIC,
       units="g"),
    _c("StudyDate", data_type=STRING),
    _c("StudyDescription", data_type=TEXT),
    _c("StudyInstanceUID", data_type=STRING),
    _c("Subtlety_score"),
    _c("Surface_area_of_mesh", "DOUBLE", CONTINUOUS_NUMERIC, units="mm2"),
    _c("Texture"),
    _c("Total_Lesion_Glycolysis", "DOUBLE", CONTINUOUS_NUMERIC, units="g"),
    _c("Volume", "DOUBLE", CONTINUOUS_NUMERIC, units="mm3"),
    _c("collection_id"),
    _c("crdc_instance_uuid", data_type=None),
    _c("crdc_series_uuid", data_type=None),
    _c("crdc_study_uuid", data_type=None),
    _c("gcs_url", data_type=None),
    _c("license_short_name"),
    _c("program"),
    _c("source_DOI", data_type=STRING),
    _c("tcia_species"),
    _c("tcia_tumorLocation"),
    # --- columns this archive adds beyond IDC's fixed set ---
    _c("PatientSex", in_dicom_metadata=False),
    _c("SeriesDate", data_type=STRING, in_dicom_metadata=False),
    _c("TransferSyntaxUID", in_dicom_metadata=False),
    _c("InstanceNumber", "BIGINT", CONTINUOUS_NUMERIC, in_dicom_metadata=False),
    _c("analysis_result_id", in_dicom_metadata=False),
    _c("instance_md5", data_type=None, in_dicom_metadata=False),
    _c("instance_size", "BIGINT", None, in_dicom_metadata=False),
    # lets zip downloads put each member's CRC in its header instead of computing it
    _c("instance_crc32", "BIGINT", None, in_dicom_metadata=False),
    _c("instance_count", "BIGINT", None, in_dicom_metadata=False),
    _c("series_size_bytes", "BIGINT", None, in_dicom_metadata=False),
    _c("blob_key", data_type=None, in_dicom_metadata=False),
    # 'instance' for ingested files, 'series' for catalogue rows known only at series level
    _c("level", data_type=None, in_dicom_metadata=False),
    _c("version_min", "BIGINT", None, in_dicom_metadata=False),
    _c("version_max", "BIGINT", None, in_dicom_metadata=False),
)

BY_NAME: dict[str, Column] = {c.name: c for c in COLUMNS}
DICOM_METADATA_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.in_dicom_metadata)
SQL_TYPES: dict[str, str] = {c.name: c.sql_type for c in COLUMNS}
