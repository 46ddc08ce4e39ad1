"""A search as NBIA's routes send it, read into the core's `Criteria`: the advanced API's
numbered criteria (criteriaType{i} with value{i}, ...), the plain series filters, the sort and
the page."""

from __future__ import annotations

import re
from collections.abc import Callable

from ...core.errors import InvalidRequest
from ...core.search import SORT_FIELDS, Criteria, Sort
from .dates import DAY_FIRST, MONTH_FIRST, parse_date
from .params import MAX_INT, MAX_PAGE, Params
from .vocabulary import species_wanted

CRITERIA_PARAMETERS = ("criteriaType{i}", "value{i}", "fromDate{i}", "toDate{i}",
                       "eventType{i}", "fromDay{i}", "toDay{i}", "sortField", "sortDirection",
                       "start", "size", "tool")
SERIES_FILTERS = {"Collection": "collections", "PatientID": "patients",
                  "StudyInstanceUID": "study_uids", "SeriesInstanceUID": "series_uids",
                  "Modality": "modalities", "BodyPartExamined": "body_parts",
                  "Manufacturer": "manufacturers", "ManufacturerModelName": "models"}


def _value(target: str) -> Callable[[Criteria, Params, int], None]:
    def add(criteria: Criteria, params: Params, i: int) -> None:
        getattr(criteria, target).append(params.required(f"value{i}"))
    return add


def _species(criteria: Criteria, params: Params, i: int) -> None:
    criteria.species.append(species_wanted(params.required(f"value{i}")))


def _date_range(criteria: Criteria, params: Params, i: int) -> None:
    # The advanced API reads dd/mm/yyyy, as NBIA's guide writes dates and its own parser
    # reads them; v4 reads MM-DD-YYYY; each falls back to the other order when its own
    # reading of a date is impossible.
    formats, example = ((MONTH_FIRST + DAY_FIRST, "01-31-2024") if params.version == 4
                        else (DAY_FIRST + MONTH_FIRST, "31/01/2024"))
    first = parse_date(f"fromDate{i}", params.required(f"fromDate{i}"), formats, example)
    last = parse_date(f"toDate{i}", params.required(f"toDate{i}"), formats, example)
    if first > last:
        raise InvalidRequest(f"fromDate{i} is after toDate{i}")
    criteria.study_date_from, criteria.study_date_to = first, last


def _min_studies(criteria: Criteria, params: Params, i: int) -> None:
    params.required(f"value{i}")
    criteria.min_studies = params.integer(f"value{i}", 0, 0, MAX_INT)


def _flag(target: str) -> Callable[[Criteria, Params, int], None]:
    def set_flag(criteria: Criteria, params: Params, i: int) -> None:
        setattr(criteria, target, params.yes_no(f"value{i}"))
    return set_flag


def _modality_anded(criteria: Criteria, params: Params, i: int) -> None:
    criteria.modality_anded = params.required(f"value{i}").lower() in ("all", "yes", "true")


def _time_point(criteria: Criteria, params: Params, i: int) -> None:
    params.required(f"eventType{i}")
    days = [params.integer(f"{n}{i}", 0, -MAX_INT, MAX_INT) for n in ("fromDay", "toDay")
            if params.get(f"{n}{i}") is not None]
    if not days:
        raise InvalidRequest(f"Time point criterion {i} needs fromDay{i} or toDay{i}")
    criteria.time_points = True


CRITERIA_TYPES: dict[str, Callable[[Criteria, Params, int], None]] = {
    "collectioncriteria": _value("collections"),
    "imagemodalitycriteria": _value("modalities"),
    "anatomicalsitecriteria": _value("body_parts"),
    "manufacturercriteria": _value("manufacturers"),
    "modelcriteria": _value("models"),
    "patientcriteria": _value("patients"),
    "speciescriteria": _species,
    "daterangecriteria": _date_range,
    "minnumberofstudiescriteria": _min_studies,
    "phantomcriteria": _flag("phantom"),
    "thirdpartyanalysis": _flag("third_party"),
    "excludecommercialcriteria": _flag("exclude_commercial"),
    "modalityandedsearchcriteria": _modality_anded,
    "timepointcriteria": _time_point,
}


def search_criteria(params: Params) -> Criteria:
    """criteriaType0/value0, criteriaType1/value1, ... (contiguous from 0), plus the plain
    Collection/Modality/BodyPartExamined/... filters. Unknown criterion types are ignored
    (tcia_utils sends `Criteria.DateRange`)."""
    criteria = series_filters(params)
    i = 0
    while (kind := params.get(f"criteriaType{i}")) is not None:
        add = CRITERIA_TYPES.get(kind.lower())
        if add is not None:
            add(criteria, params, i)
        i += 1
    return criteria


def series_filters(params: Params) -> Criteria:
    criteria = Criteria()
    for name, target in SERIES_FILTERS.items():
        getattr(criteria, target).extend(params.all(name))
    return criteria


def sorting(params: Params) -> tuple[Sort, str]:
    """The sort of a search and its echo (`subject-descending`)."""
    field = params.get("sortField") or "subject"
    direction = (params.get("sortDirection") or "ascending").lower()
    key = {"study": "studies", "totalnumberofstudies": "studies",
           "totalnumberofseries": "series"}.get(field.lower(), field.lower())
    if key not in SORT_FIELDS:
        raise InvalidRequest(f"sortField must be one of subject, study, series, collection, "
                             f"totalNumberOfStudies, totalNumberOfSeries; not {field!r}")
    if direction not in ("ascending", "descending"):
        raise InvalidRequest(f"sortDirection must be ascending or descending, not "
                             f"{direction!r}")
    return Sort(key, direction == "descending"), f"{field}-{direction}"


def paging(params: Params, default_size: int) -> tuple[int, int]:
    return (params.integer("start", 0, 0, MAX_INT),
            params.integer("size", default_size, 0, MAX_PAGE))



SERIES_PK = re.compile(r"\d{1,19}")  # decimal digits int() reads, and at most 64 bits


def series_pks(params: Params) -> list[int]:
    values = params.required_items()
    if not all(SERIES_PK.fullmatch(v) for v in values):
        raise InvalidRequest("Parameter list must hold series ids (whole numbers)")
    return [int(v) for v in values]

