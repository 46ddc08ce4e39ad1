"""QIDO-RS query parameters (PS3.18 8.3.4) to the core's `DicomQuery`: attributes named by
keyword or by tag (pydicom's data dictionary), their values by VR (UID lists, date ranges,
wildcards), and `includefield`, `fuzzymatching`, `limit` and `offset`. Bad input is refused
with InvalidRequest, never guessed at."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date

from pydicom import datadict

from ...core.dicom_query import SUMMARIES, DicomQuery, Match
from ...core.errors import InvalidRequest

_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_DAY = re.compile(r"[0-9]{8}")


@dataclass(frozen=True, slots=True)
class Asked:
    """A parsed QIDO request: the core's query and the keywords to include (None: all)."""
    query: DicomQuery
    include: frozenset[str] | None


def keyword_of(name: str) -> str:
    """The DICOM keyword a parameter names, by keyword or by tag (`00100020`)."""
    if _TAG.fullmatch(name):
        keyword = datadict.keyword_for_tag(int(name, 16))
    else:
        keyword = name if datadict.tag_for_keyword(name) is not None else ""
    if not keyword:
        raise InvalidRequest(f"Unknown DICOM attribute {name!r}: name an attribute by its "
                             "keyword (PatientID) or its tag (00100020)")
    return keyword


def vr_of(keyword: str) -> str:
    tag = datadict.tag_for_keyword(keyword)
    return datadict.dictionary_VR(tag) if tag is not None else "UN"


def uid(value: str, what: str = "UID") -> str:
    if len(value) > 64 or not _UID.fullmatch(value):
        raise InvalidRequest(f"Malformed {what} {value[:80]!r}: a UID is at most 64 digits "
                             "and dots, with no leading zeros")
    return value


def _day(text: str, keyword: str) -> date:
    try:
        if not _DAY.fullmatch(text):
            raise ValueError
        return date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        raise InvalidRequest(f"Malformed date {text[:40]!r} in {keyword}: dates are YYYYMMDD, "
                             "ranges YYYYMMDD-YYYYMMDD with either end open") from None


def _match(keyword: str, value: str) -> Match:
    vr = vr_of(keyword)
    if vr == "UI":
        return Match(keyword, values=tuple(uid(v, keyword) for v in value.split(",")))
    if vr == "DA" and "*" not in value:
        low, dash, high = value.partition("-")
        earliest = _day(low, keyword) if low else None
        latest = _day(high, keyword) if high else None
        if not dash:
            latest = earliest
        elif earliest is None and latest is None:
            raise InvalidRequest(f"Empty date range in {keyword}")
        if earliest is not None and latest is not None and earliest > latest:
            raise InvalidRequest(f"Date range {value!r} in {keyword} ends before it starts")
        return Match(keyword, earliest=earliest, latest=latest)
    if "*" in value or "?" in value:
        return Match(keyword, pattern=value)
    return Match(keyword, values=(value,))


def _whole(name: str, text: str, least: int) -> int:
    if not text.isdigit() or int(text) < least:
        raise InvalidRequest(f"{name} must be a whole number of at least {least}, not "
                             f"{text[:40]!r}")
    return int(text)


def parse(pairs: list[tuple[str, str]], level: str, fixed: tuple[Match, ...] = ()) -> Asked:
    """A QIDO request's query string at `level`; `fixed` holds the matches its path makes
    (the study or series it is within)."""
    matches: dict[str, Match] = {m.keyword: m for m in fixed}
    include: set[str] = set()
    everything = False
    limit, offset = None, 0
    for name, value in pairs:
        if name == "limit":
            limit = _whole("limit", value, 1)
        elif name == "offset":
            offset = _whole("offset", value, 0)
        elif name == "fuzzymatching":
            # accepted: it widens person-name matching (PS3.18), and the catalogue holds no
            # person names, so it changes no answer
            if value not in ("true", "false"):
                raise InvalidRequest("fuzzymatching must be true or false")
        elif name == "includefield":
            for field in filter(None, value.split(",")):
                if field == "all":
                    everything = True
                else:
                    include.add(keyword_of(field))
        else:
            if "." in name:
                raise InvalidRequest(f"Matching within sequences ({name!r}) is not supported")
            keyword = keyword_of(name)
            if keyword in SUMMARIES:
                raise InvalidRequest(f"{keyword} is returned, not matched on")
            if keyword in matches:
                raise InvalidRequest(f"{keyword} is given more than once")
            if value == "":
                continue  # universal matching: any value, or none
            matches[keyword] = _match(keyword, value)
    include.update(matches)
    query = DicomQuery(level, tuple(matches.values()), limit, offset)
    return Asked(query, None if everything else frozenset(include))
