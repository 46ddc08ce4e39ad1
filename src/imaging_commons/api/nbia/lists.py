"""Advanced routes over lists of series: drill-downs to studies and images, manifests and
metadata of given series, and shared carts (saved lists)."""

from __future__ import annotations

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...core.catalog import stable_pk
from ...core.errors import InvalidRequest
from ...core.search import Criteria
from ..context import commons_of
from . import models
from .answers import drill_down_json
from .columns import SERIES_METADATA2_COLUMNS, Wire
from .criteria import SERIES_PK, series_pks
from .formats import annotation_flag, csv_answer, manifest
from .params import (
    SERIES_IDS,
    SERVICES,
    Caller,
    CallerScope,
    Params,
    Search,
    api_version,
    taking,
)
from .routing import ADVANCED, serve

LIST = ("list",)
SERIES_ID_LIST = {"list": SERIES_IDS}


@serve("getStudyDrillDown", *ADVANCED, answers=list[models.DrillDownStudy])
def study_drill_down(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list", required=LIST,
                                                     schemas=SERIES_ID_LIST))) -> Response:
    """Studies and series of the given series ids (`list`, repeated)"""
    studies = search.drill_down(scope, Criteria(series_pks=series_pks(params)))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope)))


@serve("getStudyDrillDownWithSeriesIds", *ADVANCED, answers=list[models.DrillDownStudy])
def study_drill_down_with_series_uids(request: Request, scope: CallerScope, search: Search,
                                      params: Params = Depends(taking("list", required=LIST))
                                      ) -> Response:
    """Studies and series of the given SeriesInstanceUIDs (`list`, repeated)"""
    studies = search.drill_down(scope, Criteria(series_uids=params.required_items()))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope)))


@serve("getImageDrillDown", *ADVANCED, answers=list[models.ImageRecord])
def image_drill_down(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list", required=LIST,
                                                     schemas=SERIES_ID_LIST))) -> Response:
    """The stored images of the given series ids, with what a WADO request needs
    fileURI is this server's getSingleImage URL for the image, never a file path."""
    base = f"{str(request.base_url).rstrip('/')}{SERVICES}/v4/getSingleImage"
    return JSONResponse([{
        "imagePkId": stable_pk(i.sop_instance_uid), "contentDate": None, "contentTime": None,
        "seriesPkId": i.series_pk, "instanceNumber": i.instance_number,
        "sopInstanceUid": i.sop_instance_uid, "seriesInstanceUid": i.series_instance_uid,
        "studyInstanceUid": i.study_instance_uid, "size": i.size,
        "fileURI": f"{base}?SeriesInstanceUID={i.series_instance_uid}"
                   f"&SOPInstanceUID={i.sop_instance_uid}",
        "project": i.collection, "siteName": None, "frameNum": 0}
        for i in search.images(scope, Criteria(series_pks=series_pks(params)))])


@serve("getManifestTextV2", *ADVANCED)
@serve("getManifestText", *ADVANCED)
def manifest_text(request: Request, scope: CallerScope, search: Search,
                  params: Params = Depends(taking("list", "includeAnnotation",
                                                     required=LIST))) -> Response:
    """The manifest of the given SeriesInstanceUIDs the caller may see"""
    uids = search.visible_series_uids(scope, params.required_items())
    return manifest(request, uids, annotation_flag(params, default=False))


LEVEL_PARAMETERS = ("patientIDs", "studyUIDs", "seriesUIDs", "anyOrAll", "includeAnnotation")


@serve("getManifestFromPatientStudySeries", *ADVANCED)
def manifest_from_patient_study_series(
        request: Request, scope: CallerScope, search: Search,
        params: Params = Depends(taking(*LEVEL_PARAMETERS))) -> Response:
    """The manifest of the series under comma-separated patientIDs, studyUIDs, seriesUIDs
    anyOrAll=all keeps only series under every list given (default: any)."""
    levels = [params.items(n) for n in ("patientIDs", "studyUIDs", "seriesUIDs")]
    if not any(levels):
        raise InvalidRequest("A parameter, patientIDs, studyUIDs or seriesUIDs, is required "
                             "for this API call.")
    match_all = (params.get("anyOrAll") or "any").lower() == "all"
    patients, studies, series = levels
    uids = search.series_for_levels(scope, patients, studies, series, match_all=match_all)
    return manifest(request, uids, annotation_flag(params, default=True))


@serve("getSeriesMetadata2", *ADVANCED)
def series_metadata2(request: Request, scope: CallerScope, search: Search,
                     params: Params = Depends(taking("list", required=LIST))) -> Response:
    """Metadata of the given series (comma-separated `list`) as CSV"""
    records = search.series(scope, Criteria(series_uids=params.required_items()))
    return csv_answer(SERIES_METADATA2_COLUMNS, Wire(api_version(request), scope), records)


SHARED_LIST_PARAMETERS = ("list", "name", "description", "url")


@serve("createSharedList", *ADVANCED)
def create_shared_list(request: Request, user: Caller, scope: CallerScope, search: Search,
                       params: Params = Depends(taking(*SHARED_LIST_PARAMETERS,
                                                      required=("list", "name")))) -> Response:
    """Save a cart: the series in `list` (repeated) under a unique `name`"""
    commons_of(request).accounts.create_shared_list(
        user, params.required("name"), params.get("description"), params.get("url"),
        params.required_items(), visible=lambda uids: search.visible_series_uids(scope, uids))
    return PlainTextResponse("List created")


def shared_list_uids(request: Request, name: str) -> list[str] | None:
    """A saved cart's series; portal cart URLs name it `nbia-<name>`."""
    accounts = commons_of(request).accounts
    for candidate in dict.fromkeys((name, name.removeprefix("nbia-"))):
        shared = accounts.get_shared_list(candidate)
        if shared is not None:
            return shared.series_uids
    return None


@serve("getCartData", *ADVANCED, answers=list[models.DrillDownStudy])
def cart_data(request: Request, scope: CallerScope, search: Search,
              params: Params = Depends(taking("list", required=LIST))) -> Response:
    """Studies and series of saved carts (`list` = cart name; series ids are read too)"""
    uids, pks = [], []
    for value in params.required_items():
        saved = shared_list_uids(request, value)
        if saved is not None:
            uids += saved
        elif SERIES_PK.fullmatch(value):
            pks.append(int(value))
    if pks:
        uids += [r.series_uid for r in search.series(scope, Criteria(series_pks=pks))]
    if not uids:
        return JSONResponse([])
    studies = search.drill_down(scope, Criteria(series_uids=uids))
    return JSONResponse(drill_down_json(studies, Wire(api_version(request), scope),
                                        study_date=lambda iso: iso))

