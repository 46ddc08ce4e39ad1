"""Ingest against hostile files, with real files: identifiers that are not what they claim to
be (path climbing, CR/LF, NUL, backslash, 5,000 characters) are refused with a reason, and
nothing of such a file is catalogued or stored."""

from __future__ import annotations

import hashlib
import shutil
import warnings
from pathlib import Path

import pydicom
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_ROOT_UID

from imaging_commons.config import Archive
from imaging_commons.core.commons import Commons
from imaging_commons.core.demo import pydicom_sample_dir
from imaging_commons.core.ingest import ingest, publish

SAMPLES = pydicom_sample_dir()
CT = SAMPLES / "CT_small.dcm"
MR = SAMPLES / "MR_small.dcm"
UID_RULE = "a UID is digits and dots, at most 64 characters"


# ----- helpers ------------------------------------------------------------------------------
def copy_of_ct(dest: Path, sop_uid: str, **raw: bytes) -> Path:
    """CT_small with a SOPInstanceUID of its own and the given elements holding exactly these
    bytes (pydicom would refuse or tidy some of them if given as values)."""
    ds = pydicom.dcmread(CT)
    with warnings.catch_warnings():  # pydicom warns of a leading zero
        warnings.simplefilter("ignore")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    for keyword, value in raw.items():
        tag = Tag(keyword)
        ds[tag] = RawDataElement(tag, dictionary_VR(tag), len(value), value, 0, False, True)
    ds.save_as(dest)
    assert all(value in dest.read_bytes() for value in raw.values())
    return dest


def files_with_md5(root: Path) -> dict[str, str]:
    """Every file under `root` (hidden ones included) by relative path, with its md5."""
    return {str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}



# ----- 1. identifiers -----------------------------------------------------------------------
LONG_UID = "12" + ".1" * 2499  # 5,000 characters of digits and dots
HOSTILE = {  # file name: (field, the bytes it holds, the value as the reason shows it)
    "series_climbs.dcm": ("SeriesInstanceUID", b"../../etc", "'../../etc'"),
    "sop_climbs.dcm": ("SOPInstanceUID", b"../../../tmp/pwned_sop", "'../../../tmp/pwned_sop'"),
    "study_crlf.dcm": ("StudyInstanceUID", b"1.2.3\r\ndownloadServerUrl=http://evil.example/x",
                       r"'1.2.3\r\ndownloadServerUrl=http://evil.example/x'"),
    "sop_long.dcm": ("SOPInstanceUID", LONG_UID.encode(), repr(LONG_UID[:80]) + "..."),
    "series_nul.dcm": ("SeriesInstanceUID", b"1.2.3\x00.45", r"'1.2.3\x00.45'"),
    "sop_two_values.dcm": ("SOPInstanceUID", b"1.2.3\\1.2.4", r"'1.2.3\\1.2.4'"),
    "class_space.dcm": ("SOPClassUID", b"1.2.840 10008", "'1.2.840 10008'"),
    "frame_empty_part.dcm": ("FrameOfReferenceUID", b"1..2", "'1..2'"),
    "patient_crlf.dcm": ("PatientID", b"PAT1\r\nX-Injected: yes", r"'PAT1\r\nX-Injected: yes'"),
    "patient_long.dcm": ("PatientID", b"P" * 66, repr("P" * 66)),
    "patient_backslash.dcm": ("PatientID", b"A\\B ", r"'A\\B'"),
    "modality_tab.dcm": ("Modality", b"C\tT ", r"'C\tT'"),
    "modality_long.dcm": ("Modality", b"M" * 18, repr("M" * 18)),
}


def test_files_with_hostile_identifiers_are_skipped_and_never_stored(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(CT, incoming / "ct.dcm")
    shutil.copy(MR, incoming / "mr.dcm")
    # tolerated: leading zeros in a component (real archives have them), DICOM's padding
    copy_of_ct(incoming / "leading_zeros.dcm", "1.2.03.0004")
    copy_of_ct(incoming / "padded.dcm", "1.2.3.4", SOPInstanceUID=b"1.2.3.4.5\x00",
               PatientID=b"PADDED  ")
    for i, (name, (field, value, _)) in enumerate(sorted(HOSTILE.items())):
        copy_of_ct(incoming / name, f"{PYDICOM_ROOT_UID}66.{i}", **{field: value})

    archive = Archive(tmp_path / "archive")
    commons = Commons(archive)
    report = ingest(commons.catalog, [incoming], "hostile")

    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert set(reasons) == set(HOSTILE)
    for name, (field, _, shown) in HOSTILE.items():
        rule = UID_RULE if field.endswith("UID") else (
            f"a {field} is at most {64 if field == 'PatientID' else 16} characters, "
            "with no control characters or backslash")
        assert reasons[name] == f"invalid {field} {shown}: {rule}"
        assert reasons[name].isprintable() and len(reasons[name]) < 200
    lines = report.lines()
    assert len(lines) == 1 + len(report.skipped)
    assert all(line.isprintable() for line in lines)  # one line each, whatever the values

    assert publish(commons.catalog) == 1
    con = commons.catalog.connection()
    view = commons.catalog.relation(1, "items")
    rows = con.execute(f"SELECT SOPInstanceUID, PatientID, blob_key FROM {view}").fetchall()
    ct_sop, mr_sop = (str(pydicom.dcmread(p).SOPInstanceUID) for p in (CT, MR))
    assert {(sop, patient) for sop, patient, _ in rows} == {
        (ct_sop, "1CT1"), (mr_sop, "4MR1"), ("1.2.03.0004", "1CT1"), ("1.2.3.4.5", "PADDED")}
    # no blob of a refused file: the blob store holds the four good files' and nothing else
    assert set(files_with_md5(archive.blob_dir)) == {key for _, _, key in rows}
    assert not (tmp_path / "etc").exists() and not (tmp_path / "tmp").exists()
