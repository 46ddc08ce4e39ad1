"""The `imaging-commons` command line, driven through click's runner: help everywhere, the
ingest report, versions, users, clinical tables, and one-line errors with trustworthy exit
codes."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from imaging_commons.cli import main
from imaging_commons.config import Archive
from imaging_commons.core.demo import pydicom_sample_dir
from imaging_commons.core.front_door import Commons

SAMPLES = pydicom_sample_dir()
PROG = "imaging-commons"


def run(*args: str) -> Result:
    # wide help text, so click's rewrapping never splits a phrase a test looks for
    return CliRunner().invoke(main, list(args), prog_name=PROG, terminal_width=200,
                              max_content_width=200)


def words(text: str) -> str:
    return " ".join(text.split())


def commands(group: click.Group, path: tuple[str, ...] = ()):
    """(path, command) for every command and subcommand under `group`."""
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


@pytest.fixture
def archive(tmp_path) -> str:
    return str(tmp_path / "archive")


@pytest.fixture
def dicom_folder(tmp_path) -> Path:
    """Two real DICOM files, a copy of one cut short, and a text file."""
    folder = tmp_path / "incoming"
    folder.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copy(SAMPLES / name, folder / name)
    ct = (SAMPLES / "CT_small.dcm").read_bytes()
    (folder / "cut.dcm").write_bytes(ct[: len(ct) // 2])
    (folder / "readme.txt").write_text("scanner export notes\n")
    return folder


def assert_one_line_error(result: Result, *expected: str) -> None:
    """A failure a script can trust: non-zero exit, one `error:` line naming the problem, and
    no traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.lower().startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert all(e.lower() in errors[0].lower() for e in expected), errors[0]
    assert "Traceback" not in result.output


# ----- help ---------------------------------------------------------------------------------
def test_top_level_help_lists_every_command():
    result = run("--help")
    assert result.exit_code == 0
    assert f"Usage: {PROG} [OPTIONS] COMMAND" in result.stdout
    assert "IDC API v1" in result.stdout and "NBIA" in result.stdout
    for name in main.commands:
        assert f"  {name} " in result.stdout


@pytest.mark.parametrize("path,command", list(commands(main)),
                         ids=[" ".join(p) for p, _ in commands(main)])
