"""The core's studies, series and instances in the DICOM JSON model (PS3.18 F.2): each
attribute under its tag, with the VR of pydicom's data dictionary; an attribute without a
value is left out."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, RootModel
from pydicom import datadict

from ...core.dicom_query import INSTANCE, SERIES, STUDY, Instance, Series, Study

# What each level answers, keyword to the core's value (PS3.18 table 6.7.1-2 names the
# attributes a level returns by default; of those, the ones the catalogue holds).
_STUDY: dict[str, Callable[[Study], Any]] = {
    "StudyInstanceUID": lambda s: s.study_uid,
    "StudyDate": lambda s: s.study_date,
    "StudyDescription": lambda s: s.description,
    "PatientID": lambda s: s.patient_id,
    "PatientSex": lambda s: s.patient_sex,
    "ModalitiesInStudy": lambda s: list(s.modalities),
    "NumberOfStudyRelatedSeries": lambda s: s.series_count,
    "NumberOfStudyRelatedInstances": lambda s: s.instance_count,
}
_SERIES: dict[str, Callable[[Series], Any]] = {
    "StudyInstanceUID": lambda s: s.study_uid,
    "SeriesInstanceUID": lambda s: s.series_uid,
    "Modality": lambda s: s.modality,
    "SeriesNumber": lambda s: s.number,
    "SeriesDescription": lambda s: s.description,
    "BodyPartExamined": lambda s: s.body_part,
    "SeriesDate": lambda s: s.series_date,
    "NumberOfSeriesRelatedInstances": lambda s: s.instance_count,
}
_INSTANCE: dict[str, Callable[[Instance], Any]] = {
    "StudyInstanceUID": lambda i: i.study_uid,
    "SeriesInstanceUID": lambda i: i.series_uid,
    "SOPClassUID": lambda i: i.sop_class_uid,
    "SOPInstanceUID": lambda i: i.sop_instance_uid,
    "InstanceNumber": lambda i: i.number,
}
FIELDS: dict[str, dict[str, Callable]] = {STUDY: _STUDY, SERIES: _SERIES, INSTANCE: _INSTANCE}
# returned unless includefield asks for more (StudyDescription, BodyPartExamined and
# SeriesDate only when asked for, as PS3.18 has it)
DEFAULT: dict[str, frozenset[str]] = {
    STUDY: frozenset(_STUDY) - {"StudyDescription"},
    SERIES: frozenset(_SERIES) - {"BodyPartExamined", "SeriesDate"},
    INSTANCE: frozenset(_INSTANCE),
}


class DicomAttribute(BaseModel):
    """One attribute of the DICOM JSON model."""
    model_config = ConfigDict(populate_by_name=True)
    vr: str
    value: list[Any] | None = Field(default=None, alias="Value")


class DicomDatasets(RootModel[list[dict[str, DicomAttribute]]]):
    """A QIDO-RS answer: one dataset per match, each attribute under its tag (`0020000D`)."""


def _value(vr: str, value: Any) -> list | None:
    values = value if isinstance(value, list) else [value]
    out: list = []
    for v in values:
        if v is None or v == "":
            continue
        if isinstance(v, date):
            out.append(v.strftime("%Y%m%d"))
        elif vr == "IS":
            try:
                out.append(int(v))
            except ValueError:
                continue  # a number the catalogue holds in another form is left out
        elif vr == "PN":
            out.append({"Alphabetic": str(v)})
        else:
            out.append(str(v))
    return out or None


def _tag(keyword: str) -> int:
    tag = datadict.tag_for_keyword(keyword)
    assert tag is not None, keyword  # (FIELDS names dictionary keywords only)
    return tag


def dataset(record, level: str, include: frozenset[str] | None) -> dict[str, dict]:
    """One match in the DICOM JSON model: the level's default attributes, those asked for in
    includefield or matched on (`include`; None for all), in tag order."""
    fields = FIELDS[level]
    wanted = fields if include is None else (DEFAULT[level] | include) & fields.keys()
    out = {}
    for keyword in sorted(wanted, key=_tag):
        tag = _tag(keyword)
        vr = datadict.dictionary_VR(tag)
        value = _value(vr, fields[keyword](record))
        if value is not None:
            out[f"{tag:08X}"] = {"vr": vr, "Value": value}
    return out
