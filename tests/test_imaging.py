"""Tests for imaging_commons.core.imaging on the DICOM files shipped inside pydicom.

Only files present in pydicom's package directory are used (never
pydicom.data.get_testdata_file for others: that would download).
"""

import io
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
from PIL import Image
from pydicom.pixels import pixel_array

from imaging_commons.core.imaging import (
    DicomElement,
    ImageUnavailable,
    dicom_tags,
    render_thumbnail,
)

DATA = Path(pydicom.data.__file__).parent / "test_files"


def thumb(path: Path, **kwargs) -> Image.Image:
    """Render a thumbnail and open it, checking it really is a JPEG."""
    image = Image.open(io.BytesIO(render_thumbnail(path, **kwargs)))
    assert image.format == "JPEG"
    return image


def pixels(path: Path, **kwargs) -> np.ndarray:
    return np.asarray(thumb(path, **kwargs), dtype=float)


def test_ct_thumbnail_keeps_native_size_and_spans_full_range_without_window():
    ds = pydicom.dcmread(DATA / "CT_small.dcm")
    assert (ds.Rows, ds.Columns) == (128, 128) and "WindowCenter" not in ds
    image = thumb(DATA / "CT_small.dcm")
    assert image.size == (128, 128) and image.mode == "L"
    grey = np.asarray(image)
    assert grey.min() < 10 and grey.max() > 245  # min/max scaling


@pytest.mark.parametrize(
    "name",
    ["MR_small.dcm", "693_J2KI.dcm", "examples_overlay.dcm"],  # plain, rescaled CT, two windows
)
def test_rescale_then_first_window_is_applied(name):
    ds = pydicom.dcmread(DATA / name)
    center, width = (float(v[0] if v.VM > 1 else v.value) for v in (ds["WindowCenter"], ds["WindowWidth"]))
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    values = pixel_array(ds).astype(float) * slope + intercept
    expected = np.clip((values - (center - 0.5)) / (width - 1) + 0.5, 0, 1) * 255
    assert np.abs(pixels(DATA / name) - expected).mean() < 4


@pytest.mark.parametrize(
    "name, size, mode",
    [
        ("JPEG2000.dcm", (128, 512), "L"),  # JPEG 2000, 1024 rows scaled to 512
        ("JPGExtended.dcm", (128, 512), "L"),  # 12-bit JPEG extended
        ("MR_small_jpeg_ls_lossless.dcm", (64, 64), "L"),  # JPEG-LS
        ("SC_rgb_jpeg_gdcm.dcm", (100, 100), "RGB"),  # JPEG lossless
        ("SC_rgb_dcmtk_+eb+cy+np.dcm", (100, 100), "RGB"),  # JPEG baseline YBR_FULL_422
        ("MR_small_RLE.dcm", (64, 64), "L"),  # RLE
        ("SC_rgb_rle.dcm", (100, 100), "RGB"),  # RLE colour
        ("image_dfl.dcm", (512, 512), "L"),  # Deflated transfer syntax
        ("examples_ybr_color.dcm", (320, 240), "RGB"),  # 30 frames, JPEG YBR
        ("rtdose.dcm", (10, 10), "L"),  # 15 frames, 32-bit
        ("examples_palette.dcm", (512, 224), "RGB"),  # PALETTE COLOR, 800 wide
    ],
)
def test_compressed_colour_and_multiframe_files_give_jpegs(name, size, mode):
    image = thumb(DATA / name)
    assert (image.size, image.mode) == (size, mode)
    assert np.asarray(image).std() > 5  # a picture, not a flat field


def test_lossless_encodings_render_identically():
    names = ["MR_small.dcm", "MR_small_RLE.dcm", "MR_small_jp2klossless.dcm",
             "MR_small_jpeg_ls_lossless.dcm", "MR_small_bigendian.dcm"]
    assert len({render_thumbnail(DATA / n) for n in names}) == 1


@pytest.mark.parametrize(
    "name",
    ["SC_rgb_dcmtk_+eb+cy+n1.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_gdcm_KY.dcm",
     "SC_rgb_rle_16bit.dcm", "SC_rgb_rle_32bit.dcm"],
)
def test_ybr_and_deep_rgb_match_the_8bit_rgb_picture(name):
    # Same picture as SC_rgb_rle.dcm, stored as YBR, YBR_RCT (J2K), 16 or 32 bits.
    assert np.abs(pixels(DATA / name) - pixels(DATA / "SC_rgb_rle.dcm")).mean() < 4