def test_every_command_has_help(path, command):
    result = run(*path, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: {PROG} {' '.join(path)} ")
    assert words(command.help.split("\n\n")[0]) in words(result.stdout)
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[-1] in result.stdout


@pytest.mark.parametrize("args,facts", [
    (("ingest",), ("--collection", "--restricted", "--publish", "staged next version")),
    (("publish",), ("immutable",)),
    (("clinical-import",), ("--source", "--collection", "filters")),
    (("import-idc",), ("IDC v25",)),
    (("users", "add"), ("--password", "--admin")),
])
def test_help_says_what_the_command_does(args, facts):
    result = run(*args, "--help")
    assert result.exit_code == 0
    for fact in facts:
        assert fact in result.stdout


# ----- ingest, publish, versions ------------------------------------------------------------
def test_ingest_reports_skipped_files_and_exits_zero(archive, dicom_folder):
    result = run("--archive", archive, "ingest", str(dicom_folder), "--collection", "Incoming")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "2 instance(s) staged, 0 already present, 2 file(s) skipped"
    assert any(line.startswith(f"  skipped {dicom_folder / 'cut.dcm'}: truncated")
               for line in lines)
    assert any(line.startswith(f"  skipped {dicom_folder / 'readme.txt'}: ") for line in lines)
    assert "file/s" in result.stderr  # the progress bar's rate
    assert run("--archive", archive, "versions").stdout == ""  # staged, not published


def test_publish_then_versions_lists_the_active_version(archive, dicom_folder):
    assert run("--archive", archive, "ingest", str(dicom_folder), "--collection", "a",
               "--no-progress").exit_code == 0
    assert run("--archive", archive, "publish").stdout == "published version 1\n"
    again = run("--archive", archive, "ingest", str(dicom_folder / "CT_small.dcm"),
                "--collection", "b", "--publish", "--no-progress")
    assert again.stdout.splitlines()[-1] == "published version 2"
    today = dt.date.today().isoformat()
    assert run("--archive", archive, "versions").stdout.splitlines() == \
        [f"1.0\t{today}\t", f"2.0\t{today}\tactive"]


def test_clinical_import_stages_the_csv_columns(archive, dicom_folder, tmp_path):
    run("--archive", archive, "ingest", str(dicom_folder), "--collection", "a", "--publish",
        "--no-progress")
    csv = tmp_path / "clinical.csv"
    csv.write_text("PatientID,age_at_diagnosis,smoker\n1CT1,64,yes\n4MR1,45,no\n")
    result = run("--archive", archive, "clinical-import", str(csv), "--collection", "a",
                 "--source", "registry")
    assert result.exit_code == 0, result.output
    assert result.stdout == ("staged clinical source registry for a: age_at_diagnosis, smoker "
                             "(publish to make it visible)\n")
    assert run("--archive", archive, "publish").stdout == "published version 2\n"


# ----- users --------------------------------------------------------------------------------
def test_users_add_grant_and_list(archive):
    assert run("--archive", archive, "users", "add", "alice", "--password", "pw-secret-1",
               "--admin").stdout == "user alice created\n"
    assert run("--archive", archive, "users", "add", "bob", "--password", "pw-secret-2",
               "--email", "bob@example.org").exit_code == 0
    assert run("--archive", archive, "users", "grant", "bob", "Private-Trial").exit_code == 0
    listed = run("--archive", archive, "users", "list").stdout.splitlines()
    assert "alice\tadmin\t" in listed
    assert "bob\t\tprivate_trial" in listed


def test_users_password_and_delete(archive):
    assert run("--archive", archive, "users", "add", "carol", "--password", "pw-secret-1"
               ).exit_code == 0
    changed = run("--archive", archive, "users", "password", "carol", "--password", "pw-new-2")
    assert changed.stdout == "password of carol changed; their tokens are revoked\n"
    accounts = Commons(Archive(Path(archive))).accounts
    assert accounts.authenticate("carol", "pw-secret-1") is None
    assert accounts.authenticate("carol", "pw-new-2") is not None
    assert run("--archive", archive, "users", "delete", "carol").stdout == "user carol deleted\n"
    assert accounts.get_user("carol") is None
    assert_one_line_error(run("--archive", archive, "users", "delete", "carol"), "No user carol")
    assert_one_line_error(run("--archive", archive, "users", "password", "nobody",
                              "--password", "x"), "nobody")


# ----- errors -------------------------------------------------------------------------------
def test_nonexistent_path_is_a_one_line_error(archive, tmp_path):
    missing = tmp_path / "no-such-folder"
    result = run("--archive", archive, "ingest", str(missing), "--collection", "a")
    assert_one_line_error(result, str(missing), "does not exist")


def test_missing_collection_is_a_one_line_error(archive, dicom_folder):
    assert_one_line_error(run("--archive", archive, "ingest", str(dicom_folder)), "--collection")


def test_publish_with_nothing_staged_is_a_one_line_error(archive):
    assert_one_line_error(run("--archive", archive, "publish"), "nothing is staged")


def test_clinical_table_without_patient_column_is_a_one_line_error(archive, tmp_path):
    csv = tmp_path / "no_key.csv"
    csv.write_text("age,smoker\n64,yes\n")
    result = run("--archive", archive, "clinical-import", str(csv), "--collection", "a",
                 "--source", "registry")
    assert_one_line_error(result, "no patient column", "--patient-column")


def test_duplicate_user_is_a_one_line_error(archive):
    run("--archive", archive, "users", "add", "alice", "--password", "pw-secret-1")
    result = run("--archive", archive, "users", "add", "alice", "--password", "pw-secret-1")
    assert_one_line_error(result, "alice")


def test_settings_come_from_the_environment(monkeypatch, tmp_path):
    from imaging_commons.config import Archive

    monkeypatch.setenv("IMAGING_COMMONS_TOKEN_LIFETIME", "60")
    monkeypatch.setenv("IMAGING_COMMONS_QUERY_DEADLINE", "0.5")
    monkeypatch.setenv("IMAGING_COMMONS_MAX_PAGE_SIZE", "100")
    archive = Archive.from_env(tmp_path)
    assert (archive.token_lifetime_s, archive.query_deadline_s, archive.max_page_size) == \
        (60, 0.5, 100)
    monkeypatch.setenv("IMAGING_COMMONS_MAX_PAGE_SIZE", "lots")
    result = CliRunner().invoke(main, ["--archive", str(tmp_path), "versions"])
    assert result.exit_code == 2 and "IMAGING_COMMONS_MAX_PAGE_SIZE" in result.output


def test_demo_on_a_built_archive_only_says_so(demo_archive_dir):
    result = CliRunner().invoke(main, ["--archive", str(demo_archive_dir), "demo"])
    assert result.exit_code == 0 and "already built" in result.output
    assert "active version 26" in result.output


@pytest.mark.slow
def test_serve_answers_both_apis_on_loopback(demo_archive_dir):
    """`imaging-commons serve` as `make serve` ends up running it: a real process."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    import requests

    from conftest import free_port

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "imaging_commons.cli", "--archive", str(demo_archive_dir),
         "serve", "--port", str(port)], env={**os.environ}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                about = requests.get(f"{base}/v1/about", timeout=5)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        assert about.json()["code"] == 200
        assert requests.get(f"{base}/v1/swagger").status_code == 200
        collections = requests.get(f"{base}/nbia-api/services/v1/getCollectionValues").json()
        assert {"Collection": "pydicom_samples"} in collections
        scratch = demo_archive_dir / "tmp" / f"{socket.gethostname()}-{server.pid}"
        assert scratch.is_dir()
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    # a clean shutdown on SIGTERM, exit handlers run (the scratch folder is gone), and the
    # status still tells SIGTERM
    assert code == 128 + signal.SIGTERM and b"Application shutdown complete" in server.stderr.read()
    assert not scratch.exists()
