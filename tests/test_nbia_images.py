"""NBIA image endpoints on live servers: through the real tcia_utils client, and through plain
HTTP for zips, single files, thumbnails, DICOM tags, checksums, access rules and bad input."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import tracemalloc
import urllib.parse
import zipfile
from pathlib import Path

import pydicom
import pytest
import requests
from PIL import Image
from pydicom.uid import generate_uid

from conftest import SAMPLES, LiveServer
from imaging_commons.config import Archive
from imaging_commons.core.catalog import stable_pk
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish

SERVICES = "/nbia-api/services"
SECRET = "secret-coll"
LICENSE = {"license_short_name": "CC BY 4.0",
           "license_long_name": "Creative Commons Attribution 4.0 International License",
           "license_url": "https://creativecommons.org/licenses/by/4.0/"}


def not_granted(uid: str, name: str = "SeriesInstanceUID") -> str:
    return (f"The user has not been granted the access to image with given {name},{uid}. "
            "Please contact System Admin to resolve this issue.")


def call(live: LiveServer, path: str, method: str = "GET", token: str | None = None,
         **params) -> requests.Response:
    """One request to an NBIA service; GET sends query parameters, POST a form."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{live.url}{SERVICES}/{path}"
    if method == "POST":
        return requests.post(url, data=params, headers=headers, timeout=60)
    return requests.get(url, params=params, headers=headers, timeout=60)


def stored(live: LiveServer, condition: str = "true", params: tuple = ()) -> list[dict]:
    """Instance rows of the served version (read straight from the catalogue, not through the
    code under test), in InstanceNumber order, with `path` to the stored blob."""
    catalog = live.commons.catalog
    items = catalog.relation(catalog.active_version(), "items")
    cur = catalog.connection().execute(
        f"SELECT * FROM {items} WHERE level = 'instance' AND ({condition}) "
        "ORDER BY InstanceNumber NULLS FIRST, SOPInstanceUID", list(params))
    names = [d[0] for d in cur.description]
    rows = [dict(zip(names, row)) for row in cur.fetchall()]
    for row in rows:
        row["path"] = live.commons.archive.blob_dir / row["blob_key"]
    return rows


def stored_sample(live: LiveServer, name: str) -> dict:
    """The stored instance whose bytes are exactly pydicom's sample file `name`."""
    digest = hashlib.md5((SAMPLES / name).read_bytes()).hexdigest()
    rows = stored(live, "instance_md5 = ?", (digest,))
    assert rows, f"{name} is not stored in this archive"
    return rows[0]


def series_rows(live: LiveServer, series_uid: str) -> list[dict]:
    return stored(live, "SeriesInstanceUID = ?", (series_uid,))


def open_zip(response: requests.Response) -> zipfile.ZipFile:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    assert archive.testzip() is None
    return archive


def write_copies(source: Path, count: int, folder: Path) -> list[Path]:
    """`count` copies of a real sample forming one new series: fresh study, series and SOP
    UIDs and InstanceNumber 1..count; everything else, pixel data included, is the sample's."""
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number in range(1, count + 1):
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = number
        paths.append(folder / f"{number:04d}.dcm")
        ds.save_as(paths[-1])
    return paths


@pytest.fixture(scope="module")
def big_series(server) -> list[dict]:
    """The demo's largest stored series (50 instances numbered 0..49, stored out of order)."""
    catalog = server.commons.catalog
    items = catalog.relation(catalog.active_version(), "items")
    uid = catalog.connection().execute(
        f"SELECT SeriesInstanceUID FROM {items} WHERE level = 'instance' "
        "GROUP BY 1 ORDER BY count(*) DESC LIMIT 1").fetchone()[0]
    rows = series_rows(server, uid)
    assert len(rows) >= 10
    return rows


@pytest.fixture(scope="module")
def idc_series(server) -> tuple[str, str]:
    """A real IDC series known only from the imported catalogue: (SeriesInstanceUID, gcs_url)."""
    catalog = server.commons.catalog
    items = catalog.relation(catalog.active_version(), "items")
    uid, url = catalog.connection().execute(
        f"SELECT SeriesInstanceUID, gcs_url FROM {items} WHERE level = 'series' "
        "ORDER BY SeriesInstanceUID LIMIT 1").fetchone()
    assert url.startswith("s3://idc-open-data/")
    return uid, url


