"""The HTTP application: both API adapters over one core."""

from __future__ import annotations

import gc
import logging
import threading
from contextlib import asynccontextmanager

import duckdb
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import Archive
from ..core.compaction import Compactor
from ..core.errors import CommonsError
from ..core.front_door import Commons
from ..core.storage import storage_problem
from . import auth, errors, security

_settled = threading.Event()  # the process's objects were frozen (once: see below)


def warm_up_and_settle(commons: Commons) -> None:
    """Warm the archive, then take every object the process holds by then out of the garbage
    collector's reach. A full collection walked all ~140k of them (the libraries' functions,
    types and modules, which live as long as the process) in ~60 ms, a pause that fell on
    whichever request was running; frozen, a collection walks only what came since. Only the
    first app of a process freezes: a frozen object is never collected, so an app made later
    in the same process (tests make many) would keep every earlier one's garbage for good.
    An archive whose storage refuses the warm-up is said in one line: requests then answer
    503 with the same sentence."""
    try:
        commons.warm_up()
    except Exception as exc:
        problem = storage_problem(exc, commons.archive.root)
        if problem is None:
            raise
        logging.getLogger("imaging_commons").error("cannot warm up the archive: %s", problem)
    if not _settled.is_set():
        gc.collect()  # (garbage frozen with the rest would never be collected)
        gc.freeze()
        _settled.set()


def create_app(archive: Archive) -> FastAPI:
    from . import dicomweb, idc, nbia

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the first search of a big catalogue builds an index: start it before anyone asks, and
        # let it finish before shutting down (DuckDB aborts the process if a query is still
        # running in a thread when the interpreter exits)
        security.scrub_access_log()  # (uvicorn has set up its loggers by now)
        warming = threading.Thread(target=warm_up_and_settle, args=(app.state.commons,),
                                   name="warm-up")
        warming.start()
        compactor = Compactor(app.state.commons.catalog, archive.compact_every_s)
        compactor.start()
        yield
        compactor.stop()
        warming.join()

    app = FastAPI(
        lifespan=lifespan,
        title="Imaging Commons",
        version=__version__,
        description="IDC API v1 (under /v1), the NBIA REST API (under /nbia-api) and "
                    "DICOMweb QIDO-RS (under /dicomweb) over one archive.",
        docs_url=None,
        redoc_url=None,
        max_body_size=archive.max_body_bytes,
    )
    app.state.commons = Commons(archive)
    described = app.openapi

    def openapi() -> dict:  # (FastAPI keeps the document it makes, so this runs once)
        return idc.with_page_size_limit(described(), archive.max_page_size)

    app.openapi = openapi  # type: ignore[method-assign]
    app.mount(security.SWAGGER_ASSETS_URL, StaticFiles(directory=security.SWAGGER_ASSETS),
              name="swagger-assets")
    app.add_api_route("/docs",
                      lambda: security.swagger_page(app.openapi_url or "", "Imaging Commons"),
                      include_in_schema=False)
    # (Starlette types every handler as taking Exception; each of ours takes its own class)
    app.add_exception_handler(CommonsError, errors.commons_error_handler)  # type: ignore[arg-type]
    for fault in (OSError, duckdb.Error, SQLAlchemyError):
        app.add_exception_handler(fault, errors.storage_error_handler)
    app.add_exception_handler(RequestValidationError,
                              errors.validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException,
                              errors.http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, errors.unexpected_error_handler)
    app.include_router(auth.router)
    app.include_router(idc.router)
    app.include_router(nbia.router)
    app.include_router(dicomweb.router)
    app.add_middleware(security.HeavyRequestLimit, per_client=archive.heavy_per_client,
                       is_heavy=nbia.is_heavy)
    app.add_middleware(security.SecurityHeaders)
    security.add_cors(app, archive.cors_origins)
    return app