def test_palette_colour_is_rendered_in_colour():
    rgb = pixels(DATA / "examples_palette.dcm")
    assert np.abs(rgb[..., 0] - rgb[..., 2]).mean() > 2


def test_multiframe_renders_first_frame():
    frames = pixel_array(DATA / "SC_rgb_rle_2frame.dcm").astype(float)
    rendered = pixels(DATA / "SC_rgb_rle_2frame.dcm")
    assert np.abs(rendered - frames[0]).mean() < 5 < np.abs(rendered - frames[1]).mean()


def test_monochrome1_is_inverted(tmp_path):
    ds = pydicom.dcmread(DATA / "MR_small.dcm")
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "m1.dcm")
    assert np.abs(pixels(tmp_path / "m1.dcm") - (255 - pixels(DATA / "MR_small.dcm"))).mean() < 2


@pytest.mark.parametrize(
    "name, max_size, size",
    [
        ("examples_jpeg2k.dcm", 512, (512, 384)),  # 640 x 480
        ("CT_small.dcm", 64, (64, 64)),
        ("examples_overlay.dcm", 512, (484, 300)),  # already small: not enlarged
    ],
)
def test_downscales_to_max_size_only_when_larger(name, max_size, size):
    assert thumb(DATA / name, max_size=max_size).size == size


@pytest.mark.parametrize(
    "name", ["test-SR.dcm", "rtplan.dcm", "waveform_ecg.dcm", "MR_truncated.dcm", "missing.dcm"]
)
def test_no_or_broken_pixel_data_raises_image_unavailable(name):
    with pytest.raises(ImageUnavailable, match=name):
        render_thumbnail(DATA / name)


def test_non_dicom_file_raises_image_unavailable(tmp_path):
    (tmp_path / "x.dcm").write_bytes(b"not a dicom file" * 100)
    with pytest.raises(ImageUnavailable):
        render_thumbnail(tmp_path / "x.dcm")


def test_dicom_tags_lists_meta_then_dataset_in_file_order():
    rows = dicom_tags(DATA / "CT_small.dcm")
    assert rows[0] == DicomElement("(0002,0000)", "File Meta Information Group Length", "192",
                                   "UL", 0)
    assert DicomElement("(0028,0010)", "Rows", "128", "US", 0) in rows
    assert DicomElement("(0008,0008)", "Image Type", "ORIGINAL\\PRIMARY\\AXIAL", "CS", 0) in rows
    top_level = [r.element for r in rows if r.depth == 0]
    assert top_level == sorted(top_level)  # file order is ascending tag order per level
    assert "(7FE0,0010)" not in top_level


def test_dicom_tags_nests_sequence_items_one_level_deeper():
    rows = dicom_tags(DATA / "test-SR.dcm")
    ds = pydicom.dcmread(DATA / "test-SR.dcm")
    assert len(rows) == len(ds.file_meta) + sum(1 for _ in ds.iterall())
    i = next(n for n, r in enumerate(rows) if r.element == "(0040,A043)")
    assert rows[i].vr == "SQ" and rows[i].data == ""
    assert rows[i + 1] == DicomElement("(0008,0100)", "Code Value", "1111", "SH",
                                       rows[i].depth + 1)
    assert max(r.depth for r in rows) >= 2


def test_dicom_tags_summarises_bulk_binary_values():
    rows = dicom_tags(DATA / "waveform_ecg.dcm")
    waveform = next(r for r in rows if r.element == "(5400,1010)")
    assert waveform.data == "<binary data, 240000 bytes>" and waveform.depth == 1
    assert max(len(r.data) for r in rows) < 4 * 1024


def test_dicom_tags_reads_files_without_file_meta():
    """Ingest keeps headerless files that carry their UIDs; their tags must list too."""
    rows = dicom_tags(DATA / "ExplVR_LitEndNoMeta.dcm")
    names = {r.name: r.data for r in rows}
    assert names["SOP Instance UID"] and names["SOP Class UID"] == "1.2.840.10008.5.1.4.1.1.481.8"
