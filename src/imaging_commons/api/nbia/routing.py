"""How an NBIA handler is registered: one route per path family and method, its OpenAPI
operation declaring the parameters it reads, and the heavy answers counted per client."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

from fastapi import APIRouter
from pydantic import BaseModel

from .params import SERVICES, Taking

VERSIONED = ("v1", "v2", "v4")
ADVANCED = ("", "v4")

search_router = APIRouter(tags=["NBIA search"])

# Names of the services whose answers can run to a whole collection or series (lists, zips):
# HeavyRequestLimit counts them per client.
HEAVY: set[str] = set()


def is_heavy(path: str) -> bool:
    return path.startswith(SERVICES) and path.rpartition("/")[2] in HEAVY


def _declared(taking: Taking | None, method: str) -> dict:
    """The OpenAPI parameters (and, on POST, the form body) of what `taking` reads: a
    criterion's `{i}` is declared for 0 and 1. On GET the required ones are required in the
    query; on POST they may come in either, so the form body requires them."""
    if taking is None:
        return {}
    names = [(n.replace("{i}", str(i)), n) for n in taking.names
             for i in ((0, 1) if "{i}" in n else (0,))]
    query = [{"name": name, "in": "query", "schema": taking.schema(n),
              "required": method == "GET" and n in taking.required,
              **({"style": "form", "explode": True}
                 if taking.schema(n).get("type") == "array" else {})}
             for name, n in names]
    extra: dict = {"parameters": query}
    if method == "POST":
        form = {"type": "object", "properties": {name: taking.schema(n) for name, n in names}}
        if taking.required:
            form["required"] = list(taking.required)
        extra["requestBody"] = {"required": bool(taking.required), "content": {
            "application/x-www-form-urlencoded": {"schema": form}}}
    return extra


def serve(name: str, *prefixes: str, methods=("GET", "POST"),
          target: APIRouter | None = None, heavy: bool = False,
          answers: type[BaseModel] | type[list] | None = None) -> Callable:
    """Register one handler as services/<prefix>/<name> for each prefix ('' = unversioned) on
    `target` (the search router by default). Its OpenAPI operation declares the parameters its
    `taking` dependency reads, typed, and `answers`, the model of its JSON answer (documented
    only: the handler writes its own Response); `heavy` marks an answer that can be as large
    as a collection."""

    def register(handler: Callable) -> Callable:
        summary, _, details = (handler.__doc__ or "").partition("\n")
        readers = [p.default.dependency for p in inspect.signature(handler).parameters.values()
                   if hasattr(getattr(p.default, "dependency", None), "taking")]
        taking = readers[0].taking if readers else None
        responses: dict[int | str, dict] | None = (
            {200: {"model": answers}} if answers else None)
        if heavy:
            HEAVY.add(name)
        for prefix, method in itertools.product(prefixes, methods):
            path = "/".join(part for part in (SERVICES, prefix, name) if part)
            # one route per method, so each OpenAPI operation has its own id
            (target or search_router).add_api_route(
                path, handler, methods=[method], name=f"{method} {path}",
                summary=summary.strip(), description=details.strip(),
                responses=responses, openapi_extra=_declared(taking, method) or None)
        return handler

    return register
