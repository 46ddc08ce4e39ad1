"""Which stored files a download, thumbnail, tag listing or checksum request refers to.

Every NBIA image endpoint starts the same way: resolve a UID (or an image id) in the active
version to the blobs that hold it, for one caller. Doing that here, once, keeps the visibility
rule and the difference between "unknown" and "catalogued from IDC but not stored here"
identical across endpoints. The visibility rule: what lies in a restricted collection the
caller has no grant for does not exist for that caller. It raises the same NotVisible as an
identifier nobody has, so no answer tells a caller whether a restricted collection, patient,
study, series or image exists. Results are plain dataclasses; nothing here knows about HTTP.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import NoReturn

from .accounts import User
from .catalog import normalise_collection_id, stable_pk_sql
from .errors import NotFound
from .front_door import Commons
from .imaging import ImageUnavailable, render_thumbnail

# stable_pk keeps 52 bits, so a larger number cannot be an image id (and must not reach SQL)
_MAX_IMAGE_ID = (1 << 52) - 1


class Level(Enum):
    """A level of the DICOM hierarchy, valued by the item column that names it."""

    SERIES = "SeriesInstanceUID"
    STUDY = "StudyInstanceUID"
    PATIENT = "PatientID"
    COLLECTION = "collection_id"


class NotVisible(NotFound):
    """Nothing with that identifier exists in the active version that the caller may see
    (a file catalogued from IDC but held in its public bucket, or an image missing from a
    series the caller may see, is a plain NotFound saying so)."""


@dataclass(frozen=True, slots=True)
class StoredInstance:
    sop_instance_uid: str
    series_instance_uid: str
    instance_number: int | None
    md5: str
    path: Path
    collection_id: str
    license_short_name: str | None
    crc32: int | None


@dataclass(frozen=True, slots=True)
class SeriesFiles:
    """The stored files of one series, in InstanceNumber order (unnumbered ones first)."""

    series_instance_uid: str
    collection_id: str
    instances: tuple[StoredInstance, ...]
    license_text: str


_INSTANCE_COLUMNS = ("SOPInstanceUID", "SeriesInstanceUID", "InstanceNumber", "instance_md5",
                     "blob_key", "collection_id", "license_short_name", "instance_crc32")
# NBIA's order for a series' images; the SOP UID only makes ties deterministic
_INSTANCE_ORDER = "InstanceNumber NULLS FIRST, SOPInstanceUID"


def series_instances(commons: Commons, user: User, series_uid: str) -> list[StoredInstance]:
    """The stored images of a series the caller may see, in download order."""
    return _stored_instances(_View.of(commons, user), {Level.SERIES: series_uid})


def series_files(commons: Commons, user: User, series_uid: str) -> SeriesFiles:
    """A series' images plus the licence text that goes with a download of them."""
    view = _View.of(commons, user)
    instances = _stored_instances(view, {Level.SERIES: series_uid})
    collection_id = instances[0].collection_id
    return SeriesFiles(series_uid, collection_id, tuple(instances),
                       _license_text(view, collection_id, instances[0].license_short_name))


def series_instance(commons: Commons, user: User, series_uid: str, sop_uid: str) -> StoredInstance:
    """One image of a series; the series is checked first so its errors take precedence."""
    for instance in series_instances(commons, user, series_uid):
        if instance.sop_instance_uid == sop_uid:
            return instance
    raise NotFound(f"No image with SOPInstanceUID {sop_uid} in series {series_uid}")


def thumbnail(commons: Commons, user: User, series_uid: str, sop_uid: str) -> bytes:
    """A JPEG of one image of a series (see `imaging.render_thumbnail`); an object without
    displayable pixels is refused naming the object, never its stored file."""
    instance = series_instance(commons, user, series_uid, sop_uid)
    try:
        return render_thumbnail(instance.path)
    except ImageUnavailable as exc:
        raise ImageUnavailable(f"The object {sop_uid} of series {series_uid} has no image to "
                               "show: no pixel data, or pixel data this server cannot "
                               "decode.") from exc


def instance_by_sop_uid(commons: Commons, user: User, sop_uid: str) -> StoredInstance:
    return _single_instance(_View.of(commons, user), '"SOPInstanceUID" = ?', sop_uid,
                            f"No image with SOPInstanceUID {sop_uid}")


def instance_by_image_id(commons: Commons, user: User, image_id: int) -> StoredInstance:
    """An image by NBIA's integer id (imagePkId), which is stable_pk(SOPInstanceUID)."""
    missing = f"No image with imageID {image_id}"
    if not 0 <= image_id <= _MAX_IMAGE_ID:
        raise NotVisible(missing)
    return _single_instance(_View.of(commons, user), f"{stable_pk_sql('SOPInstanceUID')} = ?",
                            image_id, missing)


