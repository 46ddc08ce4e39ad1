"""DICOMweb QIDO-RS under /dicomweb, through the real `dicomweb-client` package against a
live server: searches at every level compared with pydicom's own read of the sample files
(the demo's `pydicom_samples`) and with DuckDB over idc-index-data for IDC series;
restricted collections; every bad parameter a 4xx."""

from __future__ import annotations

import hashlib
import io
import warnings

import duckdb
import idc_index_data
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from conftest import SAMPLES, LiveServer
from imaging_commons.config import Archive
from imaging_commons.core.demo import DEMO_COLLECTION
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish

CT = pydicom.dcmread(SAMPLES / "CT_small.dcm", stop_before_pixels=True)
MR = pydicom.dcmread(SAMPLES / "MR_small.dcm", stop_before_pixels=True)


def _samples_of(study_uid: str) -> list[pydicom.Dataset]:
    """Every sample file pydicom reads as part of the study."""
    found = []
    for path in sorted(SAMPLES.rglob("*")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if ds.get("StudyInstanceUID") == study_uid and "SOPInstanceUID" in ds:
            found.append(ds)
    return found


def _client(server: LiveServer, token: str | None = None) -> DICOMwebClient:
    headers = {"Authorization": f"Bearer {token}"} if token else None
    return DICOMwebClient(url=f"{server.url}/dicomweb", headers=headers)


def _value(dataset: dict, keyword: str):
    tag = f"{pydicom.datadict.tag_for_keyword(keyword):08X}"
    values = dataset.get(tag, {}).get("Value")
    return values[0] if values and len(values) == 1 else values


def _uids(datasets: list[dict], keyword: str) -> set[str]:
    return {_value(d, keyword) for d in datasets}


def test_studies_match_pydicom(server):
    client = _client(server)
    for sample in (CT, MR):
        files = _samples_of(sample.StudyInstanceUID)
        (study,) = client.search_for_studies(
            search_filters={"StudyInstanceUID": sample.StudyInstanceUID}, fields=["all"])
        assert _value(study, "PatientID") == sample.PatientID
        assert _value(study, "StudyDate") == sample.StudyDate
        assert study["00080020"]["vr"] == "DA" and study["0020000D"]["vr"] == "UI"
        assert _value(study, "PatientSex") == sample.get("PatientSex")
        assert _value(study, "StudyDescription") == sample.get("StudyDescription")
        modalities = _value(study, "ModalitiesInStudy")
        assert set([modalities] if isinstance(modalities, str) else modalities) == {
            ds.Modality for ds in files}
        assert _value(study, "NumberOfStudyRelatedSeries") == len(
            {ds.SeriesInstanceUID for ds in files})
        assert _value(study, "NumberOfStudyRelatedInstances") == len(
            {ds.SOPInstanceUID for ds in files})
        # attributes the catalogue does not hold are absent, not invented
        assert "00100010" not in study and "00080050" not in study


def test_series_and_instances_match_pydicom(server):
    client = _client(server)
    files = _samples_of(CT.StudyInstanceUID)
    series = client.search_for_series(study_instance_uid=CT.StudyInstanceUID)
    assert _uids(series, "SeriesInstanceUID") == {ds.SeriesInstanceUID for ds in files}
    (first,) = [s for s in series if _value(s, "SeriesInstanceUID") == CT.SeriesInstanceUID]
    assert _value(first, "Modality") == CT.Modality
    assert _value(first, "SeriesNumber") == int(CT.SeriesNumber)
    assert _value(first, "StudyInstanceUID") == CT.StudyInstanceUID
    assert _value(first, "NumberOfSeriesRelatedInstances") == len(
        {ds.SOPInstanceUID for ds in files if ds.SeriesInstanceUID == CT.SeriesInstanceUID})
    instances = client.search_for_instances(study_instance_uid=CT.StudyInstanceUID,
                                            series_instance_uid=CT.SeriesInstanceUID)
    assert _uids(instances, "SOPInstanceUID") == {
        ds.SOPInstanceUID for ds in files if ds.SeriesInstanceUID == CT.SeriesInstanceUID}
    (one,) = [i for i in instances if _value(i, "SOPInstanceUID") == CT.SOPInstanceUID]
    assert _value(one, "SOPClassUID") == CT.SOPClassUID
    assert _value(one, "InstanceNumber") == int(CT.InstanceNumber)
    # a study's instances, all instances and all series, narrowed by UID
    assert _uids(client.search_for_instances(study_instance_uid=CT.StudyInstanceUID),
                 "SOPInstanceUID") == {ds.SOPInstanceUID for ds in files}
    assert _uids(client.search_for_instances(
        search_filters={"SOPInstanceUID": CT.SOPInstanceUID}), "SeriesInstanceUID") == {
        CT.SeriesInstanceUID}
    assert _uids(client.search_for_series(search_filters={"00200011": CT.SeriesNumber,
                                                          "StudyInstanceUID": CT.StudyInstanceUID}),
                 "SeriesInstanceUID") == {CT.SeriesInstanceUID}


def test_matching(server):
    client = _client(server)

    def studies(**filters) -> set[str]:
        return _uids(client.search_for_studies(search_filters=filters, limit=1000),
                     "StudyInstanceUID")

    ct, mr = CT.StudyInstanceUID, MR.StudyInstanceUID
    assert studies(**{"00100020": CT.PatientID}) == {ct}  # by tag
    assert ct in studies(PatientID=CT.PatientID[:2] + "*")  # wildcards
    assert studies(PatientID="?" + CT.PatientID[1:]) >= {ct}
    assert ct not in studies(PatientID=CT.PatientID + "?")
    # UID lists
    assert studies(StudyInstanceUID=f"{ct},{mr}") == {ct, mr}
    # dates, ranges with open ends
    assert studies(StudyInstanceUID=ct, StudyDate=CT.StudyDate) == {ct}
    assert studies(StudyInstanceUID=ct, StudyDate=f"{CT.StudyDate}-") == {ct}
    assert studies(StudyInstanceUID=ct, StudyDate=f"-{CT.StudyDate}") == {ct}
    assert studies(StudyInstanceUID=f"{ct},{mr}", StudyDate="20040101-20040331") == {ct}
    assert studies(StudyInstanceUID=ct, StudyDate="20050101-") == set()
    # a study matches on any modality of its series
    assert studies(StudyInstanceUID=f"{ct},{mr}", ModalitiesInStudy="MR") == {mr}
    # the catalogue holds no patient names: a name matches nothing, `*` everything
    assert studies(StudyInstanceUID=ct, PatientName="Doe*") == set()
    assert studies(StudyInstanceUID=ct, PatientName="*") == {ct}
    # fuzzy matching is accepted, and changes no answer here
    assert _uids(client.search_for_studies(search_filters={"StudyInstanceUID": ct},
                                           fuzzymatching=True), "StudyInstanceUID") == {ct}


def test_includefield(server):
    client = _client(server)
    filters = {"StudyInstanceUID": CT.StudyInstanceUID}
    (plain,) = client.search_for_studies(search_filters=filters)
    assert "00081030" not in plain and "00201208" in plain  # not by default
    for asked in (["StudyDescription"], ["00081030"], ["all"]):
        (study,) = client.search_for_studies(search_filters=filters, fields=asked)
        assert _value(study, "StudyDescription") == CT.StudyDescription
    # what OHIF's study list sends: comma-separated tags, limit, offset, fuzzymatching
    answer = requests.get(f"{server.url}/dicomweb/studies", params={
        "limit": 101, "offset": 0, "fuzzymatching": "false",
        "includefield": "00081030,00080060", "StudyDate": "20040101-20041231"}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/dicom+json")
    found = answer.json()
    assert 0 < len(found) <= 101
    assert all("20040101" <= _value(d, "StudyDate") <= "20041231" for d in found)
    answer = requests.get(f"{server.url}/dicomweb/studies", params={
        "limit": 101, "offset": 0, "fuzzymatching": "false", "PatientID": CT.PatientID,
        "includefield": "00081030,00080060", "StudyDate": "20040101-20041231"}, timeout=60)
    (study,) = answer.json()
    assert _value(study, "StudyDescription") == CT.StudyDescription


def test_limit_and_offset(server):
    client = _client(server)
    ten = client.search_for_studies(limit=10)
    assert len(ten) == 10
    assert (client.search_for_studies(limit=4) + client.search_for_studies(limit=6, offset=4)
            == ten)
    series = client.search_for_series(limit=3, offset=2)
    assert len(series) == 3


def test_idc_series_match_idc_index(server):
    """An imported series (catalogue rows only) shows what idc-index-data says of it."""
    uid, study, modality, count = duckdb.sql(
        "SELECT SeriesInstanceUID, StudyInstanceUID, Modality, instanceCount FROM "
        f"read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}') "
        "WHERE collection_id = 'lidc_idri' ORDER BY SeriesInstanceUID LIMIT 1").fetchone()
    client = _client(server)
    (series,) = client.search_for_series(search_filters={"SeriesInstanceUID": uid})
    assert (_value(series, "StudyInstanceUID"), _value(series, "Modality"),
            _value(series, "NumberOfSeriesRelatedInstances")) == (study, modality, count)
    (found,) = client.search_for_studies(search_filters={"StudyInstanceUID": study})
    expected = duckdb.sql(
        "SELECT count(*), sum(instanceCount) FROM "
        f"read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}') "
        "WHERE StudyInstanceUID = ?", params=[study]).fetchone()
    assert (_value(found, "NumberOfStudyRelatedSeries"),
            _value(found, "NumberOfStudyRelatedInstances")) == expected
    # no instance rows for imported series
    assert client.search_for_instances(study_instance_uid=study) == []


def test_nothing_matches_is_204(server):
    answer = requests.get(f"{server.url}/dicomweb/studies",
                          params={"StudyInstanceUID": "1.2.3.4.5.6.7.8.9"}, timeout=60)
    assert (answer.status_code, answer.content) == (204, b"")


@pytest.mark.parametrize("path, params", [
    ("studies", {"StudyInstanceUID": "1.2.03"}),  # malformed UID
    ("studies", {"StudyInstanceUID": "1.2.3,abc"}),
    ("studies/not-a-uid/series", {}),
    ("studies/1.2.3/series/1..2/instances", {}),
    ("studies", {"includefield": "NoSuchKeyword"}),
    ("studies", {"includefield": "99990010"}),  # no such tag
    ("studies", {"FooBar": "1"}),
    ("studies", {"limit": "-1"}),
    ("studies", {"limit": "0"}),
    ("studies", {"limit": "many"}),
    ("studies", {"offset": "x"}),
    ("studies", {"offset": "-2"}),
    ("studies", {"StudyDate": "2020-01-01"}),
    ("studies", {"StudyDate": "20201301"}),
    ("studies", {"StudyDate": "20201231-20200101"}),
    ("studies", {"StudyDate": "-"}),
    ("studies", {"fuzzymatching": "maybe"}),
    ("studies", {"NumberOfStudyRelatedInstances": "3"}),
    ("studies", {"00081032.00080100": "x"}),
    ("series", [("Modality", "CT"), ("Modality", "MR")]),
])
def test_bad_input_is_a_4xx(server, path, params):
    answer = requests.get(f"{server.url}/dicomweb/{path}", params=params, timeout=60)
    assert answer.status_code == 400, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.text


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """pydicom's samples, with the CT study also in a restricted collection of its own."""
    archive = Archive(tmp_path_factory.mktemp("dicomweb") / "archive")
    catalog = Commons(archive).catalog
    ingest(catalog, [SAMPLES / "MR_small.dcm"], DEMO_COLLECTION)
    ingest(catalog, [SAMPLES / "CT_small.dcm"], "closed", restricted=True)
    publish(catalog)
    with LiveServer(archive) as live:
        yield live


def test_restricted_study_visibility(restricted):
    live = restricted
    live.commons.accounts.add_user("granted", "pw-secret-1")
    live.commons.accounts.grant("granted", "closed")
    callers = {
        "anonymous": None,
        "ungranted": live.user_token("ungranted"),
        "granted": live.user_token("granted"),
        "admin": live.user_token("boss", is_admin=True),
    }
    for who, token in callers.items():
        client = _client(live, token)
        seen = who in ("granted", "admin")
        studies = _uids(client.search_for_studies(), "StudyInstanceUID")
        assert (CT.StudyInstanceUID in studies) == seen, who
        assert MR.StudyInstanceUID in studies, who
        for found in (client.search_for_series(study_instance_uid=CT.StudyInstanceUID),
                      client.search_for_instances(search_filters={
                          "SOPInstanceUID": CT.SOPInstanceUID})):
            assert bool(found) == seen, who


# ----- WADO-RS instance retrieval -----------------------------------------------------------

def _parts(answer: requests.Response) -> list[bytes]:
    """The bodies of a multipart/related answer, split at its boundary."""
    boundary = answer.headers["content-type"].split("boundary=")[1].strip('"')
    parts = answer.content.split(f"--{boundary}".encode())
    assert parts[0] == b"" and parts[-1].strip() == b"--"
    return [part[part.index(b"\r\n\r\n") + 4:-2] for part in parts[1:-1]]


def test_retrieve_instance_is_the_stored_file(server):
    """The part is byte for byte one of pydicom's files with that SOPInstanceUID (several
    samples share the MR's, in other transfer syntaxes), and dicomweb-client reads it as
    pydicom reads that file."""
    by_md5 = {hashlib.md5(path.read_bytes()).hexdigest(): path
              for path in SAMPLES.rglob("*") if path.is_file()}
    answer = requests.get(f"{server.url}/dicomweb/studies/{MR.StudyInstanceUID}/series/"
                          f"{MR.SeriesInstanceUID}/instances/{MR.SOPInstanceUID}", timeout=60)
    assert answer.headers["content-type"].startswith(
        'multipart/related; type="application/dicom"')
    (part,) = _parts(answer)
    source = by_md5[hashlib.md5(part).hexdigest()]
    expected = pydicom.dcmread(source)
    assert expected.SOPInstanceUID == MR.SOPInstanceUID
    dataset = _client(server).retrieve_instance(MR.StudyInstanceUID, MR.SeriesInstanceUID,
                                                MR.SOPInstanceUID)
    assert dataset.SOPInstanceUID == MR.SOPInstanceUID
    assert dataset.PixelData == expected.PixelData


def test_retrieve_instance_refusals(server):
    base = f"{server.url}/dicomweb/studies"
    # another study's UID in the path
    answer = requests.get(f"{base}/{CT.StudyInstanceUID}/series/{MR.SeriesInstanceUID}/"
                          f"instances/{MR.SOPInstanceUID}", timeout=60)
    assert answer.status_code == 404
    answer = requests.get(f"{base}/1.2.3/series/4.5.6/instances/7.8.9", timeout=60)
    assert answer.status_code == 404
    answer = requests.get(f"{base}/1.2.3/series/4.5.6/instances/7..9", timeout=60)
    assert answer.status_code == 400
    # an imported IDC series: its files are in IDC's public bucket, and the answer says so
    study, series = duckdb.sql(
        "SELECT StudyInstanceUID, SeriesInstanceUID FROM "
        f"read_parquet('{idc_index_data.IDC_INDEX_PARQUET_FILEPATH}') "
        "WHERE collection_id = 'lidc_idri' ORDER BY SeriesInstanceUID LIMIT 1").fetchone()
    answer = requests.get(f"{base}/{study}/series/{series}/instances/1.2.3.4", timeout=60)
    assert answer.status_code == 404
    assert "public bucket" in answer.text, answer.text


def test_retrieve_restricted_instance(restricted):
    live = restricted
    path = (f"{live.url}/dicomweb/studies/{CT.StudyInstanceUID}/series/"
            f"{CT.SeriesInstanceUID}/instances/{CT.SOPInstanceUID}")
    assert requests.get(path, timeout=60).status_code == 404
    token = live.user_token("wado-ungranted")
    assert requests.get(path, headers={"Authorization": f"Bearer {token}"},
                        timeout=60).status_code == 404
    token = live.user_token("wado-admin", is_admin=True)
    answer = requests.get(path, headers={"Authorization": f"Bearer {token}"}, timeout=60)
    assert answer.status_code == 200
    (part,) = _parts(answer)
    assert pydicom.dcmread(io.BytesIO(part)).SOPInstanceUID == CT.SOPInstanceUID
