"""What the server does whatever the route, on live servers: sign-in throttling, no credentials
in the access log, security headers, CORS, the request body limit, the cap on heavy requests
per client, the largest list answer, and a clear 503 when the archive's storage refuses."""

from __future__ import annotations

import csv
import io
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import requests
from starlette.requests import Request

from conftest import SAMPLES, LiveServer, free_port
from imaging_commons.api.nbia.formats import csv_chunks, manifest
from imaging_commons.api.security import attachment
from imaging_commons.config import Archive
from imaging_commons.core.demo import DEMO_COLLECTION
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish
from imaging_commons.core.search.filters import ORDERED_LIST_MAX
from imaging_commons.core.zips import Member, iter_zip
from test_nbia_images import write_copies

SERVICES = "/nbia-api/services"
TOKEN = "/nbia-api/oauth/token"
PASSWORD = "pw-right-1"


def small(tmp_path: Path, **settings) -> Archive:
    """pydicom's samples as version 1 of a fresh archive with the given settings."""
    archive = Archive(tmp_path / "archive", **settings)
    commons = Commons(archive)
    ingest(commons.catalog, [SAMPLES], DEMO_COLLECTION)
    publish(commons.catalog)
    return archive


def sign_in(live: LiveServer | str, username: str, password: str) -> requests.Response:
    base = live if isinstance(live, str) else live.url
    return requests.post(f"{base}{TOKEN}", timeout=30, data={
        "username": username, "password": password, "grant_type": "password"})


