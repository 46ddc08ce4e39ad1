"""NBIA image endpoints: series zips, single files, thumbnails, DICOM tags and checksums.

Routes validate parameters, ask `core.downloads` which stored files are meant (and whether the
caller may have them), and shape NBIA's wire formats; `core.imaging` does the file work.
Zips are streamed block by block, so a series of any size costs a few MB of memory.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from fastapi import APIRouter, Depends, Request
from fastapi.responses import (
    FileResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from ...core import downloads
from ...core.accounts import User
from ...core.downloads import Level
from ...core.errors import InvalidRequest
from ...core.imaging import DicomElement, dicom_tags
from ...core.zips import Member, iter_zip
from ..auth import nbia_user
from ..context import commons_of
from ..security import attachment
from . import routing
from .models import DicomTag
from .params import Params, taking

router = APIRouter(tags=["NBIA images"])
SERIES_UID = ("SeriesInstanceUID",)

HIERARCHY_PARAMETERS = {"SeriesInstanceUID": Level.SERIES, "StudyInstanceUID": Level.STUDY,
                        "PatientID": Level.PATIENT, "Collection": Level.COLLECTION}


def serve(name: str, *prefixes: str, methods: tuple[str, ...] = ("GET",),
          heavy: bool = False, answers: type | None = None) -> Callable:
    return routing.serve(name, *prefixes, methods=methods, target=router, heavy=heavy,
                         answers=answers)


@contextmanager
def answering_about(name: str, value: str) -> Iterator[None]:
    """Answer an identifier the caller may not see in NBIA's words about the identifier the
    caller sent: as NBIA answers a series the caller may not see (400, "not been granted"),
    the same whether it is restricted or exists nowhere, so a caller without a grant cannot
    tell the two apart. (Files catalogued here but held in IDC's public bucket, and an image
    missing from a series the caller may see, are the core's plain NotFound: a 404 saying
    so.)"""
    try:
        yield
    except downloads.NotVisible:
        raise InvalidRequest(f"The user has not been granted the access to image with given "
                             f"{name},{value}. Please contact System Admin to resolve this "
                             f"issue.") from None


def new_file_names(count: int) -> list[str]:
    """NBIA's NewFileNames: `<acquisition>-<position>.dcm`, the position zero-padded to the
    width of the image count (1-1.dcm for one image, 1-01.dcm ... 1-50.dcm for fifty). The
    catalogue keeps no AcquisitionNumber, so every image counts as acquisition 1."""
    width = len(str(count))
    return [f"1-{position:0{width}d}.dcm" for position in range(1, count + 1)]


def nbia_tag_rows(rows: list[DicomElement]) -> list[dict[str, str]]:
    """The core's tag listing as NBIA writes it: the `>` of each nesting level goes in front of
    the element, and every sequence is closed by an `End <name>` row repeating its element
    after its items (tcia_utils' getSegRefSeries finds referenced series by both)."""
    out: list[dict[str, str]] = []
    open_sequences: list[DicomElement] = []  # innermost last

    def close(depth: int) -> None:
        while open_sequences and open_sequences[-1].depth >= depth:
            sequence = open_sequences.pop()
            out.append({"element": ">" * sequence.depth + sequence.element,
                        "name": f"End {sequence.name}", "data": ""})

    for row in rows:
        close(row.depth)
        out.append({"element": ">" * row.depth + row.element, "name": row.name,
                    "data": row.data})
        if row.vr == "SQ":
            open_sequences.append(row)
    close(0)
    return out


def tags_response(instance: downloads.StoredInstance) -> JSONResponse:
    return JSONResponse(nbia_tag_rows(dicom_tags(instance.path)))


def image_members(names: list[str], series: downloads.SeriesFiles) -> list[Member]:
    """The series' stored files under `names`, with the CRC-32 recorded at ingest."""
    return [Member(name, i.path, i.crc32) for name, i in zip(names, series.instances)]


def zip_response(series_uid: str, members: list[Member]) -> StreamingResponse:
    return StreamingResponse(iter_zip(members), media_type="application/zip", headers={
        "Content-Disposition": attachment(f"{series_uid}.zip")})


def series_files(request: Request, user: User, series_uid: str) -> downloads.SeriesFiles:
    with answering_about("SeriesInstanceUID", series_uid):
        return downloads.series_files(commons_of(request), user, series_uid)


def series_instance(request: Request, user: User, series_uid: str,
                    sop_uid: str) -> downloads.StoredInstance:
    with answering_about("SeriesInstanceUID", series_uid):
        return downloads.series_instance(commons_of(request), user, series_uid, sop_uid)


@serve("getImage", "v1", "v2", "v4", heavy=True)
def get_image(request: Request, user: User = Depends(nbia_user),
              params: Params = Depends(taking("SeriesInstanceUID", "NewFileNames",
                                              required=SERIES_UID))):
    """A series as a zip: LICENSE first, then its images in InstanceNumber order.

    Images are named `<SOPInstanceUID>.dcm`, or `1-01.dcm`, `1-02.dcm`, ... with
    NewFileNames=Yes (what tcia_utils asks for)."""
    series_uid = params.required("SeriesInstanceUID")
    series = series_files(request, user, series_uid)
    if (params.get("NewFileNames") or "").lower() == "yes":
        names = new_file_names(len(series.instances))
    else:
        names = [f"{i.sop_instance_uid}.dcm" for i in series.instances]
    return zip_response(series_uid, [Member("LICENSE", series.license_text.encode())]
                        + image_members(names, series))


@serve("getImageWithMD5Hash", "v1", "v2", "v4", heavy=True)
def get_image_with_md5_hash(request: Request, user: User = Depends(nbia_user),
                            params: Params = Depends(taking(*SERIES_UID,
                                                            required=SERIES_UID))):
    """A series as a zip of `00000001.dcm`, ... in InstanceNumber order, then `md5hashes.csv`.

    The CSV (`Filename,MD5Hash`) gives the md5 recorded when each file was ingested, so a
    client that checks it detects any change to the bytes since, on disk or on the wire."""
    series_uid = params.required("SeriesInstanceUID")
    series = series_files(request, user, series_uid)
    names = [f"{position:08d}.dcm" for position in range(1, len(series.instances) + 1)]
    csv = "Filename,MD5Hash\n" + "".join(
        f"{name},{i.md5}\n" for name, i in zip(names, series.instances))
    return zip_response(series_uid, image_members(names, series)
                        + [Member("md5hashes.csv", csv.encode())])


@serve("getSingleImage", "v1", "v2", "v4")
def get_single_image(request: Request, user: User = Depends(nbia_user),
                     params: Params = Depends(taking(
                         "SeriesInstanceUID", "SOPInstanceUID",
                         required=("SeriesInstanceUID", "SOPInstanceUID")))):
    """One image of a series, as the stored DICOM file."""
    sop_uid = params.required("SOPInstanceUID")
    instance = series_instance(request, user, params.required("SeriesInstanceUID"), sop_uid)
    return FileResponse(instance.path, media_type="application/dicom",
                        filename=f"{sop_uid}.dcm")


@serve("getThumbnail", "", "v4", methods=("GET", "POST"))
def get_thumbnail(request: Request, user: User = Depends(nbia_user),
                  params: Params = Depends(taking("seriesUID", "objectUID",
                                                  required=("seriesUID", "objectUID")))):
    """A JPEG of an image's first frame, windowed, longest side at most 512 pixels.

    An object without displayable pixels (a report, a plan) is a 400, as on NBIA."""
    series_uid, object_uid = params.required("seriesUID"), params.required("objectUID")
    with answering_about("SeriesInstanceUID", series_uid):
        jpeg = downloads.thumbnail(commons_of(request), user, series_uid, object_uid)
    return Response(jpeg, media_type="image/jpeg")


@serve("getDicomTags", "", "v4", answers=list[DicomTag])
def get_dicom_tags(request: Request, user: User = Depends(nbia_user),
                   params: Params = Depends(taking("SeriesUID", required=("SeriesUID",)))):
    """Every element of a series' first image (by InstanceNumber): [{element, name, data}],
    elements inside sequences prefixed with one `>` per level, a sequence's items followed by
    an `End <name>` row."""
    series_uid = params.required("SeriesUID")
    with answering_about("SeriesInstanceUID", series_uid):
        first = downloads.series_instances(commons_of(request), user, series_uid)[0]
    return tags_response(first)


@serve("getDicomTagsByImageID", "", "v4", answers=list[DicomTag])
def get_dicom_tags_by_image_id(request: Request, user: User = Depends(nbia_user),
                               params: Params = Depends(taking("imageID",
                                                               required=("imageID",)))):
    """Every element of one image, addressed by its integer id (imagePkId)."""
    text = params.required("imageID")
    if not re.fullmatch(r"[0-9]{1,30}", text):
        raise InvalidRequest("imageID must be an image's integer id (its imagePkId)")
    with answering_about("imageID", text):
        instance = downloads.instance_by_image_id(commons_of(request), user, int(text))
    return tags_response(instance)


@serve("getM5HashForImage", "v2", "v4")
def get_md5_hash_for_image(request: Request, user: User = Depends(nbia_user),
                           params: Params = Depends(taking("SOPInstanceUid",
                                                           required=("SOPInstanceUid",)))):
    """The md5 of one stored image file, as text (the endpoint's name is NBIA's spelling)."""
    sop_uid = params.required("SOPInstanceUid")
    with answering_about("SOPInstanceUID", sop_uid):
        instance = downloads.instance_by_sop_uid(commons_of(request), user, sop_uid)
    return PlainTextResponse(instance.md5)


@serve("getMD5Hierarchy", "", "v4", methods=("GET", "POST"))
def get_md5_hierarchy(request: Request, user: User = Depends(nbia_user),
                      params: Params = Depends(taking(*HIERARCHY_PARAMETERS))):
    """One md5 over every file below a series, study, patient or collection, as text.

    It is the md5 of the files' md5 hex digests sorted and joined by newlines, so it changes
    exactly when a file below changes. Give one level; Collection may also narrow PatientID."""
    given = {name: value for name in HIERARCHY_PARAMETERS if (value := params.get(name))}
    if len(given) != 1 and given.keys() != {"PatientID", "Collection"}:
        raise InvalidRequest("Give exactly one of SeriesInstanceUID, StudyInstanceUID, "
                             "PatientID or Collection (Collection may also narrow PatientID).")
    name = "PatientID" if "PatientID" in given else next(iter(given))
    with answering_about(name, given[name]):
        digest = downloads.md5_hierarchy(commons_of(request), user,
                                         {HIERARCHY_PARAMETERS[n]: v for n, v in given.items()})
    return PlainTextResponse(digest)