def md5_hierarchy(commons: Commons, user: User, scope: dict[Level, str]) -> str:
    """One checksum for every stored file below a hierarchy node (a series, a study, a patient
    or a collection, optionally narrowed by more levels, e.g. a patient within a collection).

    It is the md5 of the files' md5 hex digests, sorted and joined by newlines: it changes
    exactly when a file below is added, removed or changes content, and does not depend on
    the order files were ingested in. Files in collections the caller may not see are left out.
    """
    digests = sorted(i.md5 for i in _stored_instances(_View.of(commons, user), scope))
    return hashlib.md5("\n".join(digests).encode(), usedforsecurity=False).hexdigest()


@dataclass(frozen=True, slots=True)
class _View:
    """One request's look at the archive: the active version, read once so that a publish in
    the middle cannot mix two versions, and the collections hidden from the caller."""

    commons: Commons
    version: int
    hidden: frozenset[str]

    @classmethod
    def of(cls, commons: Commons, user: User) -> _View:
        version = commons.catalog.active_version()
        return cls(commons, version, commons.hidden_collections(user, version))

    def relation(self, kind: str) -> str:
        return self.commons.catalog.relation(self.version, kind)

    def execute(self, sql: str, params: list) -> list[tuple]:
        return self.commons.catalog.connection().execute(sql, params).fetchall()


def _single_instance(view: _View, condition: str, value, missing: str) -> StoredInstance:
    visible = _query_instances(view, condition, [value])
    if not visible:
        raise NotVisible(missing)
    return visible[0]


def _stored_instances(view: _View, scope: dict[Level, str]) -> list[StoredInstance]:
    """Visible stored instances matching every level of `scope`, in download order; raises
    when there are none, saying whether they are unknown (to this caller) or held elsewhere."""
    described = ", ".join(f"{level.name.lower()} {value}" for level, value in scope.items())
    condition, params = _scope_condition(scope)
    visible = _query_instances(view, condition, params)
    if visible:
        return visible
    _explain_absence(view, condition, params, described)


def _scope_condition(scope: dict[Level, str]) -> tuple[str, list[str]]:
    params = [normalise_collection_id(value) if level is Level.COLLECTION else value
              for level, value in scope.items()]
    return " AND ".join(f'"{level.value}" = ?' for level in scope), params


def _query_instances(view: _View, condition: str, params: list) -> list[StoredInstance]:
    """The stored instances matching `condition` that the caller may see."""
    columns = ", ".join(f'"{c}"' for c in _INSTANCE_COLUMNS)
    rows = view.execute(f"SELECT {columns} FROM {view.relation('items')} "
                        f"WHERE level = 'instance' AND {condition} "
                        f"AND NOT list_contains(?, collection_id) ORDER BY {_INSTANCE_ORDER}",
                        [*params, sorted(view.hidden)])
    blob_dir = view.commons.archive.blob_dir
    return [StoredInstance(sop, series, number, md5, blob_dir / key, collection, license, crc)
            for sop, series, number, md5, key, collection, license, crc in rows]


def _explain_absence(view: _View, condition: str, params: list, described: str) -> NoReturn:
    """Raise the right error when no stored file matches: series rows imported from the IDC
    catalogue have no local files, but their gcs_url says where the files are."""
    row = view.execute(f"SELECT count(*), min(gcs_url) FROM {view.relation('items')} "
                       f"WHERE level = 'series' AND {condition} "
                       f"AND NOT list_contains(?, collection_id)", [*params, sorted(view.hidden)])
    count, location = row[0]
    if not count:
        raise NotVisible(f"No {described} in this archive")
    where = (f"its files are in the public bucket at {location}" if count == 1 else
             f"the files of its {count} series are in the public bucket, e.g. {location}")
    raise NotFound(f"The files of {described} are not stored on this server: it is "
                         f"catalogued from the NCI Imaging Data Commons and {where}")


def _license_text(view: _View, collection_id: str, item_license: str | None) -> str:
    """The LICENSE entry of a download: the collection's licence as the catalogue records it,
    under the collection's name as the API shows it."""
    rows = view.execute(f"SELECT collection_name, license_short_name, license_long_name, "
                        f"license_url FROM {view.relation('collections')} "
                        f"WHERE collection_id = ?", [collection_id])
    name, short, long_name, url = rows[0] if rows else (None, None, None, None)
    short = short or item_license
    lines = [f"Collection: {name or collection_id}"]
    if not (short or long_name or url):
        lines.append("No license is recorded for this collection: ask the archive's "
                     "administrators before sharing or reusing these files.")
    if long_name or short:
        lines.append("License: " + (f"{long_name} ({short})" if long_name and short
                                    else long_name or short))
    if url:
        lines.append(f"License URL: {url}")
    return "\n".join(lines) + "\n"
