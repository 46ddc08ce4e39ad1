"""The HTTP application: both API adapters over one core."""

from __future__ import annotations

import gc
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..config import Archive
from ..core.commons import Commons
from . import auth, errors


def warm_up_and_settle(commons: Commons) -> None:
    """Warm the archive, then take every object the process holds by then out of the garbage
    collector's reach. A full collection walked all ~140k of them (the libraries' functions,
    types and modules, which live as long as the process) in ~60 ms, a pause that fell on
    whichever request was running; frozen, a collection walks only what came since."""
    commons.warm_up()
    gc.collect()  # (garbage frozen with the rest would never be collected)
    gc.freeze()


def create_app(archive: Archive) -> FastAPI:
    from . import idc_v1, nbia, nbia_images

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # the first search of a big catalogue builds an index: start it before anyone asks, and
        # let it finish before shutting down (DuckDB aborts the process if a query is still
        # running in a thread when the interpreter exits)
        warming = threading.Thread(target=warm_up_and_settle, args=(app.state.commons,),
                                   name="warm-up")
        warming.start()
        yield
        warming.join()

    app = FastAPI(
        lifespan=lifespan,
        title="Imaging Commons",
        version=__version__,
        description="IDC API v1 (under /v1) and the NBIA REST API (under /nbia-api) over one "
                    "archive.",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.commons = Commons(archive)
    app.add_exception_handler(errors.ApiError, errors.api_error_handler)
    app.add_exception_handler(RequestValidationError, errors.validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, errors.http_error_handler)
    app.add_exception_handler(Exception, errors.unexpected_error_handler)
    app.include_router(auth.router)
    app.include_router(idc_v1.router)
    app.include_router(nbia.router)
    app.include_router(nbia_images.router)
    return app