class ServerProcess:
    """`imaging-commons serve` over `archive` in a process of its own (its command behind
    `wrapper`, e.g. a namespace), with its log; `base` once it answers, `log` once it ends."""

    def __init__(self, archive: Archive, wrapper: tuple[str, ...] | list[str] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.command = [*wrapper, sys.executable, "-m", "imaging_commons.cli", "--archive",
                        str(archive.root), "serve", "--port", str(self.port)]
        self.log = ""

    def __enter__(self) -> ServerProcess:
        self.proc = subprocess.Popen(self.command, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 60
        while True:
            try:
                requests.get(f"{self.base}/v1/about", timeout=5)
                return self
            except requests.ConnectionError as e:
                if time.time() > deadline or self.proc.poll() is not None:
                    self.__exit__()
                    raise RuntimeError(f"the server did not start: {self.log}") from e
                time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.proc.terminate()
        self.log, _ = self.proc.communicate(timeout=30)


# ----- sign-in throttling --------------------------------------------------------------------

@pytest.mark.slow
def test_password_guessing_is_throttled_per_user_with_retry_after(tmp_path):
    with LiveServer(small(tmp_path)) as live:
        live.commons.accounts.add_user("victim", PASSWORD)
        for _ in range(5):  # the free failures
            assert sign_in(live, "victim", "guess").status_code == 401
        refused = sign_in(live, "victim", "guess")
        assert refused.status_code == 401  # the sixth failure starts the 1 s wait
        refused = sign_in(live, "victim", PASSWORD)
        # during the wait even the right password is refused, unchecked
        assert refused.status_code == 429, refused.text
        assert refused.json()["error"] == "invalid_grant"
        assert int(refused.headers["Retry-After"]) >= 1
        time.sleep(int(refused.headers["Retry-After"]))
        assert sign_in(live, "victim", PASSWORD).status_code == 200
        # a success clears the name's count: a mistake afterwards is answered normally
        assert sign_in(live, "victim", "typo").status_code == 401
        # waits double: 1 s after the 6th failure, then 2 s, 4 s ...
        for _ in range(5):
            sign_in(live, "victim", "guess")
        refused = sign_in(live, "victim", "guess")
        time.sleep(int(refused.headers.get("Retry-After", 0)))
        assert sign_in(live, "victim", "guess").status_code == 401  # the 7th failure
        refused = sign_in(live, "victim", PASSWORD)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) == 2


def test_guessing_many_names_from_one_address_is_throttled(tmp_path):
    """A name that does not exist counts like one that does (so a 429 says nothing about
    which names exist), and an address gets four times a name's free failures."""
    with LiveServer(small(tmp_path, login_free_failures=2)) as live:
        live.commons.accounts.add_user("real", PASSWORD)
        # 2 free failures a name, 8 an address: the 9th starts the address's wait
        answers = [sign_in(live, f"nobody-{i}", "guess").status_code for i in range(9)]
        assert answers == [401] * 9
        refused = sign_in(live, "real", PASSWORD)
        assert refused.status_code == 429 and "Retry-After" in refused.headers


def test_the_throttle_is_configurable_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGING_COMMONS_LOGIN_FREE_FAILURES", "3")
    monkeypatch.setenv("IMAGING_COMMONS_LOGIN_MAX_DELAY", "60")
    archive = Archive.from_env(tmp_path)
    assert (archive.login_free_failures, archive.login_max_delay_s) == (3, 60)


# ----- no secrets in logs ------------------------------------------------------------------

@pytest.mark.slow
def test_credentials_in_a_query_string_never_reach_the_access_log(tmp_path):
    archive = small(tmp_path)
    Commons(archive).accounts.add_user("alice", "s3cret-Pa55")
    with ServerProcess(archive) as server:
        base = server.base
        answer = requests.get(f"{base}{TOKEN}", timeout=30, params={
            "username": "alice", "password": "s3cret-Pa55", "grant_type": "password"})
        token = answer.json()["access_token"]
        refresh = answer.json()["refresh_token"]
        requests.get(f"{base}{TOKEN}?username=alice&pass%77ord=s3cret-Pa55", timeout=30)
        requests.get(f"{base}/v1/collections", params={"access_token": token}, timeout=30)
        requests.post(f"{base}{TOKEN}?grant_type=refresh_token&refresh_token={refresh}",
                      timeout=30)
    log = server.log
    assert f'"GET {TOKEN}?username=alice&password=[redacted]&grant_type=password' in log
    for secret in ("s3cret-Pa55", token, refresh):
        assert secret not in log


# ----- headers, CORS, body limit -------------------------------------------------------------

@pytest.mark.parametrize("path", [
    "/v1/collections", "/v1/no-such-endpoint", "/v1/cohorts/preview?page_size=x",
    f"{SERVICES}/v1/getCollectionValues", f"{SERVICES}/v4/getSeries?bogus=1",
    f"{SERVICES}/v1/getCollectionValues?format=csv", "/openapi.json"])
def test_every_answer_carries_the_security_headers(server, path):
    response = requests.get(server.url + path, timeout=60)
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


@pytest.mark.parametrize("page", ["/docs", "/v1/swagger"])
def test_the_swagger_pages_load_only_from_this_server(server, page):
    response = requests.get(server.url + page, timeout=60)
    assert response.status_code == 200
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self' 'unsafe-inline'" in policy and "http" not in policy
    assert "cdn" not in response.text and "https://" not in response.text.split("<body>")[0]
    for asset in ("/static/swagger/swagger-ui-bundle.js", "/static/swagger/swagger-ui.css"):
        assert asset in response.text
        assert requests.get(server.url + asset, timeout=60).status_code == 200


def test_cors_is_off_by_default(server):
    preflight = requests.options(f"{server.url}/v1/collections", timeout=60, headers={
        "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    plain = requests.get(f"{server.url}/v1/collections", timeout=60,
                         headers={"Origin": "http://viewer.example"})
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_cors_allows_the_configured_origins_only(tmp_path):
    with LiveServer(small(tmp_path, cors_origins="http://viewer.example")) as live:
        preflight = requests.options(f"{live.url}{SERVICES}/v4/getSeries", timeout=60, headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
        assert "authorization" in preflight.headers["Access-Control-Allow-Headers"].lower()
        answer = requests.get(f"{live.url}/v1/collections", timeout=60,
                              headers={"Origin": "http://viewer.example"})
        assert answer.headers["Access-Control-Allow-Origin"] == "http://viewer.example"
        other = requests.get(f"{live.url}/v1/collections", timeout=60,
                             headers={"Origin": "http://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


def test_a_body_over_the_limit_is_refused_and_nothing_is_stored(tmp_path):
    with LiveServer(small(tmp_path, max_body_bytes=1 << 20)) as live:
        token = live.user_token("carter")
        uids = ",".join(["1.2.3.4.5.6.7.8.9"] * 200_000)  # 3.6 MB
        response = requests.post(f"{live.url}{SERVICES}/createSharedList", timeout=60,
                                 data={"list": uids, "name": "too-big"},
                                 headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 413, response.text
        response = requests.post(f"{live.url}/v1/cohorts/manifest/preview", timeout=60,
                                 data=b"x" * (2 << 20),
                                 headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and "Too Large" in response.text
        listed = requests.get(f"{live.url}{SERVICES}/v1/getContentsByName", timeout=60,
                              params={"name": "too-big"})
        assert listed.status_code == 400 or not listed.content  # no such list was stored


def test_a_chunked_body_is_refused_while_it_arrives(tmp_path):
    """A body with no Content-Length is counted as it comes: the 413 is sent once the limit
    is passed, while the body is still unfinished (the client stops sending just past the
    limit and waits: a server that waited for the end of the body would never answer)."""
    limit = 1 << 20
    with LiveServer(small(tmp_path, max_body_bytes=limit)) as live:
        with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
            sock.sendall(f"POST {SERVICES}/createSharedList HTTP/1.1\r\nHost: x\r\n"
                         "Content-Type: application/x-www-form-urlencoded\r\n"
                         "Transfer-Encoding: chunked\r\n\r\n".encode())
            chunk = b"list=" + b"1" * (256 << 10)
            sent = 0
            while sent * len(chunk) <= limit + len(chunk):  # just past the limit, unfinished
                try:
                    sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                except (BrokenPipeError, ConnectionResetError):
                    break  # refused already
                sent += 1
            answer = b""
            while b"\r\n\r\n" not in answer:
                received = sock.recv(65536)
                if not received:
                    break
                answer += received
            assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


# ----- heavy answers: per-client cap and the largest list --------------------------------

def test_one_client_gets_only_so_many_heavy_answers_at_once(tmp_path):
    archive = Archive(tmp_path / "archive", heavy_per_client=1)
    catalog = Commons(archive).catalog
    files = write_copies(SAMPLES / "CT_small.dcm", 200, tmp_path / "big")  # ~8 MB of zip
    ingest(catalog, files, "big")
    publish(catalog)
    with LiveServer(archive) as live:
        uids = requests.get(f"{live.url}{SERVICES}/v1/getSeries", timeout=60).json()
        uid = uids[0]["SeriesInstanceUID"]
        url = f"{live.url}{SERVICES}/v4/getImage?SeriesInstanceUID={uid}"
        held = requests.get(url, stream=True, timeout=60)  # read none of it: it stays running
        assert held.status_code == 200
        second = requests.get(url, timeout=60)
        assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
        assert requests.get(f"{live.url}{SERVICES}/v1/getCollectionValues",
                            timeout=60).status_code == 200  # light requests are not counted
        body = held.content
        held.close()
        assert zipfile.ZipFile(io.BytesIO(body)).testzip() is None
        for _ in range(50):  # the first answer's slot is given back once it has been sent
            third = requests.get(url, timeout=60)
            if third.status_code == 200:
                break
            time.sleep(0.1)
        assert third.status_code == 200


def test_a_list_answer_over_the_maximum_is_refused_with_the_count(tmp_path):
    with LiveServer(small(tmp_path, max_list_rows=3)) as live:
        everything = requests.get(f"{live.url}{SERVICES}/v1/getSeries", timeout=60)
        assert everything.status_code == 400
        assert "more than the 3 this server sends in one answer" in everything.text
        updated = requests.get(f"{live.url}{SERVICES}/v2/getUpdatedSeries",
                               params={"fromDate": "01/01/2000"}, timeout=60)
        assert updated.status_code == 400
        catalog = live.commons.catalog
        one = catalog.connection().execute(
            f"SELECT any_value(SeriesInstanceUID) FROM "
            f"{catalog.relation(catalog.active_version(), 'items')}").fetchone()[0]
        narrow = requests.get(f"{live.url}{SERVICES}/v1/getSeries",
                              params={"SeriesInstanceUID": one}, timeout=60)
        assert narrow.status_code == 200 and len(narrow.json()) == 1


@pytest.mark.slow
def test_whole_collection_lists_come_in_series_order_for_every_kind_of_filter(server):
    """The list is streamed in the index's stored order, not sorted per request: it must
    still be the order NBIA gives, whether the filter is one value, a short list or a list
    long enough to be matched as a set (of middling collections: the set's length is what
    counts, and the largest would make the list most of the catalogue)."""
    catalog = server.commons.catalog
    items = catalog.relation(catalog.active_version(), "items")
    con = catalog.connection()
    collections = [r[0] for r in con.execute(
        f"SELECT collection_id FROM {items} WHERE level = 'series' "
        "GROUP BY 1 ORDER BY count(*) DESC").fetchall()]
    assert len(collections[-70:]) > ORDERED_LIST_MAX
    for chosen in (collections[5:6], collections[6:10], collections[-70:]):
        expected = [r[0] for r in con.execute(f"""
            SELECT SeriesInstanceUID FROM {items}
            WHERE level = 'series' AND list_contains(?, collection_id)
            ORDER BY collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID""",
            [chosen]).fetchall()]
        response = requests.post(f"{server.url}{SERVICES}/v1/getSeries", timeout=300,
                                 data=[("Collection", c) for c in chosen])
        assert [r["SeriesInstanceUID"] for r in response.json()] == expected, len(chosen)


# ----- writers ---------------------------------------------------------------------------------

HOSTILE = ["../../../tmp/pwned_sop", "/etc/passwd", "..\\..\\win", "a\r\nb", "x\x00y", ".hidden",
           "C:\\boot", "…", ""]


def test_zip_members_never_extract_outside_their_folder(tmp_path):
    members = [Member(f"{name}.dcm", b"data") for name in HOSTILE]
    data = b"".join(iter_zip(members))
    target = tmp_path / "out"
    target.mkdir()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = archive.namelist()
        archive.extractall(target)
    assert len(names) == len(HOSTILE)
    extracted = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(extracted) == len(HOSTILE) and all(target in p.parents for p in extracted)
    assert all(n.isprintable() and not n.startswith((".", "/")) and ".." not in n.split("/")
               for n in names)


def test_a_download_name_cannot_break_its_header():
    for name in HOSTILE:
        header = attachment(f"{name}.zip")
        assert header.startswith('attachment; filename="') and header.count('"') == 2
        assert header.isprintable() and "/" not in header and "\\" not in header


def test_a_lone_csv_column_keeps_hostile_values_in_their_row():
    values = ["1.2.3", "a,b", 'say "x"', "line\r\nbreak", "downloadServerUrl=http://e/x"]
    text = "".join(csv_chunks(["SOPInstanceUID"], ([v] for v in values)))
    assert list(csv.reader(io.StringIO(text, newline=""))) == [["SOPInstanceUID"]] + [
        [v] for v in values]
    assert text.startswith("SOPInstanceUID\n1.2.3\n")  # plain values stay unquoted (NBIA's form)


def test_a_tcia_manifest_lists_only_uids():
    request = Request({"type": "http", "scheme": "http", "server": ("commons.example", 80),
                       "path": "/", "root_path": "", "headers": [], "query_string": b""})
    uids = ["1.2.3", "1.2\r\ndownloadServerUrl=http://evil.example/x", "../../etc", "4.5.6"]
    lines = manifest(request, uids, False).body.decode().splitlines()
    assert [line for line in lines if line.startswith("downloadServerUrl=")] == [
        "downloadServerUrl=http://commons.example/nbia-api/services/v2/getImage"]
    assert lines[lines.index("ListOfSeriesToDownload=") + 1:] == ["1.2.3", "4.5.6"]


# ----- storage faults ----------------------------------------------------------------------

def unshare_works() -> bool:
    return shutil.which("unshare") is not None and subprocess.run(
        ["unshare", "-rm", "true"], capture_output=True).returncode == 0


@pytest.mark.skipif(not unshare_works(), reason="needs `unshare -rm` (user and mount namespaces)"
                    " to mount the archive read-only")
@pytest.mark.slow
def test_a_read_only_archive_answers_503_with_the_fix(tmp_path):
    archive = small(tmp_path)
    Commons(archive).accounts.add_user("alice", PASSWORD)
    root = str(archive.root)
    read_only = ["unshare", "-rm", "sh", "-c", f'mount --bind -o ro {root} {root} && exec "$@"',
                 "sh"]
    with ServerProcess(archive, read_only) as server:
        base = server.base
        for path in ("/v1/collections", "/v1/versions",
                     f"{SERVICES}/v1/getCollectionValues", f"{SERVICES}/v1/getSeries"):
            response = requests.get(base + path, timeout=60)
            assert response.status_code == 503, (path, response.text)
            assert "read-only" in response.text and "read-write" in response.text
        token = sign_in(base, "alice", PASSWORD)
        assert token.status_code == 503 and "read-only" in token.text
    assert "Traceback" not in server.log
    assert "cannot warm up the archive: the archive's storage is read-only" in server.log


def test_the_http_settings_are_read_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("IMAGING_COMMONS_MAX_BODY", "1234")
    monkeypatch.setenv("IMAGING_COMMONS_CORS_ORIGINS", "http://a.example,http://b.example")
    monkeypatch.setenv("IMAGING_COMMONS_HEAVY_PER_CLIENT", "2")
    monkeypatch.setenv("IMAGING_COMMONS_MAX_LIST_ROWS", "99")
    archive = Archive.from_env(tmp_path)
    assert (archive.max_body_bytes, archive.cors_origins, archive.heavy_per_client,
            archive.max_list_rows) == (1234, "http://a.example,http://b.example", 2, 99)
