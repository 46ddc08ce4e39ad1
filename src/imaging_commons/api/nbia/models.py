"""The JSON answers of the NBIA routes, as OpenAPI documents them: pydantic models with NBIA's
field names. They describe; the routes write their own JSON (nothing is re-serialised)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

Number = int | str | None  # NBIA writes some counts as text


class ValueCount(BaseModel):
    criteria: str
    count: str = Field(description="a patient count, written as text")


class CriteriaValues(BaseModel):
    criteria: str = Field(description="Collections, Species, Image Modality, Anatomical Site "
                                      "or Manufacturer")
    values: list[ValueCount]


class CollectionDescription(BaseModel):
    description: str
    id: int
    collectionDescTimestamp: int | None
    collectionName: str
    userName: str | None
    licenseId: int | None
    descriptionURI: str | None


class LicenseTerms(BaseModel):
    id: int
    longName: str | None
    shortName: str
    url: str | None
    commercialUse: str
    licenseText: str | None


class License(BaseModel):
    longName: str | None
    id: int
    shortName: str
    licenseURL: str | None
    licenseText: str | None
    commercialUse: str
    license: LicenseTerms


class SpeciesTax(BaseModel):
    speciesCode: str
    speciesDescription: str


class DoiAnswer(BaseModel):
    collection: str
    seriesInstanceUID: str | None
    thirdPartyAnanlysis: str | None = Field(description="(sic) YES for analysis results")


class TreeData(BaseModel):
    criteria: str
    value: str


class TreeNode(BaseModel):
    data: TreeData
    children: list[TreeNode]


class StudyIdentifiers(BaseModel):
    seriesIdentifiers: list[int]
    seriesAndModality: list[Any]
    studyIdentifier: int


class PatientHit(BaseModel):
    subjectId: str
    project: str
    id: int
    modalities: list[str]
    bodyParts: list[str]
    species: list[str]
    timepoints: dict[str, Any]
    totalNumberOfStudies: int
    totalNumberOfSeries: int
    studyIdentifiers: list[StudyIdentifiers]


class FacetCount(BaseModel):
    value: str
    count: int


class SimpleSearchPage(BaseModel):
    resultSet: list[PatientHit]
    totalPatients: int
    bodyParts: list[FacetCount]
    modalities: list[FacetCount]
    collections: list[FacetCount]
    species: list[FacetCount]
    maxTimepoints: dict[str, Any]
    minTimepoints: dict[str, Any]
    sort: str


class TextSearchHit(BaseModel):
    subjectId: str
    project: str
    id: int
    totalNumberOfStudies: int
    totalNumberOfSeries: int
    hit: str = Field(description="<em>field</em>: value, each match in <strong>")
    studyIdentifiers: list[StudyIdentifiers]


class DrillDownSeries(BaseModel):
    seriesNumber: str | None
    seriesUID: str
    numberImages: int | None
    modality: str | None
    manufacturer: str | None
    annotationsFlag: bool
    annotationsSize: int
    patientId: str
    patientPkId: str
    studyId: str
    studyPkId: int
    totalSizeForAllImagesInSeries: int | None
    project: str
    description: str | None
    dataProvenanceSiteName: str | None
    manufacturerModelName: str | None
    softwareVersion: str | None
    maxFrameCount: str
    studyDate: str | None
    studyDesc: str | None
    bodyPartExamined: str | None
    study_id: str | None
    thirdPartyAnalysis: str
    descriptionURI: str | None
    sopClassUID: str | None
    licenseName: str | None
    licenseUrl: str | None
    commercialRestrictions: bool | None
    seriesId: str
    studyDateString: str
    seriesPkId: int
    exactSize: int | None


class DrillDownStudy(BaseModel):
    studyId: str
    date: int | str | None = Field(description="epoch milliseconds (getCartData: YYYY-MM-DD)")
    description: str | None
    id: int
    study_id: str | None
    excludeCommercial: bool | None
    seriesList: list[DrillDownSeries]


class ImageRecord(BaseModel):
    imagePkId: int
    contentDate: str | None
    contentTime: str | None
    seriesPkId: int
    instanceNumber: int | None
    sopInstanceUid: str
    seriesInstanceUid: str
    studyInstanceUid: str
    size: int | None
    fileURI: str
    project: str
    siteName: str | None
    frameNum: int


class DicomTag(BaseModel):
    element: str = Field(description="(gggg,eeee), one `>` per sequence level before it")
    name: str
    data: str


def list_answer(name: str, columns: Sequence[str]) -> type[list]:
    """A list answer's JSON records (format=json): one optional field per column, under its
    NBIA name (null values are left out)."""
    fields: dict[str, Any] = {f"c{i}": (Number, Field(None, alias=column))
                              for i, column in enumerate(columns)}
    record = create_model(name, __config__=ConfigDict(populate_by_name=True), **fields)
    return list[record]  # type: ignore[valid-type]
