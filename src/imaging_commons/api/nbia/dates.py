"""Dates as NBIA's routes read and write them: v4 month first (MM-DD-YYYY), v1/v2 and the
advanced API day first (dd/MM/yyyy), ISO dates everywhere; epoch milliseconds in drill-downs."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from ...core.errors import InvalidRequest
from .params import Params

MONTH_FIRST = ("%m-%d-%Y", "%m/%d/%Y")
DAY_FIRST = ("%d/%m/%Y", "%d-%m-%Y")
ISO = ("%Y-%m-%d", "%Y/%m/%d")


def parse_date(name: str, text: str, formats: Sequence[str], example: str) -> dt.date:
    for fmt in (*formats, *ISO):
        try:
            return dt.datetime.strptime(text, fmt).date()
        except ValueError:
            continue
    raise InvalidRequest(f"Parameter {name} must be a date like {example}, not {text!r}")


def version_date(params: Params, *names: str) -> dt.date:
    """A versioned route's date parameter: v4 writes MM-DD-YYYY, older versions dd/MM/yyyy."""
    name = next((n for n in names if params.get(n)), names[0])
    text = params.required(name)
    if params.version == 4:
        return parse_date(name, text, MONTH_FIRST, "01-31-2024")
    return parse_date(name, text, DAY_FIRST, "31/01/2024")


def epoch_millis(iso: str | None) -> int | None:
    if not iso:
        return None
    try:
        day = dt.date.fromisoformat(iso)
    except ValueError:
        return None
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)

