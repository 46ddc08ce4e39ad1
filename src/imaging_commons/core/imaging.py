"""HTTP-free imaging helpers for the archive server: thumbnails, tag listings and checksums
(streaming ZIP downloads are in `zips`).

Everything here works on files on disk and keeps memory bounded, so the web
layer can call it for any instance or series without loading whole studies.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, pixel_array

from .errors import InvalidRequest

_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_BULK_LIMIT = 1024


class ImageUnavailable(InvalidRequest):
    """The file has no displayable image: not DICOM, no pixel data, or undecodable pixels.
    Raised with the cause as `__cause__`; `downloads.thumbnail` words it for the caller."""


def render_thumbnail(path: str | Path, max_size: int = 512) -> bytes:
    """Return a JPEG (quality 85) of the first frame, longest side <= ``max_size``.

    Monochrome images go through the modality LUT (rescale), then the first
    Window Center/Width of the file; without a window the frame is scaled
    from its own min/max. VOI LUT Sequences are not used. MONOCHROME1 is
    inverted so that it displays like MONOCHROME2. Colour images come out as
    RGB: pydicom already converts YBR_FULL/YBR_FULL_422 while decoding (and
    the JPEG 2000 decoder undoes YBR_RCT/ICT), PALETTE COLOR goes through its
    LUT; colour samples are scaled by the range of their storage type.
    Images smaller than ``max_size`` keep their size.

    Raises ``ImageUnavailable`` (message gives the cause) for anything that
    prevents a picture, including a missing or unreadable file.
    """
    try:
        ds, frame = _first_frame(path)
        pixels = _to_uint8(ds, frame)
    except Exception as exc:  # decoders raise many types; callers need one
        raise ImageUnavailable(f"cannot render {Path(path).name}: {exc}") from exc
    image = Image.fromarray(pixels)
    image.thumbnail((max_size, max_size), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=85)
    return out.getvalue()


def _first_frame(path: str | Path) -> tuple[Dataset, np.ndarray]:
    """Return the header and the decoded first frame (YBR already turned into RGB).

    Decoding straight from the file reads only the first frame, which keeps
    big multi-frame files (enhanced CT/MR, slide microscopy) cheap. That
    reader cannot inflate Deflated files nor tolerate some encoding slips
    (e.g. Pixel Data written implicit VR in an explicit VR file), so those
    are parsed fully and decoded from the dataset instead.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    if not ds.file_meta.TransferSyntaxUID.is_deflated:
        with contextlib.suppress(Exception):  # retried below from the full dataset
            return ds, pixel_array(path, index=0)
    ds = pydicom.dcmread(path)
    return ds, pixel_array(ds, index=0)


def _to_uint8(ds: Dataset, arr: np.ndarray) -> np.ndarray:
    """Map one decoded frame to 8-bit grey (2-D) or RGB (rows, cols, 3) for display."""
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    if arr.ndim == 3:
        return np.round(arr / np.iinfo(arr.dtype).max * 255).astype(np.uint8)
    arr = apply_modality_lut(arr, ds)
    if all(ds.get(k) not in (None, "") for k in ("WindowCenter", "WindowWidth")):
        # The window's output range depends on bit depth and rescale; probing
        # with -inf/+inf gives its ends without re-deriving pydicom's rules.
        low, high = apply_windowing(np.array([-np.inf, np.inf]), ds)
        arr = apply_windowing(arr, ds)
    else:
        low, high = float(arr.min()), float(arr.max())
    grey = (arr.astype(np.float64) - low) / ((high - low) or 1) * 255
    if ds.PhotometricInterpretation == "MONOCHROME1":
        grey = 255 - grey
    return np.round(np.clip(grey, 0, 255)).astype(np.uint8)


@dataclass(frozen=True, slots=True)
class DicomElement:
    """One element of a file's header: its tag as ``(0028,0010)``, its public name ("" for a
    private one), its value as text, its VR and its sequence depth (0 at the top level)."""

    element: str
    name: str
    data: str
    vr: str
    depth: int


def dicom_tags(path: str | Path) -> list[DicomElement]:
    """List every element: ``DicomElement("(0028,0010)", "Rows", "512", "US", 0)``.

    File meta (group 0002) first, then the dataset, in file order. A sequence element (data
    ``""``) is followed by its items' elements at ``depth`` one more. Values are text, multiple
    values joined by ``\\``; short binary values are hex bytes joined by ``\\``. Binary values
    (OB/OD/OF/OL/OV/OW/UN) over 1 KB are shown as ``"<binary data, N bytes>"``. Top-level
    Pixel Data is omitted entirely: the file is read with ``stop_before_pixels`` so listing
    tags never loads the image (elements stored after it, such as trailing padding, are
    omitted too). Files without a preamble/file meta (which ingest accepts when they carry
    their UIDs) are read with ``force``.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return list(_rows(ds.file_meta, 0)) + list(_rows(ds, 0))


def _rows(ds: Dataset, depth: int) -> Iterator[DicomElement]:
    """Depth-first rows of ``ds``; items of a sequence follow the sequence element."""
    for elem in ds:
        yield DicomElement(
            f"({elem.tag.group:04X},{elem.tag.element:04X})",
            # NBIA names public elements only (the guide's private GEMS elements have "")
            "" if elem.tag.is_private else elem.name,
            "" if elem.VR == "SQ" else _text(elem),
            elem.VR,
            depth,
        )
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _rows(item, depth + 1)


def _text(elem: DataElement) -> str:
    """Render an element value as NBIA-style text."""
    value = elem.value
    if isinstance(value, bytes):
        if elem.VR in _BULK_VRS and len(value) > _BULK_LIMIT:
            return f"<binary data, {len(value)} bytes>"
        return "\\".join(f"{b:02x}" for b in value)
    if value is None:
        return ""
    if elem.VM > 1:
        return "\\".join(str(v) for v in value)
    return str(value)