# ----- the real tcia_utils client ------------------------------------------------------------

@pytest.fixture
def tcia(server, monkeypatch, tmp_path, caplog):
    """tcia_utils.nbia aimed at the test server, refused any other host, working in tmp_path."""
    from tcia_utils import nbia

    def local_api_url(endpoint, api_url="nbia"):
        version = "v1" if endpoint == "getContentsByName" else "v4"
        return f"{server.url}{SERVICES}/{version}/"

    real_send = requests.Session.send

    def loopback_only(session, request, **kwargs):
        host = urllib.parse.urlsplit(request.url).hostname
        assert host == "127.0.0.1", f"tcia_utils tried to reach {request.url}"
        return real_send(session, request, **kwargs)

    monkeypatch.setattr(nbia, "setApiUrl", local_api_url)
    monkeypatch.setattr(requests.Session, "send", loopback_only)
    monkeypatch.chdir(tmp_path)
    caplog.set_level(logging.INFO, logger="tcia_utils")
    return nbia


def test_tcia_utils_download_series_with_md5_hashes(tcia, big_series, caplog, tmp_path):
    uid = big_series[0]["SeriesInstanceUID"]
    tcia.downloadSeries([uid], input_type="list", hash="y")
    # tcia_utils 3.x only fetches and unzips; it leaves checking md5hashes.csv to its user
    assert "Downloaded 1 out of 1 targeted series" in caplog.text
    folder = tmp_path / "tciaDownload" / uid
    with open(folder / "md5hashes.csv", newline="") as f:
        listed = {row["Filename"]: row["MD5Hash"] for row in csv.DictReader(f)}
    names = [f"{n:08d}.dcm" for n in range(1, len(big_series) + 1)]
    assert sorted(listed) == names
    for name, row in zip(names, big_series):
        data = (folder / name).read_bytes()
        assert data == row["path"].read_bytes()
        assert hashlib.md5(data).hexdigest() == listed[name] == row["instance_md5"]


def test_tcia_utils_download_series_gets_new_file_names_and_license(tcia, big_series, tmp_path):
    uid = big_series[0]["SeriesInstanceUID"]
    tcia.downloadSeries([uid], input_type="list", path="series")
    folder = tmp_path / "series" / uid
    width = len(str(len(big_series)))
    names = [f"1-{n:0{width}d}.dcm" for n in range(1, len(big_series) + 1)]
    assert sorted(p.name for p in folder.iterdir()) == names + ["LICENSE"]
    for name, row in zip(names, big_series):
        assert (folder / name).read_bytes() == row["path"].read_bytes()


def test_tcia_utils_download_image(tcia, big_series, tmp_path):
    row = big_series[3]
    tcia.downloadImage(row["SeriesInstanceUID"], row["SOPInstanceUID"], path="one")
    saved = tmp_path / "one" / row["SeriesInstanceUID"] / f"{row['SOPInstanceUID']}.dcm"
    assert saved.read_bytes() == row["path"].read_bytes()


def test_tcia_utils_get_dicom_tags(tcia, server):
    ct = stored_sample(server, "CT_small.dcm")
    tags = tcia.getDicomTags(ct["SeriesInstanceUID"])
    assert list(tags.columns) == ["element", "name", "data"]
    rows = tags.set_index("element")
    assert rows.loc["(0028,0010)", "name"] == "Rows" and rows.loc["(0028,0010)", "data"] == "128"
    assert rows.loc["(0008,0018)", "data"] == ct["SOPInstanceUID"]
    private = [e for e in pydicom.dcmread(ct["path"]) if e.tag.is_private]
    assert private, "the sample must hold private elements"
    for e in private:  # nameless, as NBIA lists them (the guide's GEMS elements)
        assert rows.loc[f"({e.tag.group:04X},{e.tag.element:04X})", "name"] == ""


