"""The IDC API's saved cohorts: list, create, delete, and the lookup the cohort pages use."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from ...core.accounts import MAX_COHORT_ID, CohortDeletion, User
from ...core.errors import InvalidRequest
from ..auth import required_user
from ..context import commons_of
from .models import (
    CohortCreatedAnswer,
    CohortDefinition,
    CohortIdsBody,
    CohortsAnswer,
    DeletedAnswer,
    answers,
    documented,
)
from .params import body_bytes, cohort_definition, filter_set, json_body, only_keys, strict_params
from .routing import ok, route


def cohort_json(cohort, permission: str | None = None) -> dict:
    out = {"cohort_id": cohort.cohort_id, "name": cohort.name, "description": cohort.description,
           "owner": cohort.owner, "filterSet": filter_set(cohort.filters, cohort.version)}
    if permission:
        out["permission"] = permission
    return out


def cohort_echo(cohort) -> dict:
    """What a first page of a saved cohort tells of it."""
    return {"cohort_id": cohort.cohort_id, "name": cohort.name,
            "description": cohort.description,
            "filterSet": filter_set(cohort.filters, cohort.version)}


@route("GET", "/cohorts", summary="The caller's cohorts", responses=answers(CohortsAnswer, 401))
def list_cohorts(request: Request, user: User = Depends(required_user)):
    accounts = commons_of(request).accounts
    return ok({"cohorts": [cohort_json(c, p) for c, p in accounts.list_cohorts(user)]})


@route("POST", "/cohorts", summary="Create a cohort", responses=answers(CohortCreatedAnswer, 401),
       openapi_extra=documented(body=CohortDefinition))
def create_cohort(request: Request, user: User = Depends(required_user),
                  raw: bytes = Depends(body_bytes)):
    strict_params(request, set(), "Invalid key")
    commons = commons_of(request)
    definition = cohort_definition(request, json_body(raw))
    name = definition["name"]
    if not isinstance(name, str) or not name.strip():
        raise InvalidRequest("A name was not provided for this cohort. The cohort was not made.")
    # compiled once so that a cohort with bad filters is never stored
    commons.compile_state({"kind": "manifest", "version": definition["version"],
                           "filters": definition["filters"], "fields": []}, user)
    try:
        cohort = commons.accounts.create_cohort(user, name.strip(), definition["description"],
                                                definition["filters"], definition["version"])
    except InvalidRequest as e:
        raise InvalidRequest(f"{e}. The cohort was not made.") from None
    props = {k: v for k, v in cohort_json(cohort).items() if k != "owner"}
    return ok({"cohort_properties": props, **props})


def _cohort_ids(raw: Any) -> list[int]:
    """Integers or digit strings in the id range only: int() would turn 1.5 or true into
    cohort 1, and an id past the range cannot be looked up (or even echoed by orjson)."""
    if not isinstance(raw, list) or not raw:
        raise InvalidRequest('Expected a body {"cohorts": [cohort ids]}')
    ids = []
    for item in raw:
        if isinstance(item, str) and re.fullmatch(r"[0-9]+", item.strip()):
            cohort_id = int(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            cohort_id = item
        else:
            cohort_id = None
        if cohort_id is None or not 0 < cohort_id <= MAX_COHORT_ID:
            raise InvalidRequest(f"Invalid cohort id {item!r}", [str(item)])
        ids.append(cohort_id)
    return ids


# IDC's words for what deleting a cohort came to
DELETION_RESULTS = {CohortDeletion.DELETED: "Cohort deleted",
                    CohortDeletion.NOT_FOUND: "Cohort not found",
                    CohortDeletion.NOT_OWNER: "Not the owner of this cohort"}


def _delete(request: Request, user: User, raw: Any) -> JSONResponse:
    """One result per id; every id is validated before any cohort is deleted."""
    accounts = commons_of(request).accounts
    return ok({"cohorts": [{"cohort_id": i,
                            "result": DELETION_RESULTS[accounts.delete_cohort(user, i)]}
                           for i in _cohort_ids(raw)]})


@route("DELETE", "/cohorts", summary="Delete cohorts", responses=answers(DeletedAnswer, 401),
       openapi_extra=documented(body=CohortIdsBody))
def delete_cohorts(request: Request, user: User = Depends(required_user),
                   raw: bytes = Depends(body_bytes)):
    body = json_body(raw)
    only_keys(body, {"cohorts"})
    return _delete(request, user, body.get("cohorts"))


@route("DELETE", "/cohorts/{cohort_id:int}", summary="Delete a cohort",
       responses=answers(DeletedAnswer, 401))
def delete_cohort(request: Request, cohort_id: int, user: User = Depends(required_user)):
    return _delete(request, user, [cohort_id])


def saved_cohort(request: Request, user: User, cohort_id: int):
    cohort, _ = commons_of(request).accounts.get_cohort(user, cohort_id)
    return cohort
