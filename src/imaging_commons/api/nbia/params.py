"""What an NBIA route was sent, read and checked: the query string plus form fields on POST,
the route's parameter list (refused beyond it on v4 paths), and their declared types."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request
from starlette.exceptions import HTTPException

from ...core.accounts import User
from ...core.errors import InvalidRequest
from ...core.search import CatalogSearch, Scope
from ..auth import nbia_user
from ..context import commons_of

SERVICES = "/nbia-api/services"
MAX_INT = 2**31 - 1  # NBIA parses paging numbers as Java ints
MAX_PAGE = 1_000_000  # the largest page NBIA clients ask for (manifests of whole searches)
FORMATS = {"json": "application/json", "csv": "text/csv", "xml": "application/xml",
           "html": "text/html"}


class Params:
    """What a route was sent: the query string plus form fields on POST. Names match
    case-insensitively, names may repeat (`list=a&list=b`), empty values count as missing.
    `version` is the API version of the path (4 on services/v4/..., None on the advanced one),
    which decides how dates are read."""

    def __init__(self, pairs: list[tuple[str, str]], version: int | None = None):
        self.version = version
        self._values: dict[str, list[str]] = {}
        for name, value in pairs:
            if "\x00" in name or "\x00" in value:
                raise InvalidRequest(f"Parameter {name!r} holds a NUL character")
            if value.strip():
                self._values.setdefault(name.lower(), []).append(value.strip())

    def get(self, name: str) -> str | None:
        values = self._values.get(name.lower())
        return values[0] if values else None

    def all(self, name: str) -> list[str]:
        return self._values.get(name.lower(), [])

    def required(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise InvalidRequest(f"A parameter, {name}, is required for this API call.")
        return value

    def items(self, name: str = "list") -> list[str]:
        """A list parameter, repeated or comma-separated (clients do both)."""
        return [item for value in self.all(name) for item in re.split(r"\s*,\s*", value) if item]

    def required_items(self, name: str = "list") -> list[str]:
        items = self.items(name)
        if not items:
            self.required(name)
        return items

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        text = self.get(name)
        if text is None:
            return default
        if not re.fullmatch(r"[+-]?\d{1,19}", text) or not low <= int(text) <= high:
            raise InvalidRequest(f"Parameter {name} must be a whole number from {low} to "
                                 f"{high}, not {text!r}")
        return int(text)

    def yes_no(self, name: str) -> bool:
        text = self.required(name).lower()
        if text not in ("yes", "no", "true", "false"):
            raise InvalidRequest(f"Parameter {name} must be yes or no, not {text!r}")
        return text in ("yes", "true")


class Taking:
    """A route's parameters: their names (`{i}` standing for a criterion's index), those it
    requires, and their schemas beyond the shared ones (`SCHEMAS`)."""

    def __init__(self, names: tuple[str, ...], required: tuple[str, ...],
                 schemas: dict[str, dict]):
        self.names, self.required, self.schemas = names, required, schemas

    def schema(self, name: str) -> dict:
        return self.schemas.get(name) or SCHEMAS.get(name.lower(), {"type": "string"})


def taking(*allowed: str, required: tuple[str, ...] = (),
           schemas: dict[str, dict] | None = None) -> Callable:
    """A dependency reading a route's parameters. On v4 paths a query parameter the route does
    not take (`allowed`, where `{i}` stands for a criterion's index) is refused, as NBIA v4
    does. `required` and `schemas` describe them in the OpenAPI document (`routing.serve`);
    the route itself checks what it requires."""
    names = (*allowed, "format")
    known = re.compile("|".join(re.escape(n).replace(r"\{i\}", r"\d+") for n in names), re.I)

    async def read(request: Request) -> Params:
        if api_version(request) == 4:
            for name in request.query_params:
                if not known.fullmatch(name):
                    raise InvalidRequest(f"Invalid query parameter: '{name}'. Allowed "
                                         f"parameters are: [{', '.join(names)}]")
        pairs = list(request.query_params.multi_items())
        if request.method == "POST":
            try:
                form = await request.form(max_fields=200_000)
            except HTTPException:  # the body limit's 413
                raise
            except Exception as exc:  # malformed multipart bodies raise several types
                raise InvalidRequest(f"Unreadable form body: {exc}") from None
            pairs += [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return Params(pairs, api_version(request))

    read.taking = Taking(names, required, schemas or {})  # type: ignore[attr-defined]
    return read


def api_version(request: Request) -> int | None:
    """4 on services/v4/..., None on the unversioned advanced paths."""
    match = re.match(rf"{SERVICES}/v(\d)/", request.url.path)
    return int(match.group(1)) if match else None


# ----- declared types, shared by every route taking the name (matched case-insensitively) --
DATE = {"type": "string", "pattern": r"^(\d{1,2}[-/]\d{1,2}[-/]\d{4}|\d{4}[-/]\d{1,2}[-/]\d{1,2})$",
        "description": "a date: MM-DD-YYYY on v4, dd/MM/yyyy on v1/v2 and the advanced API "
                       "(YYYY-MM-DD everywhere)"}
ITEMS = {"type": "array", "items": {"type": "string"},
         "description": "repeated, or comma-separated"}
SERIES_IDS = {"type": "array", "items": {"type": "integer", "minimum": 0},
              "description": "series ids (seriesPkId), repeated or comma-separated"}
SCHEMAS: dict[str, dict] = {
    "format": {"type": "string", "enum": list(FORMATS), "default": "json"},
    "start": {"type": "integer", "minimum": 0, "maximum": MAX_INT, "default": 0},
    "size": {"type": "integer", "minimum": 0, "maximum": MAX_PAGE},
    "sortfield": {"type": "string", "default": "subject",
                  "enum": ["subject", "study", "series", "collection", "totalNumberOfStudies",
                           "totalNumberOfSeries"]},
    "sortdirection": {"type": "string", "enum": ["ascending", "descending"],
                      "default": "ascending"},
    "criteriatype{i}": {"type": "string", "description": "CollectionCriteria, "
                        "ImageModalityCriteria, AnatomicalSiteCriteria, ManufacturerCriteria, "
                        "ModelCriteria, PatientCriteria, SpeciesCriteria, DateRangeCriteria, "
                        "MinNumberOfStudiesCriteria, PhantomCriteria, ThirdPartyAnalysis, "
                        "ExcludeCommercialCriteria, ModalityAndedSearchCriteria, "
                        "TimePointCriteria (others are ignored)"},
    "fromdate{i}": DATE, "todate{i}": DATE, "fromdate": DATE, "date": DATE,
    "fromday{i}": {"type": "integer", "minimum": -MAX_INT, "maximum": MAX_INT},
    "today{i}": {"type": "integer", "minimum": -MAX_INT, "maximum": MAX_INT},
    "list": ITEMS,
    "includeannotation": {"type": "boolean"},
    "anyorall": {"type": "string", "enum": ["any", "all"], "default": "any"},
    "collectionorseries": {"type": "string", "enum": ["collection", "series"],
                           "default": "collection"},
    "textvalue": {"type": "string", "maxLength": 256},
    "newfilenames": {"type": "string", "enum": ["Yes", "No"]},
    "imageid": {"type": "integer", "minimum": 0},
}


# ----- what every route depends on ------------------------------------------------------------
def caller_scope(request: Request, user: Caller) -> Scope:
    return searcher(request).scope(user)


def searcher(request: Request) -> CatalogSearch:
    return commons_of(request).search


def max_list_rows(request: Request) -> int:
    return commons_of(request).archive.max_list_rows


Caller = Annotated[User, Depends(nbia_user)]
CallerScope = Annotated[Scope, Depends(caller_scope)]
Search = Annotated[CatalogSearch, Depends(searcher)]