def test_tcia_utils_finds_the_series_an_rtstruct_references(tcia, server):
    """getSegRefSeries reads NBIA's nesting marks: `>>(3006,0014)` followed by
    `>>>(0020,000E)` (the `>` belong to the element, not the name)."""
    rtstruct = stored_sample(server, "rtstruct.dcm")
    ds = pydicom.dcmread(rtstruct["path"], force=True)
    referenced = (ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
                  .RTReferencedSeriesSequence[0].SeriesInstanceUID)
    assert tcia.getSegRefSeries(rtstruct["SeriesInstanceUID"]) == referenced


# ----- zips ----------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2", "v4"])
def test_get_image_streams_license_then_images_named_by_sop_uid(server, big_series, version):
    uid = big_series[0]["SeriesInstanceUID"]
    response = call(server, f"{version}/getImage", SeriesInstanceUID=uid)
    assert response.headers.get("transfer-encoding") == "chunked"  # streamed, no length known
    assert uid in response.headers["content-disposition"]
    archive = open_zip(response)
    names = archive.namelist()
    assert names[0] == "LICENSE"
    assert archive.read("LICENSE").decode().startswith("Collection: pydicom_samples\n")
    assert names[1:] == [f"{row['SOPInstanceUID']}.dcm" for row in big_series]
    for row in big_series:
        assert archive.read(f"{row['SOPInstanceUID']}.dcm") == row["path"].read_bytes()


def test_new_file_names_follow_instance_number_like_nbia(server, big_series):
    uid = big_series[0]["SeriesInstanceUID"]
    archive = open_zip(call(server, "v4/getImage", SeriesInstanceUID=uid, NewFileNames="Yes"))
    assert len(big_series) == 50
    assert archive.namelist() == ["LICENSE"] + [f"1-{n:02d}.dcm" for n in range(1, 51)]
    numbers = [row["InstanceNumber"] for row in big_series]
    assert numbers == sorted(numbers)
    assert archive.read("1-01.dcm") == big_series[0]["path"].read_bytes()
    assert archive.read("1-50.dcm") == big_series[-1]["path"].read_bytes()

    single = stored_sample(server, "CT_small.dcm")
    archive = open_zip(call(server, "v4/getImage", SeriesInstanceUID=single["SeriesInstanceUID"],
                            NewFileNames="yes"))
    assert archive.namelist() == ["LICENSE", "1-1.dcm"]


@pytest.mark.parametrize("version", ["v1", "v2", "v4"])
def test_md5_zip_lists_the_hash_of_every_zipped_file(server, big_series, version):
    uid = big_series[0]["SeriesInstanceUID"]
    archive = open_zip(call(server, f"{version}/getImageWithMD5Hash", SeriesInstanceUID=uid))
    names = [f"{n:08d}.dcm" for n in range(1, len(big_series) + 1)]
    assert archive.namelist() == names + ["md5hashes.csv"]
    lines = archive.read("md5hashes.csv").decode().splitlines()
    assert lines[0] == "Filename,MD5Hash"
    listed = dict(line.split(",") for line in lines[1:])
    for name, row in zip(names, big_series):
        assert hashlib.md5(archive.read(name)).hexdigest() == listed[name] == row["instance_md5"]


def test_license_entry_carries_the_collections_license(restricted):
    live, secret, _ = restricted
    token = live.user_token("licence-reader")
    live.commons.accounts.grant("licence-reader", "secret_coll")
    archive = open_zip(call(live, "v4/getImage", token=token,
                            SeriesInstanceUID=secret[0]["SeriesInstanceUID"]))
    text = archive.read("LICENSE").decode()
    assert text.startswith(f"Collection: {SECRET}\n")  # its name, as the API shows it
    assert f"{LICENSE['license_long_name']} ({LICENSE['license_short_name']})" in text
    assert LICENSE["license_url"] in text


# ----- single files, thumbnails, tags, checksums ---------------------------------------------

