"""Result pages rendered as JSON straight from Arrow columns.

A manifest page can hold hundreds of thousands of rows; building a Python dict per row only to
serialise it again cost more than the query. Columns whose JSON text Arrow can produce exactly
(integers, and strings with nothing to escape) are rendered by Arrow's string kernels; every
other column goes value by value through orjson, so the bytes are the same either way.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Iterable

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc


def _value_bytes(array: pa.Array) -> memoryview:
    """The bytes of a string or binary array's values, back to back (a slice's own only)."""
    large = pa.types.is_large_string(array.type) or pa.types.is_large_binary(array.type)
    offsets = np.frombuffer(array.buffers()[1], np.int64 if large else np.int32)
    start, end = int(offsets[array.offset]), int(offsets[array.offset + len(array)])
    return memoryview(array.buffers()[2])[start:end]


def _needs_escape(column: pa.ChunkedArray) -> bool:
    """Whether any string holds a byte JSON escapes (`"`, `\\`, a control character). Reads the
    characters of a page in one pass (a regex kernel per value is five times slower)."""
    for chunk in column.chunks:
        if len(chunk) == 0 or chunk.buffers()[2] is None:
            continue
        octets = np.frombuffer(_value_bytes(chunk), np.uint8)
        if (octets < 0x20).any() or (octets == ord('"')).any() or (octets == ord("\\")).any():
            return True
    return False


def _bytes(text: bytes) -> pa.Scalar:
    return pa.scalar(text, pa.large_binary())


def json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _literals(column: pa.ChunkedArray, as_text: bool) -> tuple[pa.ChunkedArray, bool]:
    """Each value's JSON text as large_binary (null as `null`), and whether the caller must
    still put quotes around every value: a string column without nulls leaves that to the row
    template, which saves a pass over it."""
    kind = column.type
    if pa.types.is_integer(kind) and as_text:
        column = pc.cast(column, pa.large_string())
        kind = column.type
    if pa.types.is_integer(kind):
        text = pc.cast(pc.cast(column, pa.large_string()), pa.large_binary())
    elif (pa.types.is_string(kind) or pa.types.is_large_string(kind)) and not _needs_escape(column):
        text = pc.cast(column, pa.large_binary())
        if column.null_count == 0:
            return text, True
        quote = _bytes(b'"')
        text = pc.binary_join_element_wise(quote, text, quote, _bytes(b""))
    else:
        values = column.to_pylist()
        if as_text:
            values = [None if v is None else str(v) for v in values]
        return pa.chunked_array([pa.array([orjson.dumps(v, default=json_default) for v in values],
                                          pa.large_binary())]), False
    return pc.fill_null(text, _bytes(b"null")), False


def json_rows(table: pa.Table, as_text: Iterable[str] = ()) -> orjson.Fragment:
    """`table` as a JSON array of row objects, ready to embed in an orjson-rendered body.
    Columns named in `as_text` are written as JSON strings (numbers the real server quotes).

    Every row is one template filled in by Arrow: `{"k1":` v1 `,"k2":` v2 ... `},`; the rows
    lie back to back in one buffer, so the array is that buffer less its last comma."""
    if table.num_rows == 0:
        return orjson.Fragment(b"[]")
    as_text = set(as_text)
    pieces: list[Any] = []
    closing = b""  # what the previous value still needs after it (its closing quote)
    for index, name in enumerate(table.column_names):
        values, quote = _literals(table.column(index), name in as_text)
        opening = b'"' if quote else b""
        lead = (b"{" if index == 0 else b",") + orjson.dumps(name) + b":"
        pieces += [_bytes(closing + lead + opening), values]
        closing = opening
    pieces.append(_bytes(closing + b"},"))
    rows = pc.binary_join_element_wise(*pieces, _bytes(b"")).combine_chunks()
    return orjson.Fragment(b"".join((b"[", _value_bytes(rows)[:-1], b"]")))
