"""NBIA's wire formats: list answers streamed as JSON, CSV, XML or HTML, CSV downloads, value
counts, and the `.tcia` manifests the NBIA Data Retriever reads."""

from __future__ import annotations

import html
import itertools
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from xml.sax.saxutils import escape as xml_escape

import orjson
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ...core.dicom_rows import is_uid
from ...core.errors import InvalidRequest
from ...core.search import Scope
from ..security import attachment
from .columns import Record, Wire
from .params import FORMATS, SERVICES, Params, api_version

MANIFEST_TYPE = "application/x-nbia-manifest-file"


def listing(request: Request, params: Params, scope: Scope, columns: Sequence[str],
            batches: Iterable[Sequence[Record]]) -> Response:
    """A versioned list answer in the requested format, streamed. v4 records (lists of more
    than bare values) carry `Authorized`; no rows is a 200 with an empty body, which
    tcia_utils reads as none."""
    fmt = (params.get("format") or "json").lower()
    if fmt not in FORMATS:
        raise InvalidRequest(f"Parameter format must be json, csv, xml or html, not {fmt!r}")
    wire = Wire(api_version(request), scope)
    if wire.version == 4 and len(columns) > 1:
        columns = (*columns, "Authorized")
    batches = iter(batches)
    first = next(batches, None)  # (a list too large to send is refused here, before a byte)
    if not first:
        return Response(status_code=200)
    rows = (wire.values(r, columns) for batch in itertools.chain([first], batches) for r in batch)
    render = {"json": json_chunks, "csv": csv_chunks, "xml": xml_chunks, "html": html_chunks}[fmt]
    return StreamingResponse(render(columns, rows), media_type=FORMATS[fmt])


def json_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    yield "["
    separator = ""
    while batch := list(itertools.islice(rows, 2000)):
        yield separator + ",".join(  # orjson: whole-collection lists are CPU-bound here
            orjson.dumps({c: v for c, v in zip(columns, row) if v is not None}).decode()
            for row in batch)
        separator = ","
    yield "]"


def csv_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    """NBIA's CSV: one column unquoted; several with every field quoted, `"` doubled. A lone
    column's value holding a quote, comma or line break is quoted all the same (RFC 4180), or
    it would end its row early or add rows of its own."""
    if len(columns) == 1:
        yield columns[0] + "\n"
        yield from ("" if row[0] is None else f"{_csv_cell(str(row[0]))}\n" for row in rows)
        return

    def line(values) -> str:
        return ",".join('"' + ("" if v is None else str(v)).replace('"', '""') + '"'
                        for v in values) + "\n"

    yield line(columns)
    yield from (line(row) for row in rows)


def _csv_cell(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if re.search(r'[",\r\n]', text) else text


XML_ILLEGAL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def xml_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    """Well-formed XML: an element name cannot start with a digit ("3rd Party Analysis"), and
    characters XML 1.0 forbids (some IDC series descriptions hold \\x01) become U+FFFD."""
    tags = [re.sub(r"^(?=\d)|[^0-9A-Za-z_]", "_", c) for c in columns]
    yield '<?xml version="1.0" encoding="UTF-8" standalone="yes"?><Results>'
    for row in rows:
        yield "<Row>" + "".join(f"<{t}>{xml_escape(XML_ILLEGAL.sub(chr(0xFFFD), str(v)))}</{t}>"
                                for t, v in zip(tags, row) if v is not None) + "</Row>"
    yield "</Results>"


def html_chunks(columns: Sequence[str], rows: Iterator[list]) -> Iterator[str]:
    yield ("<P ALIGN='center'><TABLE BORDER=1><TR>"
           + "".join(f"<TH>{html.escape(c)}</TH>" for c in columns) + "</TR>")
    for row in rows:
        yield "<TR>" + "".join(f"<TD>{'&nbsp;' if v is None else html.escape(str(v))}</TD>"
                               for v in row) + "</TR>"
    yield "</TABLE></P>"


def csv_answer(columns: Sequence[str], wire: Wire, records: Sequence[Record],
               filename: str | None = None) -> Response:
    body = "".join(csv_chunks(columns, (wire.values(r, columns) for r in records)))
    headers = {"Content-Disposition": attachment(filename)} if filename else None
    return Response(body, media_type="text/csv", headers=headers)


def value_counts_json(values: Iterable[tuple[str, int]]) -> JSONResponse:
    return JSONResponse([{"criteria": v, "count": str(n)} for v, n in values])


def manifest(request: Request, series_uids: Iterable[str], include_annotation: bool) -> Response:
    """The NBIA Data Retriever's `.tcia` manifest, downloading from this server. Its lines are
    `key=value` and UIDs: a value that is not a UID (which only an archive ingested before
    ingest checked UIDs can hold) could add lines of its own, so it is left out."""
    base = str(request.base_url).rstrip("/")
    series_uids = [uid for uid in series_uids if is_uid(uid)]
    lines = [f"downloadServerUrl={base}{SERVICES}/v2/getImage",
             f"includeAnnotation={'true' if include_annotation else 'false'}",
             "noOfrRetry=4",
             f"databasketId=manifest-{int(time.time() * 1000)}.tcia",
             "manifestVersion=3.0",
             "ListOfSeriesToDownload=",
             *series_uids]
    return Response("".join(f"{line}\n" for line in lines), media_type=MANIFEST_TYPE)


def annotation_flag(params: Params, default: bool) -> bool:
    text = params.get("includeAnnotation")
    return default if text is None else text.lower() == "true"