@pytest.mark.parametrize("version", ["v1", "v2", "v4"])
def test_single_image_is_the_stored_file(server, big_series, version):
    row = big_series[7]
    response = call(server, f"{version}/getSingleImage", SeriesInstanceUID=row["SeriesInstanceUID"],
                    SOPInstanceUID=row["SOPInstanceUID"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom"
    assert response.content == row["path"].read_bytes()


def test_single_image_must_belong_to_the_series(server, big_series):
    other = stored_sample(server, "CT_small.dcm")
    response = call(server, "v4/getSingleImage",
                    SeriesInstanceUID=big_series[0]["SeriesInstanceUID"],
                    SOPInstanceUID=other["SOPInstanceUID"])
    assert response.status_code == 404 and other["SOPInstanceUID"] in response.text


def expected_thumbnail_size(path: Path) -> tuple[int, int]:
    """The size of a 512-pixel thumbnail of a stored image, by Pillow's own fitting rule."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    box = Image.new("L", (ds.Columns, ds.Rows))
    box.thumbnail((512, 512))
    return box.size


@pytest.mark.parametrize("sample, size", [
    ("CT_small.dcm", (128, 128)),                 # small images keep their size
    ("examples_palette.dcm", (512, 224)),         # 800x350 is scaled down
    ("examples_ybr_color.dcm", (320, 240)),       # JPEG baseline, YBR colour
    ("SC_rgb_rle_32bit_2frame.dcm", (100, 100)),  # RLE lossless, multi-frame
    ("examples_jpeg2k.dcm", (512, 384)),          # JPEG 2000, scaled down
])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_thumbnail_is_a_jpeg_of_the_image(server, sample, size, method):
    row = stored_sample(server, sample)
    response = call(server, "getThumbnail", method, seriesUID=row["SeriesInstanceUID"],
                    objectUID=row["SOPInstanceUID"])
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "JPEG"
    assert image.size == size == expected_thumbnail_size(row["path"])


def test_thumbnail_of_an_object_without_pixels_is_a_client_error(server):
    report = stored_sample(server, "test-SR.dcm")
    response = call(server, "getThumbnail", "POST", seriesUID=report["SeriesInstanceUID"],
                    objectUID=report["SOPInstanceUID"])
    assert response.status_code == 400 and "has no image to show" in response.text
    assert report["SOPInstanceUID"] in response.text and ".dcm" not in response.text


def test_dicom_tags_of_a_series_come_from_its_first_image(server, big_series):
    response = call(server, "getDicomTags", SeriesUID=big_series[0]["SeriesInstanceUID"])
    assert response.status_code == 200
    tags = {row["element"]: row for row in response.json()}
    first = min(big_series, key=lambda row: row["InstanceNumber"])
    assert tags["(0008,0018)"]["data"] == first["SOPInstanceUID"]
    assert tags["(0020,0013)"] == {"element": "(0020,0013)", "name": "Instance Number",
                                   "data": str(first["InstanceNumber"])}


def test_dicom_tags_nest_sequence_items_with_a_marker_per_level(server):
    """As NBIA writes them: one `>` per level in front of the element, the items' elements
    after the sequence, then an `End <name>` row repeating the sequence's element."""
    ct = stored_sample(server, "CT_small.dcm")
    by_series = call(server, "v4/getDicomTags", SeriesUID=ct["SeriesInstanceUID"]).json()
    by_image = call(server, "getDicomTagsByImageID",
                    imageID=str(stable_pk(ct["SOPInstanceUID"]))).json()
    assert by_series == by_image
    ds = pydicom.dcmread(ct["path"])
    sequence = by_image.index({"element": "(0010,1002)", "name": "Other Patient IDs Sequence",
                               "data": ""})
    items = [{"element": f">({e.tag.group:04X},{e.tag.element:04X})", "name": e.name,
              "data": str(e.value)} for item in ds.OtherPatientIDsSequence for e in item]
    assert len(items) == 4
    end = sequence + 1 + len(items)
    assert by_image[sequence + 1:end] == items
    assert by_image[end] == {"element": "(0010,1002)", "name": "End Other Patient IDs Sequence",
                             "data": ""}
    assert {"element": "(0028,0010)", "name": "Rows", "data": "128"} in by_image
    assert not any(row["name"].startswith(">") for row in by_image)


@pytest.mark.parametrize("version", ["v2", "v4"])
def test_md5_of_one_image(server, big_series, version):
    row = big_series[5]
    response = call(server, f"{version}/getM5HashForImage", SOPInstanceUid=row["SOPInstanceUID"])
    assert response.status_code == 200
    assert response.text == row["instance_md5"] == hashlib.md5(row["path"].read_bytes()).hexdigest()


def hierarchy(live: LiveServer, token: str | None = None, **level) -> str:
    response = call(live, "getMD5Hierarchy", "POST", token=token, **level)
    assert response.status_code == 200, response.text
    return response.text


def test_md5_hierarchy_is_the_md5_of_the_sorted_file_md5s(server, big_series):
    uid = big_series[0]["SeriesInstanceUID"]
    expected = hashlib.md5("\n".join(sorted(r["instance_md5"] for r in big_series)).encode())
    assert hierarchy(server, SeriesInstanceUID=uid) == expected.hexdigest()
    assert call(server, "v4/getMD5Hierarchy", SeriesInstanceUID=uid).text == expected.hexdigest()
    every = stored(server)
    collection = hashlib.md5("\n".join(sorted(r["instance_md5"] for r in every)).encode())
    assert hierarchy(server, Collection="pydicom_samples") == collection.hexdigest()
    patient = big_series[0]["PatientID"]
    assert hierarchy(server, PatientID=patient) == hierarchy(
        server, PatientID=patient, Collection="pydicom_samples")


def test_md5_hierarchy_changes_exactly_when_a_file_below_changes(small_archive, tmp_path):
    with LiveServer(small_archive) as live:
        rows = stored(live)
        changed = next(r for r in rows if r["InstanceNumber"] is not None
                       and sum(o["SeriesInstanceUID"] == r["SeriesInstanceUID"] for o in rows) > 1)
        untouched = next(r for r in rows if r["PatientID"] != changed["PatientID"]
                         and r["StudyInstanceUID"] != changed["StudyInstanceUID"])
        levels = {
            "changed series": {"SeriesInstanceUID": changed["SeriesInstanceUID"]},
            "changed study": {"StudyInstanceUID": changed["StudyInstanceUID"]},
            "changed patient": {"PatientID": changed["PatientID"]},
            "collection": {"Collection": "pydicom_samples"},
            "other series": {"SeriesInstanceUID": untouched["SeriesInstanceUID"]},
            "other study": {"StudyInstanceUID": untouched["StudyInstanceUID"]},
        }
        before = {name: hierarchy(live, **level) for name, level in levels.items()}
        assert before == {name: hierarchy(live, **level) for name, level in levels.items()}

        modified = pydicom.dcmread(changed["path"])
        modified.SeriesDescription = "re-ingested with a new description"
        modified.save_as(tmp_path / "modified.dcm")
        catalog = Commons(small_archive).catalog
        # an identical copy of an untouched file is re-ingested too: it must change nothing
        ingest(catalog, [tmp_path / "modified.dcm", untouched["path"]], "pydicom_samples")
        publish(catalog)

        after = {name: hierarchy(live, **level) for name, level in levels.items()}
        assert {name for name in levels if after[name] != before[name]} == {
            "changed series", "changed study", "changed patient", "collection"}


# ----- what is not stored here, what is restricted, what is malformed -------------------------

@pytest.mark.parametrize("path, params", [
    ("v4/getImage", {"NewFileNames": "Yes"}),
    ("v2/getImageWithMD5Hash", {}),
    ("v4/getDicomTags", {}),
    ("getMD5Hierarchy", {}),
])
def test_a_series_known_only_from_the_idc_catalogue_points_at_its_bucket(server, idc_series,
                                                                         path, params):
    uid, url = idc_series
    name = "SeriesUID" if "DicomTags" in path else "SeriesInstanceUID"
    response = call(server, path, **{name: uid}, **params)
    assert response.status_code == 404
    assert url in response.text and "not stored on this server" in response.text


def test_an_image_of_an_idc_catalogue_series_points_at_its_bucket(server, idc_series):
    uid, url = idc_series
    response = call(server, "v4/getSingleImage", SeriesInstanceUID=uid, SOPInstanceUID="1.2.3")
    assert response.status_code == 404 and url in response.text


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """A private archive: 3 copies of CT_small as a restricted, licensed collection and 2 as a
    public one, all for the same patient. Yields (server, secret rows, public rows)."""
    root = tmp_path_factory.mktemp("restricted")
    archive = Archive(root / "archive")
    catalog = Commons(archive).catalog
    ingest(catalog, write_copies(SAMPLES / "CT_small.dcm", 3, root / "secret"), SECRET,
           restricted=True, metadata=LICENSE)
    ingest(catalog, write_copies(SAMPLES / "CT_small.dcm", 2, root / "open"), "open-coll")
    publish(catalog)
    with LiveServer(archive) as live:
        yield (live, stored(live, "collection_id = 'secret_coll'"),
               stored(live, "collection_id = 'open_coll'"))


def series_requests(row: dict) -> list[tuple[str, str, dict]]:
    """Every way to reach the files of `row`'s series: (method, path, params)."""
    series, sop = row["SeriesInstanceUID"], row["SOPInstanceUID"]
    return [
        ("GET", "v4/getImage", {"SeriesInstanceUID": series, "NewFileNames": "Yes"}),
        ("GET", "v1/getImage", {"SeriesInstanceUID": series}),
        ("GET", "v2/getImageWithMD5Hash", {"SeriesInstanceUID": series}),
        ("GET", "v4/getSingleImage", {"SeriesInstanceUID": series, "SOPInstanceUID": sop}),
        ("POST", "getThumbnail", {"seriesUID": series, "objectUID": sop}),
        ("GET", "getDicomTags", {"SeriesUID": series}),
        ("POST", "getMD5Hierarchy", {"SeriesInstanceUID": series}),
    ]


def test_restricted_series_are_refused_to_guests_with_nbias_message(restricted):
    live, secret, _ = restricted
    series = secret[0]["SeriesInstanceUID"]
    for token in (None, "undefined"):
        for method, path, params in series_requests(secret[0]):
            response = call(live, path, method, token=token, **params)
            assert (response.status_code, response.text) == (400, not_granted(series)), path
    sop = secret[0]["SOPInstanceUID"]
    response = call(live, "v2/getM5HashForImage", SOPInstanceUid=sop)
    assert (response.status_code, response.text) == (400, not_granted(sop, "SOPInstanceUID"))
    image_id = str(stable_pk(sop))
    response = call(live, "getDicomTagsByImageID", imageID=image_id)
    assert (response.status_code, response.text) == (400, not_granted(image_id, "imageID"))
    response = call(live, "getMD5Hierarchy", Collection=SECRET)
    assert (response.status_code, response.text) == (400, not_granted(SECRET, "Collection"))


def test_restricted_series_need_a_grant(restricted):
    live, secret, public = restricted
    series = secret[0]["SeriesInstanceUID"]
    ungranted = live.user_token("no-grant")
    for method, path, params in series_requests(secret[0]):
        response = call(live, path, method, token=ungranted, **params)
        assert (response.status_code, response.text) == (400, not_granted(series)), path

    granted = live.user_token("with-grant")
    live.commons.accounts.grant("with-grant", "secret_coll")
    for method, path, params in series_requests(secret[0]):
        assert call(live, path, method, token=granted, **params).status_code == 200, path
    archive = open_zip(call(live, "v4/getImage", token=granted, SeriesInstanceUID=series))
    assert archive.namelist()[1:] == [f"{row['SOPInstanceUID']}.dcm" for row in secret]

    # a patient spanning both collections: the hierarchy covers what the caller may see
    patient = secret[0]["PatientID"]
    assert patient == public[0]["PatientID"]
    everything = sorted(r["instance_md5"] for r in secret + public)
    public_only = sorted(r["instance_md5"] for r in public)
    assert hierarchy(live, token=granted, PatientID=patient) == hashlib.md5(
        "\n".join(everything).encode()).hexdigest()
    assert hierarchy(live, PatientID=patient) == hashlib.md5(
        "\n".join(public_only).encode()).hexdigest()


def identifier_requests(row: dict) -> list[tuple[str, str, dict, str]]:
    """Every image endpoint asked about one of `row`'s identifiers, with the identifier's
    value: (method, path, params, value)."""
    series, sop, study = row["SeriesInstanceUID"], row["SOPInstanceUID"], row["StudyInstanceUID"]
    return [(method, path, params, series) for method, path, params in series_requests(row)] + [
        ("GET", "v2/getM5HashForImage", {"SOPInstanceUid": sop}, sop),
        ("GET", "getDicomTagsByImageID", {"imageID": str(stable_pk(sop))}, str(stable_pk(sop))),
        ("GET", "getMD5Hierarchy", {"StudyInstanceUID": study}, study),
        ("GET", "getMD5Hierarchy", {"Collection": row["collection_id"]}, row["collection_id"]),
    ]


def test_restricted_and_unknown_identifiers_get_the_same_answer(restricted):
    """No existence oracle: for a caller without a grant, an identifier in a restricted
    collection is answered exactly as one that exists nowhere (the value itself aside)."""
    live, secret, _ = restricted
    unknown = {"SeriesInstanceUID": generate_uid(), "SOPInstanceUID": generate_uid(),
               "StudyInstanceUID": generate_uid(), "collection_id": "no-such-collection"}
    ungranted = live.user_token("no-grant-oracle")
    for token in (None, ungranted):
        for there, nowhere in zip(identifier_requests(secret[0]), identifier_requests(unknown)):
            (method, path, params, value), (_, _, other_params, other) = there, nowhere
            hidden = call(live, path, method, token=token, **params)
            absent = call(live, path, method, token=token, **other_params)
            assert hidden.status_code == absent.status_code == 400, (path, hidden.text)
            assert hidden.text.replace(value, "<id>") == absent.text.replace(other, "<id>"), path
            assert hidden.headers["content-type"] == absent.headers["content-type"]


def test_an_invalid_token_is_refused(server, big_series):
    response = call(server, "v4/getImage", token="not-a-token",
                    SeriesInstanceUID=big_series[0]["SeriesInstanceUID"])
    assert response.status_code == 401


@pytest.mark.parametrize("path, params, expected", [
    ("v4/getImage", {}, "SeriesInstanceUID"),
    ("v1/getImage", {"SeriesInstanceUID": ""}, "SeriesInstanceUID"),
    ("v2/getImageWithMD5Hash", {}, "SeriesInstanceUID"),
    ("v4/getSingleImage", {"SeriesInstanceUID": "1.2.3"}, "SOPInstanceUID"),
    ("v4/getSingleImage", {"SOPInstanceUID": "1.2.3"}, "SeriesInstanceUID"),
    ("getThumbnail", {"seriesUID": "1.2.3"}, "objectUID"),
    ("getDicomTags", {}, "SeriesUID"),
    ("getDicomTagsByImageID", {}, "imageID"),
    ("v2/getM5HashForImage", {}, "SOPInstanceUid"),
    ("getMD5Hierarchy", {}, "exactly one of"),
    ("getMD5Hierarchy", {"SeriesInstanceUID": "1.2", "StudyInstanceUID": "1.2"}, "exactly one of"),
    ("v4/getImage", {"SeriesInstanceUID": "1.2", "seriesuid2": "x"}, "Invalid query parameter"),
    ("v4/getSingleImage", {"SeriesInstanceUID": "1", "SOPInstanceUID": "2", "colour": "red"},
     "Invalid query parameter: 'colour'. Allowed parameters are: [SeriesInstanceUID, "
     "SOPInstanceUID"),
])
def test_missing_or_unknown_parameters_are_400_naming_them(server, path, params, expected):
    response = call(server, path, **params)
    assert response.status_code == 400 and expected in response.text


GARBAGE = ["x", "1.2.3", "' OR '1'='1", "1; DROP TABLE items; --", "%", "_", "\\", "é☃",
           "1" * 5000, "../../etc/passwd", "\x00"]


@pytest.mark.parametrize("value", GARBAGE)
def test_garbage_identifiers_are_not_found_never_a_server_error(server, value):
    for method, path, params in [
        ("GET", "v4/getImage", {"SeriesInstanceUID": value}),
        ("GET", "v2/getImageWithMD5Hash", {"SeriesInstanceUID": value}),
        ("GET", "v4/getSingleImage", {"SeriesInstanceUID": value, "SOPInstanceUID": value}),
        ("POST", "getThumbnail", {"seriesUID": value, "objectUID": value}),
        ("GET", "getDicomTags", {"SeriesUID": value}),
        ("GET", "v2/getM5HashForImage", {"SOPInstanceUid": value}),
        ("POST", "getMD5Hierarchy", {"PatientID": value}),
        ("GET", "getMD5Hierarchy", {"Collection": value}),
    ]:
        response = call(server, path, method, **params)
        assert response.status_code in (400, 404), (path, value, response.text)


def test_a_malformed_form_body_is_a_client_error(server):
    response = requests.post(f"{server.url}{SERVICES}/getThumbnail", data=b"--x\r\ngarbage",
                             headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert response.status_code == 400


@pytest.mark.parametrize("image_id", ["abc", "-1", "1.5", "1e3", " ", "0x10", "٣", "9" * 31])
def test_image_ids_must_be_integers(server, image_id):
    response = call(server, "getDicomTagsByImageID", imageID=image_id)
    assert response.status_code == 400 and "imageID" in response.text


@pytest.mark.parametrize("image_id", ["9" * 30, str(2**52), str(2**64), "0"])
def test_unknown_image_ids_are_answered_as_not_granted(server, image_id):
    response = call(server, "getDicomTagsByImageID", imageID=image_id)
    assert (response.status_code, response.text) == (400, not_granted(image_id, "imageID"))


# ----- memory --------------------------------------------------------------------------------

def test_a_large_series_is_streamed_not_built_in_memory(tmp_path):
    """200 copies of a 314 KB sample (about 64 MB of zip) go out while the whole process --
    server and client -- holds at most a few MB more than before (tracemalloc sees every
    Python allocation, the 1 MB file chunks included)."""
    archive = Archive(tmp_path / "archive")
    catalog = Commons(archive).catalog
    copies = write_copies(SAMPLES / "examples_overlay.dcm", 200, tmp_path / "copies")
    ingest(catalog, copies, "bulk")
    publish(catalog)
    series_uid = pydicom.dcmread(copies[0], stop_before_pixels=True).SeriesInstanceUID
    with LiveServer(archive) as live:
        assert call(live, "getMD5Hierarchy", SeriesInstanceUID=series_uid).status_code == 200
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            received = 0
            with requests.get(f"{live.url}{SERVICES}/v4/getImage", stream=True, timeout=60,
                              params={"SeriesInstanceUID": series_uid}) as response, \
                    open(tmp_path / "series.zip", "wb") as out:
                assert response.status_code == 200
                for chunk in response.iter_content(1 << 16):
                    received += len(chunk)
                    out.write(chunk)
            peak_growth = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
    assert received > 60e6
    assert peak_growth < received / 8, f"peak grew by {peak_growth / 1e6:.1f} MB"
    with zipfile.ZipFile(tmp_path / "series.zip") as zipped:
        assert len(zipped.namelist()) == 201 and zipped.testzip() is None


def test_an_empty_sequence_is_closed_too():
    """NBIA closes every sequence with an End row, items or not."""
    from imaging_commons.api.nbia.images import nbia_tag_rows
    from imaging_commons.core.imaging import DicomElement

    rows = [DicomElement("(0008,1140)", "Referenced Image Sequence", "", "SQ", 0),
            DicomElement("(0010,0010)", "Patient's Name", "A^B", "PN", 0)]
    assert nbia_tag_rows(rows) == [
        {"element": "(0008,1140)", "name": "Referenced Image Sequence", "data": ""},
        {"element": "(0008,1140)", "name": "End Referenced Image Sequence", "data": ""},
        {"element": "(0010,0010)", "name": "Patient's Name", "data": "A^B"}]
