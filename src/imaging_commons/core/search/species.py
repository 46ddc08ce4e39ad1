"""Species of a collection: the catalogue writes names ("Human", "Human, Mouse", "Phantom");
the search speaks SNOMED CT codes, the standard DICOM uses for a patient's species."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

# SNOMED CT codes of the species, by the catalogue's (lower-case) species names.
SNOMED_CT: Mapping[str, str] = {
    "human": "337915000",
    "mouse": "447612001",
    "canine": "448771007",
    "dog": "448771007",
}
PHANTOM = "phantom"


@dataclass(frozen=True, slots=True)
class Species:
    """A species: its SNOMED CT code (the catalogue's name where none is known) and the name
    the catalogue gives it ("Human")."""

    code: str
    name: str


def species_of(names: str | None) -> tuple[tuple[Species, ...], bool]:
    """A collection's species and whether it is a phantom collection, from the catalogue's
    species text ("Human", "Human, Mouse", "Phantom")."""
    species, phantom = [], False
    for name in (n.strip() for n in (names or "").split(",")):
        if not name:
            continue
        if name.lower() == PHANTOM:
            phantom = True
            continue
        species.append(Species(SNOMED_CT.get(name.lower(), name), name))
    return tuple(species), phantom
