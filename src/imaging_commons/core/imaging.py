"""HTTP-free imaging helpers for the archive server: thumbnails, tag listings,
streaming ZIP downloads and checksums.

Everything here works on files on disk and keeps memory bounded, so the web
layer can call it for any instance or series without loading whole studies.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import time
import zipfile
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_windowing, pixel_array

_BULK_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}
_BULK_LIMIT = 1024


class ImageUnavailable(Exception):
    """The file has no displayable image: not DICOM, no pixel data, or undecodable pixels."""


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


def dicom_tags(path: str | Path) -> list[dict[str, str]]:
    """List every element as ``{"element": "(0028,0010)", "name": "Rows", "data": "512"}``.

    File meta (group 0002) first, then the dataset, in file order. Sequence
    elements have data ``""`` and are followed by their items' elements, whose
    names get one ``>`` per nesting level. Values are text, multiple values
    joined by ``\\``; short binary values are hex bytes joined by ``\\``.
    Binary values (OB/OD/OF/OL/OV/OW/UN) over 1 KB are shown as
    ``"<binary data, N bytes>"``. Top-level Pixel Data is omitted entirely:
    the file is read with ``stop_before_pixels`` so listing tags never loads
    the image (elements stored after it, such as trailing padding, are
    omitted too). Files without a preamble/file meta (which ingest accepts when
    they carry their UIDs) are read with ``force``.
    """
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    return list(_rows(ds.file_meta, 0)) + list(_rows(ds, 0))


def _rows(ds: Dataset, depth: int) -> Iterator[dict[str, str]]:
    """Depth-first rows of ``ds``; items of a sequence follow the sequence element."""
    for elem in ds:
        yield {
            "element": f"({elem.tag.group:04X},{elem.tag.element:04X})",
            "name": ">" * depth + elem.name,
            "data": "" if elem.VR == "SQ" else _text(elem),
        }
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


class _Sink:
    """Write-only, non-seekable buffer that ``zipfile`` writes into and ``iter_zip`` drains.

    Having no ``tell``/``seek`` makes zipfile stream: it writes each member's
    sizes and CRC in a data descriptor after the data instead of seeking back.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self.held = 0

    def write(self, data: bytes) -> int:
        self._parts.append(bytes(data))
        self.held += len(data)
        return len(data)

    def flush(self) -> None:
        """zipfile flushes on close; nothing to do for an in-memory buffer."""

    def drain(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        self.held = 0
        return data


def iter_zip(entries: Iterable[tuple[str, Path | bytes]], chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Yield a ZIP archive of ``entries`` (name, file path or bytes) chunk by chunk.

    Members are ZIP_STORED (DICOM is already compressed or large, and NBIA
    sends stored) in the given order, with data descriptors because the output
    is never seeked. Files are read ``chunk_size`` bytes at a time, so memory
    stays around one chunk whatever the archive size; members over 2 GB use
    ZIP64. Path members keep their modification time, bytes members get the
    current time. Output is yielded in blocks of about ``chunk_size`` (never one
    tiny piece per member), since each block a server sends costs a socket write.
    """
    sink = _Sink()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as archive:
        for name, source in entries:
            if isinstance(source, bytes):
                info, size = zipfile.ZipInfo(name, time.localtime()[:6]), len(source)
            else:
                info = zipfile.ZipInfo.from_file(source, name, strict_timestamps=False)
                size = info.file_size
            with archive.open(info, "w", force_zip64=size > zipfile.ZIP64_LIMIT) as member:
                if isinstance(source, bytes):
                    member.write(source)
                else:
                    with open(source, "rb") as f:
                        for chunk in iter(partial(f.read, chunk_size), b""):
                            member.write(chunk)
                            if sink.held >= chunk_size:
                                yield sink.drain()
            if sink.held >= chunk_size:
                yield sink.drain()
    yield sink.drain()


def file_md5(path: str | Path) -> str:
    """Hex MD5 of a file, read 1 MB at a time (NBIA's checksum; not used for security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(partial(f.read, 1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
