"""Shared fixtures: a real demo archive (IDC catalogue + pydicom's sample files), built once
per test run (pytest-xdist's workers each take a copy), and real uvicorn servers on 127.0.0.1
serving archives."""

from __future__ import annotations

import fcntl
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import uvicorn

from imaging_commons.config import Archive
from imaging_commons.core.demo import DEMO_COLLECTION, build_demo, pydicom_sample_dir
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish

SAMPLES = pydicom_sample_dir()
PG_HOST, PG_PORT = "127.0.0.1", 5432


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """A uvicorn server in a background thread, on a free loopback port."""

    def __init__(self, archive: Archive):
        from imaging_commons.api.app import create_app

        self.app = create_app(archive)
        self.commons: Commons = self.app.state.commons
        # bound here and handed over, so no other process can take the port in between
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run,
                                        kwargs={"sockets": [self._socket]}, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        deadline = time.time() + 30
        while not self._server.started:
            if time.time() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def user_token(self, username: str, password: str = "pw-secret-1", **kw) -> str:
        """Create (if needed) a user and return a bearer token for them, through the core."""
        accounts = self.commons.accounts
        user = accounts.get_user(username) or accounts.add_user(username, password, **kw)
        return accounts.issue_tokens(user).access_token


def postgres_schema_url():
    """Yields a URL whose search_path is a fresh schema, so parallel runs never share tables."""
    psycopg = pytest.importorskip("psycopg")
    for user in ("postgres", "root"):
        try:
            conn = psycopg.connect(host=PG_HOST, port=PG_PORT, user=user, dbname="test",
                                   connect_timeout=3, autocommit=True)
            break
        except psycopg.OperationalError:
            continue
    else:
        pytest.skip(f"no PostgreSQL on {PG_HOST}:{PG_PORT}")
    schema = f"accounts_test_{uuid.uuid4().hex}"
    with conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield (f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/test"
                   f"?options=-csearch_path%3D{schema}")
        finally:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def copy_archive(source: Path, dest: Path) -> Path:
    """A copy of an archive without the work files of the processes using it (its accounts,
    its scratch folder, an index being built)."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(
        "accounts.sqlite*", "tmp", ".nbia-v*.tmp-*"))
    return dest


@pytest.fixture(scope="session")
def demo_archive_dir(tmp_path_factory, worker_id) -> Path:
    """IDC v1..v25 from idc-index-data, then pydicom's samples published as version 26 (what
    `make serve` builds). Under pytest-xdist the first worker to ask builds it in the run's
    shared folder, and every worker serves a copy of its own (tests add users and cohorts)."""
    root = tmp_path_factory.mktemp("demo-archive")
    if worker_id == "master":
        build_demo(Commons(Archive(root)), echo=lambda *_: None)
        return root
    shared = tmp_path_factory.getbasetemp().parent  # this run's folder, above each worker's
    with open(shared / "demo-archive.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (shared / "demo-archive.built").exists():
            build_demo(Commons(Archive(shared / "demo-archive")), echo=lambda *_: None)
            (shared / "demo-archive.built").touch()
    shutil.rmtree(root)
    return copy_archive(shared / "demo-archive", root)


@pytest.fixture(scope="session")
def server(demo_archive_dir) -> LiveServer:
    """A live server over the shared demo archive. Tests must not publish into it."""
    with LiveServer(Archive(demo_archive_dir)) as live:
        yield live


@pytest.fixture
def small_archive(tmp_path) -> Archive:
    """A private archive holding only pydicom's samples (version 1), for tests that write."""
    archive = Archive(tmp_path / "archive")
    commons = Commons(archive)
    ingest(commons.catalog, [SAMPLES], DEMO_COLLECTION)
    publish(commons.catalog)
    return archive


@pytest.fixture
def copy_of_demo(demo_archive_dir, tmp_path) -> Archive:
    """A private copy of the demo archive, for tests that publish new versions (without the
    work files of the processes using the original: its scratch folder, an index being built)."""
    return Archive(copy_archive(demo_archive_dir, tmp_path / "demo-copy"))
