"""NBIA's own words for what the search core answers in domain terms: species as NBIA
describes them, and a text search's hit as the HTML line NBIA's portal shows."""

from __future__ import annotations

import html

from ...core.search import Species, TextHit

# NBIA's description of each species, by its SNOMED CT code (others are described by name).
SPECIES_DESCRIPTIONS = {
    "337915000": "Homo sapiens",
    "447612001": "Mus musculus",
    "448771007": "Canis lupus familiaris",
}
# The label NBIA prints for each field a text search looks in.
HIT_LABELS = {
    "SeriesDescription": "seriesDesc",
    "StudyDescription": "studyDesc",
    "Manufacturer": "manufacturer",
    "ManufacturerModelName": "manufacturerModelName",
    "Modality": "modality",
    "BodyPartExamined": "bodyPartExamined",
    "PatientID": "patientId",
    "collection": "project",
    "SeriesInstanceUID": "seriesInstanceUID",
    "StudyInstanceUID": "studyInstanceUID",
}


def species_description(species: Species) -> str:
    return SPECIES_DESCRIPTIONS.get(species.code, species.name)


def species_wanted(value: str) -> str:
    """A SpeciesCriteria value as the core matches species (a code or the catalogue's name):
    NBIA's description of a species ("Homo sapiens") stands for its code."""
    wanted = value.strip().lower()
    return next((code for code, description in SPECIES_DESCRIPTIONS.items()
                 if description.lower() == wanted), value)


def highlight(hit: TextHit) -> str:
    """NBIA's hit text: `<em>label</em>: value` with each whole-word match in <strong>,
    HTML-escaped."""
    out, last = [], 0
    for start, end in hit.spans:
        out += [html.escape(hit.value[last:start]),
                f"<strong>{html.escape(hit.value[start:end])}</strong>"]
        last = end
    out.append(html.escape(hit.value[last:]))
    return f"<em>{HIT_LABELS.get(hit.field, hit.field)}</em>: {''.join(out)}"
