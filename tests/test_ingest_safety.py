"""Ingest against hostile files and hostile circumstances, with real files and real processes:
identifiers that are not what they claim to be (path climbing, CR/LF, NUL, backslash, 5,000
characters), special files among the DICOM files (a device, a FIFO, a socket, broken links, a
link loop, an unreadable file), a killed ingest (its workers die with it; the next writer
removes the blobs it left, never one a published version names), two writers at once, a
read-only and a full disk (mounted in a user and mount namespace), and re-ingest of files
already published."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from contextlib import suppress
from functools import partial
from pathlib import Path

import pydicom
import pytest
from click.testing import CliRunner
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_ROOT_UID

import imaging_commons
from imaging_commons.cli import main
from imaging_commons.config import Archive
from imaging_commons.core.catalog import WRITER_BUSY, Catalog, WriterBusy
from imaging_commons.core.demo import pydicom_sample_dir
from imaging_commons.core.errors import Conflict, InvalidRequest
from imaging_commons.core.front_door import Commons
from imaging_commons.core.idc_import import import_idc
from imaging_commons.core.ingest import MAX_FILE_SIZE_ENV, ingest, iter_files, publish
from imaging_commons.core.ingest.files import FirstBytes, open_regular

SAMPLES = pydicom_sample_dir()
CT = SAMPLES / "CT_small.dcm"
MR = SAMPLES / "MR_small.dcm"
SRC_DIR = Path(imaging_commons.__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(
    filter(None, [str(SRC_DIR), os.environ.get("PYTHONPATH")]))}
UID_RULE = "a UID is digits and dots, at most 64 characters"


# ----- helpers ------------------------------------------------------------------------------
def cli(archive: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "imaging_commons.cli", "--archive", str(archive), *args]


def run_cli(archive: Path, *args: str, prefix: tuple[str, ...] = (),
            timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, *cli(archive, *args)], env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
    """Exit 1, one `error:` line naming the problem, no traceback."""
    assert result.returncode == 1, (result.returncode, result.stderr)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(e in errors[0] for e in expected), errors[0]
    assert "Traceback" not in result.stderr


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


def published_blobs(archive: Path) -> dict[str, str]:
    """blob_key -> md5 of every row of every published version."""
    commons = Commons(Archive(archive))
    con = commons.catalog.connection()
    keys = {}
    for v in commons.catalog.versions():
        view = commons.catalog.relation(v.version, "items")
        keys.update(con.execute(f"SELECT blob_key, instance_md5 FROM {view} "
                                "WHERE blob_key IS NOT NULL").fetchall())
    return keys


def process_state(pid: int) -> str | None:
    """The state letter of a process (R, S, Z...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def alive(pid: int) -> bool:
    return process_state(pid) not in (None, "Z", "X")


def children_of(pid: int) -> set[int]:
    found = set()
    for stat_file in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            if int(stat_file.read_text().rpartition(")")[2].split()[1]) == pid:
                found.add(int(stat_file.parent.name))
    return found


def kill_once(proc: subprocess.Popen, ready, deadline_s: float = 90) -> set[int]:
    """SIGKILL `proc` (an ingest) once its worker pool runs and `ready()` holds; return the
    workers' pids. Fails if the ingest ended first."""
    workers: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while True:
        assert proc.poll() is None, "the ingest ended before the kill: nothing was tested"
        assert time.monotonic() < deadline, "the ingest never started its workers"
        workers |= children_of(proc.pid)
        if len(workers) >= (os.cpu_count() or 1) + 1 and ready():
            proc.kill()
            proc.wait()
            return workers
        time.sleep(0.005)


def wait_until_gone(pids: set[int], seconds: float) -> set[int]:
    """The pids still alive after up to `seconds`."""
    deadline = time.monotonic() + seconds
    while any(map(alive, pids)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return {pid for pid in pids if alive(pid)}


def kill_leftovers(pids: set[int]) -> None:
    """End workers a failed test left running (they are this test's own)."""
    for pid in pids:
        if alive(pid):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def many_copies(tmp_path_factory) -> Path:
    """600 copies of CT_small, each with a SOPInstanceUID of its own: enough files for ingest
    to run its worker pool, all in CT_small's series."""
    folder = tmp_path_factory.mktemp("many")
    ds = pydicom.dcmread(CT)
    for i in range(600):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"{PYDICOM_ROOT_UID}77.{i}"
        ds.save_as(folder / f"ct-{i:04d}.dcm")
    return folder


@pytest.fixture
def namespaces():
    """User and mount namespaces, to mount a read-only or a small filesystem as a non-root."""
    try:
        ok = subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode == 0
    except FileNotFoundError:
        ok = False
    if not ok:
        pytest.skip("`unshare -rm true` fails here: no user and mount namespaces to mount a "
                    "read-only or a full filesystem in")


def published_archive(root: Path, *files: Path) -> Path:
    """An archive holding `files` as version 1."""
    commons = Commons(Archive(root))
    ingest(commons.catalog, list(files), "first")
    assert publish(commons.catalog) == 1
    return root


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
    (incoming / "notes\r\nskipped fake.dcm").write_text("a file name with a line break\n")

    archive = Archive(tmp_path / "archive")
    commons = Commons(archive)
    report = ingest(commons.catalog, [incoming], "hostile")

    reasons = {Path(path).name: reason for path, reason in report.skipped}
    assert set(reasons) == {*HOSTILE, "notes\r\nskipped fake.dcm"}
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


# ----- 2. only regular files ----------------------------------------------------------------
def test_only_regular_files_are_read_and_the_rest_is_reported(tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(CT, incoming / "ct.dcm")
    os.symlink(MR, incoming / "link_to_mr.dcm")  # a link to a regular file is followed
    os.symlink("/dev/zero", incoming / "zero.dcm")
    os.mkfifo(incoming / "fifo.dcm")
    os.symlink(incoming / "nowhere.dcm", incoming / "dangling.dcm")
    os.symlink("loop_b.dcm", incoming / "loop_a.dcm")
    os.symlink("loop_a.dcm", incoming / "loop_b.dcm")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(incoming / "socket.dcm"))
    expected = {
        "zero.dcm": "not a regular file (character device)",
        "fifo.dcm": "not a regular file (FIFO)",
        "socket.dcm": "not a regular file (socket)",
        "dangling.dcm": "broken symbolic link",
        "loop_a.dcm": "symbolic link loop",
        "loop_b.dcm": "symbolic link loop",
    }
    # An unreadable file: root reads anything, so as root the command runs in a user
    # namespace of its own, where it is the files' owner without root's powers over them.
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        with suppress(FileNotFoundError):
            if subprocess.run(["unshare", "--user", "true"]).returncode == 0:
                prefix = ("unshare", "--user")
    if os.geteuid() != 0 or prefix:
        copy_of_ct(incoming / "unreadable.dcm", f"{PYDICOM_ROOT_UID}55.1").chmod(0)
        expected["unreadable.dcm"] = "cannot open: permission denied"

    archive = tmp_path / "archive"
    try:
        result = run_cli(archive, "ingest", str(incoming), "--collection", "special",
                         "--no-progress", prefix=prefix, timeout=60)  # a FIFO read would hang
    finally:
        listener.close()
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"2 instance(s) staged, 0 already present, {len(expected)} file(s) skipped"
    assert sorted(lines[1:]) == sorted(f"  skipped {incoming / name}: {reason}"
                                       for name, reason in expected.items())
    assert len(files_with_md5(archive / "blobs")) == 2


def test_a_path_argument_that_is_a_broken_link_is_an_error_or_a_skip(tmp_path):
    dangling = tmp_path / "dangling.dcm"
    os.symlink(tmp_path / "nowhere", dangling)
    fifo = tmp_path / "fifo.dcm"
    os.mkfifo(fifo)
    archive = tmp_path / "archive"
    result = run_cli(archive, "ingest", str(dangling), "--collection", "x", "--no-progress")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: Invalid value for 'PATHS...': Path '{dangling}' does not exist. (see --help)"]
    # given to the core directly, both are skips, not failures
    report = ingest(Catalog(Archive(archive)), [dangling, fifo, CT], "x")
    assert report.ingested == 1
    assert report.skipped == [(str(dangling), "broken symbolic link"),
                              (str(fifo), "not a regular file (FIFO)")]


def test_files_over_the_size_limit_are_skipped(tmp_path, monkeypatch):
    size = CT.stat().st_size
    monkeypatch.setenv(MAX_FILE_SIZE_ENV, str(size - 1))
    catalog = Catalog(Archive.from_env(tmp_path / "archive"))
    report = ingest(catalog, [CT, MR], "sized")
    assert report.ingested == 1
    assert report.skipped == [(str(CT), f"too large: {size:,} bytes, over {MAX_FILE_SIZE_ENV} "
                                        f"({size - 1:,})")]
    monkeypatch.setenv(MAX_FILE_SIZE_ENV, "lots")
    with pytest.raises(ValueError, match=MAX_FILE_SIZE_ENV):
        Archive.from_env(tmp_path / "archive")
    monkeypatch.setenv(MAX_FILE_SIZE_ENV, "-1")
    with pytest.raises(InvalidRequest, match=MAX_FILE_SIZE_ENV):
        ingest(Catalog(Archive.from_env(tmp_path / "archive")), [MR], "sized")


def test_a_file_growing_while_read_is_read_to_its_size_when_opened(tmp_path):
    path = tmp_path / "growing.dcm"
    shutil.copy(CT, path)
    opened = open_regular(path, Archive(tmp_path).max_file_size)
    assert opened[1] == CT.stat().st_size
    with path.open("ab") as more:
        more.write(b"\0" * 3_000_000)
    with FirstBytes(*opened) as source:
        assert source.readall() == CT.read_bytes()
        source.seek(0)
        assert b"".join(iter(partial(source.read, 4096), b"")) == CT.read_bytes()


# ----- 3. workers die with their ingest -----------------------------------------------------
def test_the_workers_of_a_killed_ingest_die_with_it(tmp_path, many_copies):
    proc = subprocess.Popen(cli(tmp_path / "archive", "ingest", str(many_copies), "--collection",
                                "killed", "--publish", "--no-progress"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        workers = kill_once(proc, lambda: True)
        assert not wait_until_gone(workers, 5), "workers outlived their killed ingest"
    finally:
        proc.kill()
        kill_leftovers(workers)


# ----- 4. orphan blobs and the writer lock --------------------------------------------------
@pytest.mark.slow
def test_blobs_of_a_killed_ingest_are_removed_by_the_next_one_but_not_published_ones(
        tmp_path, many_copies):
    archive = published_archive(tmp_path / "archive", CT, MR)
    published = published_blobs(archive)
    ct_key = next(key for key in published if (archive / "blobs" / key).read_bytes() ==
                  CT.read_bytes())
    # a published blob gone missing: the killed run makes it again (and journals it), so only
    # the published version's claim on it keeps it; MR's blob it finds in place and reuses
    (archive / "blobs" / ct_key).unlink()
    series = (archive / "blobs" / ct_key).parent
    proc = subprocess.Popen(cli(archive, "ingest", str(CT), str(MR), str(many_copies),
                                "--collection", "killed", "--publish", "--no-progress"),
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: set[int] = set()
    try:
        workers = kill_once(proc, lambda: (archive / "blobs" / ct_key).exists()
                            and len(list(series.glob("*.dcm"))) >= 60)
        assert not wait_until_gone(workers, 10)
    finally:
        proc.kill()
        kill_leftovers(workers)
    journals = list((archive / "catalog" / "ingest-journals").glob("*.journal"))
    assert journals, "the kill came after the run had staged its rows: nothing was tested"
    orphans = set(files_with_md5(archive / "blobs")) - set(published)
    assert len(orphans) >= 50

    result = run_cli(archive, "ingest", str(MR), "--collection", "first", "--publish",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "nothing new to publish: version 1 stays active"
    # every published blob, the re-made one included, as the catalogue has it; nothing else
    # (no orphan blob, no .part copy, no journal)
    assert files_with_md5(archive / "blobs") == published
    assert not list((archive / "catalog" / "ingest-journals").iterdir())
    assert [v.version for v in Catalog(Archive(archive)).versions()] == [1]


@pytest.mark.slow
def test_a_second_writer_is_refused_while_one_holds_the_archive(tmp_path):
    archive = tmp_path / "archive"
    catalog = Catalog(Archive(archive))
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,score\n1CT1,3\n")
    with catalog.writer_lock():
        for args in (("ingest", str(CT), "--collection", "x", "--publish", "--no-progress"),
                     ("publish",),
                     ("clinical-import", str(clinical), "--collection", "x", "--source", "s"),
                     ("import-idc",)):
            assert_one_line_error(run_cli(archive, *args), WRITER_BUSY)
        assert not list(catalog.segments_dir.glob("idc-*"))
        # another thread of this process is refused too; the holding thread may write
        refused: list[BaseException] = []
        other = threading.Thread(target=lambda: refused.extend(
            [_raised(ingest, catalog, [CT], "x"), _raised(import_idc, catalog)]))
        other.start()
        other.join()
        assert all(isinstance(e, WriterBusy) and isinstance(e, Conflict) for e in refused)
        assert [str(e) for e in refused] == [WRITER_BUSY] * 2
        assert ingest(catalog, [CT], "x").ingested == 1
    result = run_cli(archive, "ingest", str(MR), "--collection", "x", "--publish",
                     "--no-progress")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "published version 1"


def _raised(function, *args) -> BaseException | None:
    try:
        function(*args)
    except BaseException as e:
        return e
    return None


# ----- 5. storage faults --------------------------------------------------------------------
@pytest.mark.slow
def test_a_read_only_archive_is_a_one_line_error(tmp_path, namespaces):
    archive = published_archive(tmp_path / "archive", CT)
    before = files_with_md5(archive)
    clinical = tmp_path / "clinical.csv"
    clinical.write_text("PatientID,score\n1CT1,3\n")
    read_only = ("unshare", "-rm", "sh", "-c", 'mount --bind -o ro "$0" "$0" && exec "$@"',
                 str(archive))
    for args in (("ingest", str(MR), "--collection", "x", "--publish", "--no-progress"),
                 ("publish",),
                 ("clinical-import", str(clinical), "--collection", "x", "--source", "s")):
        assert_one_line_error(run_cli(archive, *args, prefix=read_only),
                              "error: the archive's storage is read-only: mount it read-write")
    assert files_with_md5(archive) == before


LISTING = ("import hashlib, json, pathlib, sys; root = pathlib.Path(sys.argv[1]); "
           "print(json.dumps({str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()"
           " for p in sorted(root.rglob('*')) if p.is_file()}))")


def test_a_full_disk_ends_ingest_with_one_line_and_leaves_nothing_behind(tmp_path, namespaces):
    """The archive on a 2 MB filesystem, and more files than it has room for: the ingest ends
    with one line, exit 1, and takes back every blob and .part copy it wrote."""
    source = published_archive(tmp_path / "archive", CT)
    assert sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) < 1 << 20
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    for i in range(60):  # 60 x 39 KB
        copy_of_ct(incoming / f"ct-{i:02d}.dcm", f"{PYDICOM_ROOT_UID}44.{i}")
    disk, out = tmp_path / "disk", tmp_path / "out"
    disk.mkdir()
    out.mkdir()
    archive = disk / "archive"
    script = f"""
        mount -t tmpfs -o size=2m tmpfs "{disk}" && cp -a "{source}" "{archive}" || exit 99
        "$@" > "{out}/stdout" 2> "{out}/stderr"
        echo $? > "{out}/rc"
        "{sys.executable}" -c "$LISTING" "{archive}" > "{out}/after.json"
    """
    subprocess.run(["unshare", "-rm", "sh", "-c", script, "sh",
                    *cli(archive, "ingest", str(incoming), "--collection", "more", "--publish",
                         "--no-progress")],
                   env={**ENV, "LISTING": LISTING}, check=True, timeout=120)
    result = subprocess.CompletedProcess([], int((out / "rc").read_text()),
                                         (out / "stdout").read_text(),
                                         (out / "stderr").read_text())
    assert_one_line_error(result, "error: the archive's disk is full: free some space")
    assert result.stdout == ""
    # the archive as it was: same published versions, no new blob, no .part copy, no journal
    assert json.loads((out / "after.json").read_text()) == files_with_md5(source)


# ----- 6. re-ingest -------------------------------------------------------------------------
def sop_uid_of(path: Path) -> str | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return str(pydicom.dcmread(path, stop_before_pixels=True, force=True)
                       .get("SOPInstanceUID")) or None
    except Exception:
        return None


def run_in_process(archive: Path, *args: str) -> str:
    result = CliRunner().invoke(main, ["--archive", str(archive), *args])
    assert result.exit_code == 0, result.output
    return result.stdout.splitlines()[-1]


def test_reingesting_published_files_publishes_nothing_new(tmp_path):
    archive = tmp_path / "archive"
    ingest_samples = ("ingest", str(SAMPLES), "--collection", "samples", "--publish",
                      "--no-progress")
    assert run_in_process(archive, *ingest_samples) == "published version 1"
    assert run_in_process(archive, *ingest_samples) == \
        "nothing new to publish: version 1 stays active"
    # in three batches; the files of one SOPInstanceUID (the last one wins) share a batch,
    # in their order, so that each batch ends with the row the first ingest kept
    files = list(iter_files([SAMPLES]))
    groups: dict[object, list[int]] = {}
    for index, path in enumerate(files):
        groups.setdefault(sop_uid_of(path) or path, []).append(index)
    batches = [sorted(i for group in list(groups.values())[n::3] for i in group)
               for n in range(3)]
    for batch in batches:
        assert run_in_process(archive, "ingest", *(str(files[i]) for i in batch),
                              "--collection", "samples", "--publish", "--no-progress") == \
            "nothing new to publish: version 1 stays active"
    assert Catalog(Archive(archive)).stage() == {}
    # what does change still publishes: the collection's description, then its restriction
    described = ("ingest", str(CT), "--collection", "samples", "--description", "Samples",
                 "--publish", "--no-progress")
    assert run_in_process(archive, *described) == "published version 2"
    assert run_in_process(archive, *described) == \
        "nothing new to publish: version 2 stays active"
    assert run_in_process(archive, "ingest", str(CT), "--collection", "samples", "--restricted",
                          "--publish", "--no-progress") == "published version 3"
    assert [v.version for v in Catalog(Archive(archive)).versions()] == [1, 2, 3]
