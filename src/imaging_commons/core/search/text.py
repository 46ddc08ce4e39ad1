"""The text search's matching rule: a field holds the searched text as whole words, in any
case; an identifier field holds it only when it is the whole identifier."""

from __future__ import annotations

import re

# Searchable fields of the text search (series columns of the index), in the order a hit is
# reported from.
TEXT_FIELDS = ("SeriesDescription", "StudyDescription", "Manufacturer", "ManufacturerModelName",
               "Modality", "BodyPartExamined", "PatientID", "collection", "SeriesInstanceUID",
               "StudyInstanceUID")
UID_FIELDS = ("SeriesInstanceUID", "StudyInstanceUID")


def word_pattern(text: str) -> str:
    """A case-insensitive whole-word pattern for `text` in RE2 (DuckDB), which has no
    look-arounds."""
    return rf"(?i)(?:^|[^0-9A-Za-z]){re.escape(text)}(?:$|[^0-9A-Za-z])"


def spans_of(text: str, value: str) -> tuple[tuple[int, int], ...]:
    """Where `value` holds `text` as a whole word (case-insensitive): (start, end) of each."""
    return tuple(m.span() for m in re.finditer(
        rf"(?<![0-9A-Za-z]){re.escape(text)}(?![0-9A-Za-z])", value, flags=re.IGNORECASE))


def tests(text: str) -> tuple[list[str], list]:
    """One SQL test per TEXT_FIELDS entry, with their `?` values in order."""
    conditions, params = [], []
    for col in TEXT_FIELDS:
        if col in UID_FIELDS:
            conditions.append(f"{col} = ?")
            params.append(text)
        else:  # the cheap substring test spares the regular expression most rows
            conditions.append(f"(contains(lower({col}), ?) AND regexp_matches({col}, ?))")
            params += [text.lower(), word_pattern(text)]
    return conditions, params
