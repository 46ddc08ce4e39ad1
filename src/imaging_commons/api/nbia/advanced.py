"""The advanced API NBIA documents (services/... and services/v4/...): facet values and
counts, collections, licences and species, the simple search and the text search."""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Callable

from fastapi import Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from ...core.catalog import normalise_collection_id, stable_pk
from ...core.errors import InvalidRequest
from ...core.search import SearchPage
from . import models
from .answers import study_identifiers
from .columns import doi_url
from .criteria import CRITERIA_PARAMETERS, paging, search_criteria, sorting
from .dates import epoch_millis
from .formats import manifest, value_counts_json
from .params import MAX_PAGE, CallerScope, Params, Search, taking
from .routing import ADVANCED, serve
from .vocabulary import highlight, species_description

COUNT_PARAMETERS = ("Collection", "Modality", "BodyPartExamined", *CRITERIA_PARAMETERS)


def _counted(column: str) -> Callable:
    def counts(scope: CallerScope, search: Search,
               params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
        return value_counts_json(search.value_counts(scope, column, search_criteria(params)))
    counts.__doc__ = (f"{column} values with the number of patients having each\n"
                      f"Optional filters: Collection, Modality, BodyPartExamined, or "
                      f"simple-search criteria.")
    return counts


for _name, _column in (("getBodyPartValuesAndCounts", "BodyPartExamined"),
                       ("getModalityValuesAndCounts", "Modality"),
                       ("getCollectionValuesAndCounts", "Collection"),
                       ("getManufacturerValuesAndCounts", "Manufacturer")):
    serve(_name, *ADVANCED, answers=list[models.ValueCount])(_counted(_column))


@serve("getSpeciesValuesAndCounts", *ADVANCED, answers=list[models.ValueCount])
def species_values_and_counts(scope: CallerScope, search: Search,
                              params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
    """Species codes with the number of patients of each"""
    return value_counts_json((s.code, n) for s, n in
                             search.species_counts(scope, search_criteria(params)))


@serve("getSimpleSearchCriteriaValues", *ADVANCED, answers=list[models.CriteriaValues])
def simple_search_criteria_values(scope: CallerScope, search: Search,
                                  params: Params = Depends(taking(*COUNT_PARAMETERS))) -> Response:
    """Every simple-search facet (collections, species, modalities, sites, manufacturers)
    with patient counts, for the given criteria"""
    criteria = search_criteria(params)
    groups = [("Collections", search.value_counts(scope, "Collection", criteria)),
              ("Species", [(s.name, n) for s, n in search.species_counts(scope, criteria)]),
              ("Image Modality", search.value_counts(scope, "Modality", criteria)),
              ("Anatomical Site", search.value_counts(scope, "BodyPartExamined", criteria)),
              ("Manufacturer", search.value_counts(scope, "Manufacturer", criteria))]
    return JSONResponse([{"criteria": name, "values": [{"criteria": v, "count": str(n)}
                                                       for v, n in counts]}
                         for name, counts in groups])


# ----- advanced API: collections, licenses, species ------------------------------------------
@serve("getCollectionDescriptions", *ADVANCED, answers=list[models.CollectionDescription])
def collection_descriptions(scope: CallerScope,
                            params: Params = Depends(taking("collectionName"))) -> Response:
    """Collection descriptions (HTML) with their DOI and license
    A collection without a description has "" (tcia_utils strips HTML from every one)."""
    name = params.get("collectionName")
    chosen = [c for c in scope.visible_collections()
              if name is None or normalise_collection_id(name) == c.collection_id]
    return JSONResponse([{
        "description": f"<p>{html.escape(c.description)}</p>" if c.description else "",
        "id": stable_pk(c.collection_id),
        "collectionDescTimestamp": epoch_millis(c.date_updated),
        "collectionName": c.name, "userName": None,
        "licenseId": stable_pk(c.license_short_name) if c.license_short_name else None,
        "descriptionURI": doi_url(c.doi)} for c in sorted(chosen, key=lambda c: c.name)])


@serve("getLicenses", *ADVANCED, answers=list[models.License])
def licenses(scope: CallerScope) -> Response:
    """The data licenses of the collections. A short name is described as most collections
    describe it: IDC's catalogue has a collection whose "CC BY-NC 3.0" says CC BY 3.0."""
    described: dict[str, Counter] = defaultdict(Counter)
    for c in scope.visible_collections():
        if c.license_short_name:
            described[c.license_short_name][(c.license_long_name, c.license_url)] += 1
    out = []
    for short in sorted(described):
        (long_name, url), _ = described[short].most_common(1)[0]
        commercial = "NO" if "NC" in short.upper() else "YES"
        text = url or long_name
        license_id = stable_pk(short)
        out.append({"longName": long_name, "id": license_id, "shortName": short,
                    "licenseURL": url, "licenseText": text, "commercialUse": commercial,
                    "license": {"id": license_id, "longName": long_name, "shortName": short,
                                "url": url, "commercialUse": commercial, "licenseText": text}})
    return JSONResponse(out)


@serve("getSpeciesTax", *ADVANCED, answers=list[models.SpeciesTax])
def species_taxonomy(scope: CallerScope) -> Response:
    """The species of the collections, as codes with their description"""
    species = {s.code: s for c in scope.visible_collections() for s in c.species}
    return JSONResponse([{"speciesCode": s.code, "speciesDescription": species_description(s)}
                         for _, s in sorted(species.items())])


DOI = taking("DOI", "CollectionOrSeries", required=("DOI",))


@serve("getCollectionOrSeriesForDOI", *ADVANCED, answers=list[models.DoiAnswer])
def collection_or_series_for_doi(scope: CallerScope, search: Search,
                                 params: Params = Depends(DOI)) -> Response:
    """The collections (or, with CollectionOrSeries=series, the series) of a DOI
    `thirdPartyAnanlysis` (sic) is YES for analysis results."""
    rows = search.series_for_doi(scope, params.required("DOI"))
    per_series = (params.get("CollectionOrSeries") or "").lower() == "series"
    answers = dict.fromkeys((r.collection, r.series_uid if per_series else None,
                             "YES" if r.third_party else None) for r in rows)
    return JSONResponse([{"collection": c, "seriesInstanceUID": s, "thirdPartyAnanlysis": t}
                         for c, s, t in answers])


@serve("getManufacturerTree", *ADVANCED, answers=models.TreeNode)
def manufacturer_tree(scope: CallerScope, search: Search) -> Response:
    """Manufacturers and their models as a tree
    The catalogue keeps no software versions, so model nodes have no children."""
    tree: dict[str, list[str]] = {}
    for maker, model in search.manufacturer_models(scope):
        tree.setdefault(maker, []).extend([model] if model else [])

    def node(criteria: str, value: str, children: list) -> dict:
        return {"data": {"criteria": criteria, "value": value}, "children": children}

    return JSONResponse(node("root", "All Manufactures", [
        node("Manufacturer", maker, [node("Model", m, []) for m in models])
        for maker, models in tree.items()]))


# ----- advanced API: the simple search and text search ---------------------------------------
@serve("getSimpleSearchWithModalityAndBodyPartPaged", *ADVANCED,
       answers=models.SimpleSearchPage)
@serve("getSimpleSearch", "v4", answers=models.SimpleSearchPage)
def simple_search(scope: CallerScope, search: Search,
                  params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """One page of the patients matching simple-search criteria, with facet counts
    Criteria: criteriaType{i} with value{i} (or fromDate{i}/toDate{i}, eventType{i}/fromDay{i}/
    toDay{i}); sortField, sortDirection, start (offset), size."""
    criteria = search_criteria(params)
    sort, sort_echo = sorting(params)
    start, size = paging(params, 10)
    page: SearchPage = search.search(scope, criteria, sort, start, size)
    return JSONResponse({
        "resultSet": [{
            "subjectId": p.patient_id, "project": p.collection, "id": p.pk,
            "modalities": p.modalities, "bodyParts": p.body_parts,
            "species": [s.code for s in p.species], "timepoints": {},
            "totalNumberOfStudies": p.total_studies, "totalNumberOfSeries": p.total_series,
            "studyIdentifiers": study_identifiers(p)} for p in page.patients],
        "totalPatients": page.total_patients,
        "bodyParts": [{"value": v, "count": n} for v, n in page.body_parts],
        "modalities": [{"value": v, "count": n} for v, n in page.modalities],
        "collections": [{"value": v, "count": n} for v, n in page.collections],
        "species": [{"value": s.code, "count": n} for s, n in page.species],
        "maxTimepoints": {}, "minTimepoints": {},
        "sort": sort_echo})


@serve("getManifestForSimpleSearch", *ADVANCED, heavy=True)
def manifest_for_simple_search(request: Request, scope: CallerScope, search: Search,
                               params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """The manifest of the series of one page of a simple search (size defaults to all)"""
    uids, _ = search.page_series(scope, search_criteria(params), sorting(params)[0],
                                 *paging(params, MAX_PAGE))
    return manifest(request, uids, include_annotation=False)


@serve("getRestrictionsForSimpleSearch", *ADVANCED)
def restrictions_for_simple_search(
        scope: CallerScope, search: Search,
        params: Params = Depends(taking(*CRITERIA_PARAMETERS))) -> Response:
    """Yes if a series of the simple search's page is under a non-commercial license"""
    _, restricted = search.page_series(scope, search_criteria(params), sorting(params)[0],
                                       *paging(params, MAX_PAGE))
    return PlainTextResponse("Yes" if restricted else "No")


TEXT_VALUE = taking("textValue", required=("textValue",))


def _text(params: Params) -> str:
    text = params.required("textValue")
    if len(text) > 256:
        raise InvalidRequest("Parameter textValue is longer than 256 characters")
    return text


@serve("getTextSearch", *ADVANCED, answers=list[models.TextSearchHit])
def text_search(scope: CallerScope, search: Search,
                params: Params = Depends(TEXT_VALUE)) -> Response:
    """Patients with a series whose descriptions, manufacturer, modality, body part or
    identifiers hold the words of textValue, with the first hit highlighted"""
    patients, _ = search.text_search(scope, _text(params))
    return JSONResponse([{
        "subjectId": p.patient_id, "project": p.collection, "id": p.pk,
        "totalNumberOfStudies": p.total_studies, "totalNumberOfSeries": p.total_series,
        "hit": highlight(p.hit) if p.hit else None,
        "studyIdentifiers": study_identifiers(p)} for p in patients])


@serve("GetManifestForTextSearch", *ADVANCED, heavy=True)
@serve("getManifestForTextSearch", *ADVANCED, heavy=True)
def manifest_for_text_search(request: Request, scope: CallerScope, search: Search,
                             params: Params = Depends(TEXT_VALUE)) -> Response:
    """The manifest of the series a text search finds"""
    _, uids = search.text_search(scope, _text(params))
    return manifest(request, uids, include_annotation=False)


