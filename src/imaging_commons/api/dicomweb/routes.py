"""DICOMweb under /dicomweb over the active version. QIDO-RS (PS3.18 10.6): the six search
resources, answered in the DICOM JSON model, or 204 with no body when nothing matches (as
dcm4chee-arc answers, and as OHIF's DICOMweb client reads as an empty list). WADO-RS: an
instance's stored file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ...core import downloads
from ...core.accounts import User
from ...core.dicom_query import INSTANCE, SERIES, STUDY, DicomQuery, Match
from ...core.errors import NotFound
from ..auth import optional_user
from ..context import commons_of
from .params import parse, uid
from .render import DicomDatasets, dataset

router = APIRouter(prefix="/dicomweb", tags=["DICOMweb QIDO-RS"])


class DicomJSON(JSONResponse):
    """An answer in the DICOM JSON model (PS3.18 F.2), written by the route itself."""
    media_type = "application/dicom+json"

    def render(self, content) -> bytes:
        return content if isinstance(content, bytes) else super().render(content)


_TRUNCATED = ('299 imaging-commons "The number of results exceeded the maximum supported by '
              'the server. Additional results can be requested."')

# Parameters declared in OpenAPI: the reserved ones, then the attributes OHIF's study and
# series lists send and those each level returns (any other keyword or tag is read too).
_ATTRIBUTES = {
    STUDY: ("StudyInstanceUID", "StudyDate", "PatientName", "PatientID", "AccessionNumber",
            "StudyDescription", "ModalitiesInStudy"),
    SERIES: ("StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
             "SeriesDescription", "BodyPartExamined", "SeriesDate"),
    INSTANCE: ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID",
               "InstanceNumber"),
}


def _declared(level: str, fixed: tuple[str, ...]) -> dict:
    reserved: list[dict] = [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0}},
        {"name": "fuzzymatching", "in": "query", "schema": {"type": "boolean"}},
        {"name": "includefield", "in": "query", "style": "form", "explode": True,
         "schema": {"type": "array", "items": {"type": "string"}}},
    ]
    attributes = [{"name": name, "in": "query", "schema": {"type": "string"}}
                  for name in _ATTRIBUTES[level] if name not in fixed]
    return {"parameters": reserved + attributes}


def _answer(request: Request, user: User | None, level: str, fixed: tuple[Match, ...]):
    asked = parse(request.query_params.multi_items(), level, fixed)
    found = commons_of(request).find_dicom(asked.query, user)
    if not found.rows:
        return Response(status_code=204)
    body = json.dumps([dataset(row, level, asked.include) for row in found.rows],
                      separators=(",", ":")).encode()
    return DicomJSON(body, headers={"Warning": _TRUNCATED} if found.truncated else None)


def _search(path: str, level: str, summary: str, *fixed: str):
    responses: dict = {200: {"model": DicomDatasets}, 204: {"description": "Nothing matches"}}
    return router.get(path, summary=summary, response_class=DicomJSON, responses=responses,
                      openapi_extra=_declared(level, fixed))


@_search("/studies", STUDY, "Search for studies")
def studies(request: Request, user: User | None = Depends(optional_user)):
    return _answer(request, user, STUDY, ())


@_search("/studies/{study}/series", SERIES, "Search for a study's series", "StudyInstanceUID")
def study_series(study: str, request: Request, user: User | None = Depends(optional_user)):
    return _answer(request, user, SERIES, (_within("StudyInstanceUID", study),))


@_search("/series", SERIES, "Search for series")
def series(request: Request, user: User | None = Depends(optional_user)):
    return _answer(request, user, SERIES, ())


@_search("/studies/{study}/series/{series}/instances", INSTANCE,
         "Search for a series' instances", "StudyInstanceUID", "SeriesInstanceUID")
def series_instances(study: str, series: str, request: Request,
                     user: User | None = Depends(optional_user)):
    return _answer(request, user, INSTANCE, (_within("StudyInstanceUID", study),
                                             _within("SeriesInstanceUID", series)))


@_search("/studies/{study}/instances", INSTANCE, "Search for a study's instances",
         "StudyInstanceUID")
def study_instances(study: str, request: Request, user: User | None = Depends(optional_user)):
    return _answer(request, user, INSTANCE, (_within("StudyInstanceUID", study),))


@_search("/instances", INSTANCE, "Search for instances")
def instances(request: Request, user: User | None = Depends(optional_user)):
    return _answer(request, user, INSTANCE, ())


def _within(keyword: str, value: str) -> Match:
    return Match(keyword, values=(uid(value, keyword),))


# ----- WADO-RS ---------------------------------------------------------------------------
_BOUNDARY = "imaging-commons-dicom-part"


class DicomParts(Response):
    """Stored DICOM files as multipart/related parts of type application/dicom (PS3.18 8.6)."""
    media_type = f'multipart/related; type="application/dicom"; boundary={_BOUNDARY}'


@router.get("/studies/{study}/series/{series}/instances/{instance}",
            summary="Retrieve an instance", response_class=DicomParts,
            responses={200: {"content": {DicomParts.media_type: {}}},
                       404: {"description": "No such instance, or its file is not here"}})
def retrieve_instance(study: str, series: str, instance: str, request: Request,
                      user: User | None = Depends(optional_user)):
    """The stored file as it was ingested, byte for byte; an instance of a series imported
    from IDC is a 404 naming the public bucket that holds it."""
    commons = commons_of(request)
    within = (_within("StudyInstanceUID", study), _within("SeriesInstanceUID", series),
              _within("SOPInstanceUID", instance))
    listed = commons.find_dicom(DicomQuery(INSTANCE, within, limit=1), user)
    stored = downloads.series_instance(commons, user or commons.accounts.guest_user(),
                                       series, instance)  # (its refusals say why not)
    if not listed.rows:
        raise NotFound(f"No instance {instance} in series {series} of study {study}")
    head = f"--{_BOUNDARY}\r\nContent-Type: application/dicom\r\n\r\n".encode()
    tail = f"\r\n--{_BOUNDARY}--\r\n".encode()
    size = len(head) + stored.path.stat().st_size + len(tail)
    return StreamingResponse(_parts(head, stored.path, tail), media_type=DicomParts.media_type,
                             headers={"Content-Length": str(size)})


def _parts(head: bytes, path: Path, tail: bytes, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The multipart body read from the file as it is sent (a file can be gigabytes)."""
    yield head
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            yield chunk
    yield tail
