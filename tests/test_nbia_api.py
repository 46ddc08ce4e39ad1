"""The NBIA metadata and search API, against a live server over the real IDC catalogue plus
pydicom's sample files: through the real tcia_utils client, and by direct requests shaped
like the sample calls of NBIA's guide. Expected values are computed independently with DuckDB over
the idc-index-data Parquet files and the fixture archive's own instance rows."""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from xml.etree import ElementTree

import duckdb
import idc_index_data
import pytest
import requests

from conftest import SAMPLES, LiveServer
from imaging_commons.config import Archive
from imaging_commons.core.catalog import INGESTED_PREFIX, stable_pk
from imaging_commons.core.demo import DEMO_COLLECTION
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish

SERVICES = "/nbia-api/services"
TOKEN = "/nbia-api/oauth/token"
IDC = Path(idc_index_data.IDC_INDEX_PARQUET_FILEPATH).parent
SEED_SERIES = "1.3.6.1.4.1.14519.5.2.1.6834.5010.322628904903035357840500590726"
MANIFEST = re.compile(
    r"downloadServerUrl=(?P<url>\S+)\n"
    r"includeAnnotation=(?P<annotation>true|false)\n"
    r"noOfrRetry=4\n"
    r"databasketId=manifest-\d{13}\.tcia\n"
    r"manifestVersion=3\.0\n"
    r"ListOfSeriesToDownload=\n"
    r"(?P<series>(?:[0-9.]+\n)*)")
SEED_METADATA2_HEADER = (
    '"Subject ID","Study UID","Study Description","Study Date","Series ID","Series Description",'
    '"Number of images","File Size (Bytes)","Collection Name","Modality","Manufacturer",'
    '"3rd Party Analysis","Data Description URI","Series Number","License Name","License URL",'
    '"Date Released","Series Date","Protocol Name","Body Part Examined","Annotations Flag",'
    '"Manufacturer Model Name","Software Versions","TimeStamp"')


# ----- expected values, computed without the server ------------------------------------------
@pytest.fixture(scope="session")
def truth(demo_archive_dir):
    """A DuckDB view of every series the demo archive's active version holds: IDC's current
    index straight from idc-index-data, plus the ingested samples from the archive's own
    instance rows (a published version's manifest names them)."""
    local = local_items(demo_archive_dir)
    con = duckdb.connect()
    con.execute(f"""
        CREATE VIEW names AS SELECT collection_id, collection_name, species
        FROM read_parquet('{IDC / "collections_index.parquet"}')
        UNION ALL SELECT '{DEMO_COLLECTION}', '{DEMO_COLLECTION}', 'Human'""")  # as build_demo says
    con.execute(f"""
        CREATE VIEW truth AS
        SELECT collection_id, PatientID, StudyInstanceUID, SeriesInstanceUID, Modality,
               BodyPartExamined, Manufacturer, StudyDate::VARCHAR AS StudyDate,
               instanceCount AS images, CAST(round(series_size_MB * 1000000) AS BIGINT) AS bytes,
               analysis_result_id, source_DOI, series_revised_idc_version AS version
        FROM read_parquet('{IDC / "idc_index.parquet"}')
        UNION ALL BY NAME
        SELECT collection_id, any_value(PatientID) AS PatientID,
               any_value(StudyInstanceUID) AS StudyInstanceUID, SeriesInstanceUID,
               any_value(Modality) AS Modality, any_value(BodyPartExamined) AS BodyPartExamined,
               any_value(Manufacturer) AS Manufacturer, any_value(StudyDate) AS StudyDate,
               count(*) AS images, sum(instance_size) AS bytes, min(version_min) AS version
        FROM {local} GROUP BY collection_id, SeriesInstanceUID""")
    con.execute(f"CREATE VIEW local_instances AS SELECT * FROM {local}")
    return con


def rows(con, sql: str, *params) -> list[tuple]:
    return con.execute(sql, list(params)).fetchall()


def column(con, sql: str, *params) -> list:
    return [r[0] for r in rows(con, sql, *params)]


def patients_where(truth, condition: str, *params) -> int:
    """Patients are (collection, PatientID); series without a PatientID share one patient."""
    return rows(truth, f"SELECT count(DISTINCT (collection_id, PatientID)) FROM truth "
                       f"WHERE {condition}", *params)[0][0]


def local_items(archive_root: Path) -> str:
    """A read_parquet() of the ingested instance rows of an archive's newest version: the
    segments its manifest names that ingest wrote (these archives retire no row)."""
    versions = sorted((archive_root / "catalog" / "versions").glob("*.json"),
                      key=lambda p: int(p.stem))
    manifest = json.loads(versions[-1].read_text())
    assert not manifest["retired"]
    files = [str(archive_root / "catalog" / "segments" / f) for f in manifest["items"]
             if f.startswith(INGESTED_PREFIX)]
    return f"read_parquet({files})"


# ----- clients -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def api(server) -> str:
    return f"{server.url}{SERVICES}"


@pytest.fixture
def nbia(server, monkeypatch):
    """tcia_utils.nbia pointed at the live server; any request elsewhere fails the test."""
    from tcia_utils import nbia as client

    base = f"{server.url}{SERVICES}"
    monkeypatch.setattr(client, "setApiUrl", lambda endpoint, api_url="":
                        f"{base}/v1/" if endpoint == "getContentsByName" else f"{base}/v4/")
    send = requests.Session.send

    def local_only(session, request, **kw):
        assert request.url.startswith(server.url), f"tcia_utils tried to reach {request.url}"
        return send(session, request, **kw)

    monkeypatch.setattr(requests.Session, "send", local_only)
    return client


def manifest_series(text: str, server_url: str, annotation: str = "false") -> list[str]:
    m = MANIFEST.fullmatch(text)
    assert m, f"not a .tcia manifest:\n{text[:500]}"
    assert m["url"] == f"{server_url}{SERVICES}/v2/getImage"
    assert m["annotation"] == annotation
    return m["series"].split()


# ----- tcia_utils ----------------------------------------------------------------------------
def test_tcia_utils_collections_modalities_body_parts(nbia, truth):
    names = {c["Collection"] for c in nbia.getCollections()}
    expected = set(column(truth, "SELECT DISTINCT collection_name FROM truth JOIN names "
                                 "USING (collection_id)"))
    assert names == expected and {"4D-Lung", DEMO_COLLECTION} <= names
    assert {m["Modality"] for m in nbia.getModality(collection="4D-Lung")} == set(column(
        truth, "SELECT DISTINCT Modality FROM truth WHERE collection_id = '4d_lung'"))
    assert {b["BodyPartExamined"] for b in nbia.getBodyPart(collection="4D-Lung")} == set(
        column(truth, "SELECT DISTINCT BodyPartExamined FROM truth "
                      "WHERE collection_id = '4d_lung' AND BodyPartExamined IS NOT NULL"))
    assert {m["Manufacturer"] for m in nbia.getManufacturer(collection="4D-Lung")} == set(
        column(truth, "SELECT DISTINCT Manufacturer FROM truth WHERE collection_id = '4d_lung'"))
    sample_modalities = {m["Modality"] for m in nbia.getModality(collection=DEMO_COLLECTION)}
    assert sample_modalities == set(column(
        truth, "SELECT DISTINCT Modality FROM truth WHERE collection_id = ? "
                  "AND Modality IS NOT NULL", DEMO_COLLECTION))


def test_tcia_utils_patients_and_studies(nbia, truth):
    patients = nbia.getPatient(collection="4D-Lung")
    assert sorted(p["PatientId"] for p in patients) == sorted(column(
        truth, "SELECT DISTINCT PatientID FROM truth WHERE collection_id = '4d_lung'"))
    assert len(patients) == 20
    assert all(p["Collection"] == "4D-Lung" and p["Authorized"] == 1
               and p["SpeciesDescription"] == "Homo sapiens" for p in patients)
    studies = nbia.getStudy(collection="4D-Lung", patientId="100_HM10395")
    expected = dict(rows(truth, "SELECT StudyInstanceUID, count(*) FROM truth "
                                "WHERE PatientID = '100_HM10395' GROUP BY 1"))
    assert {s["StudyInstanceUID"]: s["SeriesCount"] for s in studies} == expected
    assert all(re.fullmatch(r"\d\d-\d\d-\d{4}", s["StudyDate"]) for s in studies)
    sample_studies = nbia.getStudy(collection=DEMO_COLLECTION)
    assert len(sample_studies) == rows(truth, "SELECT count(DISTINCT StudyInstanceUID) FROM "
                                              "truth WHERE collection_id = ?",
                                       DEMO_COLLECTION)[0][0]
    by_modality = nbia.getPatientByCollectionAndModality("4D-Lung", "RTSTRUCT")
    assert len(by_modality) == patients_where(truth, "collection_id = '4d_lung' AND "
                                                     "Modality = 'RTSTRUCT'")


def test_tcia_utils_series_sizes_and_instances(nbia, truth):
    series = nbia.getSeries(collection=DEMO_COLLECTION)
    expected = dict(rows(truth, "SELECT SeriesInstanceUID, images FROM truth "
                                "WHERE collection_id = ?", DEMO_COLLECTION))
    assert {s["SeriesInstanceUID"]: s["ImageCount"] for s in series} == expected
    uid, images, size = rows(truth, "SELECT SeriesInstanceUID, images, bytes FROM truth "
                                    "WHERE SeriesInstanceUID = ?", SEED_SERIES)[0]
    (one,) = nbia.getSeries(seriesUid=SEED_SERIES)
    assert (one["ImageCount"], one["FileSize"], one["Collection"]) == (images, size, "4D-Lung")
    assert "ProtocolName" not in one and None not in one.values()  # nulls are left out
    assert nbia.getSeriesSize(SEED_SERIES) == [{"TotalSizeInBytes": size, "ObjectCount": images,
                                                "Authorized": 1}]
    multi = max(expected, key=expected.get)
    sops = {s["SOPInstanceUID"] for s in nbia.getSopInstanceUids(multi)}
    assert sops == set(column(truth, "SELECT SOPInstanceUID FROM local_instances "
                                     "WHERE SeriesInstanceUID = ?", multi))


def test_tcia_utils_series_list_reads_the_csv(nbia, truth):
    uids = [SEED_SERIES, *column(truth, "SELECT SeriesInstanceUID FROM truth "
                                        "WHERE collection_id = ? LIMIT 3", DEMO_COLLECTION)]
    df = nbia.getSeriesList(uids)
    assert sorted(df["SeriesInstanceUID"]) == sorted(uids)
    seed = df[df["SeriesInstanceUID"] == SEED_SERIES].iloc[0]
    assert seed["PatientID"] == "100_HM10395" and seed["Project"] == "4D-Lung"
    assert seed["ImageCount"] == 50 and seed["Authorized"] == 1


def test_tcia_utils_simple_search(nbia, truth):
    found = nbia.getSimpleSearch(collections=["4D-Lung"], modalities=["CT"], size=50)
    assert found["totalPatients"] == patients_where(
        truth, "collection_id = '4d_lung' AND Modality = 'CT'")
    assert [r["subjectId"] for r in found["resultSet"]] == sorted(column(
        truth, "SELECT DISTINCT PatientID FROM truth WHERE collection_id = '4d_lung'"))
    uids = nbia.getSimpleSearch(collections=["4D-Lung"], format="uids")
    assert sorted(uids) == sorted(column(truth, "SELECT SeriesInstanceUID FROM truth "
                                                "WHERE collection_id = '4d_lung'"))
    mice = nbia.getSimpleSearch(species=["mouse"], size=1)
    assert mice["totalPatients"] == patients_where(
        truth, "collection_id IN (SELECT collection_id FROM names WHERE species ILIKE '%mouse%')")
    # tcia_utils sends criteriaType0=Criteria.DateRange: an unknown type, ignored
    dated = nbia.getSimpleSearch(collections=["4D-Lung"], fromDate="1990/01/01",
                                 toDate="2000/01/01")
    assert dated["totalPatients"] == 20


def test_tcia_utils_updates_and_new_data(nbia, truth, server):
    newest = max(server.commons.catalog.versions(), key=lambda v: v.date_active)
    released = [v.version for v in server.commons.catalog.versions()
                if v.date_active >= newest.date_active]
    since = newest.date_active.replace("-", "/")
    updated = nbia.getUpdatedSeries(since)
    expected = column(truth, "SELECT SeriesInstanceUID FROM truth WHERE list_contains(?, version)",
                      released)
    assert sorted(s["SeriesInstanceUID"] for s in updated) == sorted(expected)
    new_patients = nbia.getNewPatientsInCollection(DEMO_COLLECTION, since)
    assert len(new_patients) == patients_where(truth, "collection_id = ?", DEMO_COLLECTION)
    patient = new_patients[0]["PatientId"]
    new_studies = nbia.getNewStudiesInPatient(DEMO_COLLECTION, patient, since)
    assert {s["StudyInstanceUID"] for s in new_studies} == set(column(
        truth, "SELECT StudyInstanceUID FROM truth WHERE collection_id = ? AND PatientID = ?",
        DEMO_COLLECTION, patient))


def test_tcia_utils_advanced_counts_and_descriptions(nbia, truth):
    counts = {c["criteria"]: int(c["count"]) for c in nbia.getCollectionPatientCounts()}
    assert counts["4D-Lung"] == 20
    assert counts[DEMO_COLLECTION] == patients_where(truth, "collection_id = ?", DEMO_COLLECTION)
    modality_counts = nbia.getModalityCounts(collection="VICTRE")
    assert modality_counts == [{"criteria": "MG", "count": str(patients_where(
        truth, "collection_id = 'victre' AND Modality = 'MG'"))}]
    body_parts = {c["criteria"]: int(c["count"]) for c in nbia.getBodyPartCounts(modality="PT")}
    assert body_parts == dict(rows(truth, "SELECT BodyPartExamined, count(DISTINCT (collection_id,"
                                          " PatientID)) FROM truth WHERE Modality = 'PT'"
                                          " AND BodyPartExamined IS NOT NULL GROUP BY 1"))
    makers = nbia.getManufacturerCounts(collection="4D-Lung")
    assert makers == [{"criteria": "ADAC", "count": "20"},
                      {"criteria": "Varian Imaging Laboratories, Switzerland", "count": "20"}]
    descriptions = nbia.getCollectionDescriptions(format="df", removeHtml="yes")
    lung = descriptions[descriptions["collectionName"] == "4D-Lung"].iloc[0]
    assert "chemoradiotherapy" in lung["description"] and "<p>" not in lung["description"]
    doi = nbia.getDoiMetadata("https://doi.org/10.7937/K9/TCIA.2016.ELN8YGLE", output="series")
    assert sorted(d["seriesInstanceUID"] for d in doi) == sorted(column(
        truth, "SELECT SeriesInstanceUID FROM truth "
               "WHERE source_DOI = '10.7937/k9/tcia.2016.eln8ygle'"))


def test_tcia_utils_shared_cart(nbia, api, truth):
    name = f"cart-{uuid.uuid4().hex}"
    uids = column(truth, "SELECT SeriesInstanceUID FROM truth WHERE PatientID = '100_HM10395' "
                         "ORDER BY 1 LIMIT 3")
    r = requests.post(f"{api}/createSharedList", data={"list": uids, "name": name})
    assert (r.status_code, r.text) == (200, "List created")
    assert sorted(s["SeriesInstanceUID"] for s in nbia.getSharedCart(name)) == sorted(uids)


# ----- advanced endpoints, shaped like the sample calls of NBIA's guide ----------------------
def test_values_and_counts_seed_calls(api, truth):
    body_parts = requests.get(f"{api}/getBodyPartValuesAndCounts?Modality=PT").json()
    assert all(set(c) == {"criteria", "count"} and isinstance(c["count"], str) for c in body_parts)
    by_collection = requests.post(f"{api}/getCollectionValuesAndCounts",
                                  data="criteriaType0=CollectionCriteria&value0=CBIS-DDSM",
                                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert by_collection.json() == [{"criteria": "CBIS-DDSM", "count": str(patients_where(
        truth, "collection_id = 'cbis_ddsm'"))}]
    victre = requests.get(f"{api}/getModalityValuesAndCounts?Collection=VICTRE").json()
    assert victre == [{"criteria": "MG", "count": str(patients_where(
        truth, "collection_id = 'victre'"))}]
    both = requests.get(f"{api}/getManufacturerValuesAndCounts",
                        params={"Collection": "4d_lung", "Modality": "RTSTRUCT"}).json()
    assert both == [{"criteria": "ADAC", "count": "20"}]
    species = {c["criteria"]: int(c["count"])
               for c in requests.get(f"{api}/getSpeciesValuesAndCounts").json()}
    assert species["337915000"] == patients_where(
        truth, "collection_id IN (SELECT collection_id FROM names WHERE species ILIKE '%human%')")
    values = requests.post(f"{api}/getSimpleSearchCriteriaValues",
                           data={"criteriaType0": "CollectionCriteria", "value0": "CBIS-DDSM"})
    groups = {g["criteria"]: g["values"] for g in values.json()}
    assert list(groups) == ["Collections", "Species", "Image Modality", "Anatomical Site",
                            "Manufacturer"]
    assert groups["Collections"] == [{"criteria": "CBIS-DDSM", "count": "6671"}]
    assert groups["Species"] == [{"criteria": "Human", "count": "6671"}]


def test_collection_descriptions_licenses_species_tax(api):
    (lung,) = requests.get(f"{api}/getCollectionDescriptions?collectionName=4D-Lung").json()
    assert list(lung) == ["description", "id", "collectionDescTimestamp", "collectionName",
                          "userName", "licenseId", "descriptionURI"]
    assert lung["collectionName"] == "4D-Lung" and lung["description"].startswith("<p>")
    assert lung["descriptionURI"] == "https://doi.org/10.7937/k9/tcia.2016.eln8ygle"
    licenses = requests.get(f"{api}/getLicenses").json()
    by_short = {item["shortName"]: item for item in licenses}
    assert lung["licenseId"] == by_short["CC BY 3.0"]["id"]
    assert by_short["CC BY-NC 4.0"]["commercialUse"] == "NO"
    # described as most collections describe it (one IDC collection's says CC BY 3.0)
    assert by_short["CC BY-NC 3.0"]["licenseURL"] == "https://creativecommons.org/licenses/by-nc/3.0/"
    assert "NonCommercial" in by_short["CC BY-NC 3.0"]["longName"]
    assert set(by_short["CC BY 4.0"]["license"]) == {"id", "longName", "shortName", "url",
                                                     "commercialUse", "licenseText"}
    taxonomy = requests.get(f"{api}/getSpeciesTax").json()
    assert {"speciesCode": "337915000", "speciesDescription": "Homo sapiens"} in taxonomy
    assert {"speciesCode": "447612001", "speciesDescription": "Mus musculus"} in taxonomy


def test_collection_or_series_for_doi(api, truth):
    doi = "DOI=https://doi.org/10.7937/K9/TCIA.2016.ELN8YGLE"
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    collection = requests.post(f"{api}/getCollectionOrSeriesForDOI",
                               data=f"{doi}&CollectionOrSeries=collection", headers=headers)
    assert collection.json() == [{"collection": "4D-Lung", "seriesInstanceUID": None,
                                  "thirdPartyAnanlysis": None}]
    series = requests.post(f"{api}/getCollectionOrSeriesForDOI",
                           data=f"{doi}&CollectionOrSeries=series", headers=headers).json()
    assert series[0] == {"collection": "4D-Lung", "seriesInstanceUID":
                         "1.3.6.1.4.1.14519.5.2.1.6834.5010.100037757822547877540622085093",
                         "thirdPartyAnanlysis": None}
    assert len(series) == rows(truth, "SELECT count(*) FROM truth "
                                      "WHERE collection_id = '4d_lung'")[0][0]
    result_doi = column(truth, "SELECT source_DOI FROM truth WHERE analysis_result_id = "
                               "'dicom_lidc_idri_nodules' LIMIT 1")[0]
    analysis = requests.post(f"{api}/getCollectionOrSeriesForDOI", data={"DOI": result_doi})
    assert analysis.json() == [{"collection": "LIDC-IDRI", "seriesInstanceUID": None,
                                "thirdPartyAnanlysis": "YES"}]


def test_simple_search_seed_time_point_call(api):
    r = requests.post(f"{api}/getSimpleSearchWithModalityAndBodyPartPaged",
                      data="criteriaType0=TimePointCriteria&eventType0=DIAGNOSIS&fromDay0=-5"
                           "&toDay0=10&sortField=subject&sortDirection=descending&start=0&size=9",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    # the catalogue holds no longitudinal event data, so no patient has a time point
    assert r.json() == {"resultSet": [], "totalPatients": 0, "bodyParts": [], "modalities": [],
                        "collections": [], "species": [], "maxTimepoints": {},
                        "minTimepoints": {}, "sort": "subject-descending"}


def search(api, *criteria: tuple, **extra) -> dict:
    data = {}
    for i, (kind, *values) in enumerate(criteria):
        data[f"criteriaType{i}"] = kind
        if kind == "DateRangeCriteria":
            data[f"fromDate{i}"], data[f"toDate{i}"] = values
        else:
            data[f"value{i}"] = values[0]
    r = requests.post(f"{api}/getSimpleSearchWithModalityAndBodyPartPaged", data={**data, **extra})
    assert r.status_code == 200, r.text
    return r.json()


def test_simple_search_result_shape_and_facets(api, truth):
    found = search(api, ("CollectionCriteria", "4D-Lung"), sortField="subject",
                   sortDirection="descending", start=0, size=3)
    assert found["totalPatients"] == 20 and found["sort"] == "subject-descending"
    first = found["resultSet"][0]
    assert list(first) == ["subjectId", "project", "id", "modalities", "bodyParts", "species",
                           "timepoints", "totalNumberOfStudies", "totalNumberOfSeries",
                           "studyIdentifiers"]
    patient = first["subjectId"]
    assert patient == max(column(truth, "SELECT DISTINCT PatientID FROM truth "
                                        "WHERE collection_id = '4d_lung'"))
    assert first["id"] == stable_pk(f"4d_lung/{patient}")
    series = dict(rows(truth, "SELECT SeriesInstanceUID, StudyInstanceUID FROM truth "
                              "WHERE collection_id = '4d_lung' AND PatientID = ?", patient))
    assert first["totalNumberOfSeries"] == len(series)
    assert first["totalNumberOfStudies"] == len(set(series.values()))
    assert sorted(pk for s in first["studyIdentifiers"] for pk in s["seriesIdentifiers"]) == \
        sorted(stable_pk(uid) for uid in series)
    assert {s["studyIdentifier"] for s in first["studyIdentifiers"]} == \
        {stable_pk(uid) for uid in series.values()}
    assert first["modalities"] == ["CT", "RTSTRUCT"] and first["species"] == ["337915000"]
    assert found["modalities"] == [{"value": "CT", "count": 20}, {"value": "RTSTRUCT", "count": 20}]
    assert found["collections"] == [{"value": "4D-Lung", "count": 20}]
    assert found["species"] == [{"value": "337915000", "count": 20}]


def test_simple_search_paging_and_sorting(api, truth):
    everyone = sorted(column(truth, "SELECT DISTINCT PatientID FROM truth "
                                    "WHERE collection_id = '4d_lung'"))
    lung = ("CollectionCriteria", "4D-Lung")
    pages = [search(api, lung, start=start, size=7)["resultSet"] for start in (0, 7, 14)]
    assert [p["subjectId"] for page in pages for p in page] == everyone
    assert search(api, lung, start=20, size=7)["resultSet"] == []
    beyond = search(api, lung, start=2**31 - 1, size=7)
    assert beyond["resultSet"] == [] and beyond["totalPatients"] == 20
    by_studies = search(api, lung, sortField="totalNumberOfStudies", sortDirection="descending",
                        size=20)["resultSet"]
    counts = [p["totalNumberOfStudies"] for p in by_studies]
    assert counts == sorted(counts, reverse=True)
    by_series = search(api, lung, sortField="series", size=20)["resultSet"]
    counts = [p["totalNumberOfSeries"] for p in by_series]
    assert counts == sorted(counts)
    collections = [p["project"] for p in search(
        api, lung, ("CollectionCriteria", "VICTRE"), sortField="collection", size=40)["resultSet"]]
    assert collections == sorted(collections)


def test_simple_search_every_criterion_type(api, truth):
    def total(*criteria, **extra):
        return search(api, *criteria, size=0, **extra)["totalPatients"]

    assert total(("ImageModalityCriteria", "PT"), ("AnatomicalSiteCriteria", "LUNG")) == \
        patients_where(truth, "Modality = 'PT' AND BodyPartExamined = 'LUNG'")
    assert total(("CollectionCriteria", "4D-Lung"), ("ManufacturerCriteria", "ADAC")) == 20
    assert total(("PatientCriteria", "100_HM10395")) == 1
    assert total(("CollectionCriteria", "4D-Lung"),
                 ("DateRangeCriteria", "01/01/1999", "12/31/1999")) == patients_where(
        truth, "collection_id = '4d_lung' AND StudyDate BETWEEN '1999-01-01' AND '1999-12-31'")
    # NBIA's guide writes dd/mm/yyyy: read day-first when month-first is impossible
    assert total(("CollectionCriteria", "4D-Lung"),
                 ("DateRangeCriteria", "01/01/1999", "31/12/1999")) == patients_where(
        truth, "collection_id = '4d_lung' AND StudyDate BETWEEN '1999-01-01' AND '1999-12-31'")
    assert total(("CollectionCriteria", "4D-Lung"), ("MinNumberOfStudiesCriteria", "30")) == \
        rows(truth, "SELECT count(*) FROM (SELECT PatientID FROM truth WHERE collection_id = "
                    "'4d_lung' GROUP BY 1 HAVING count(DISTINCT StudyInstanceUID) >= 30)")[0][0]
    assert total(("ImageModalityCriteria", "CT"), ("ImageModalityCriteria", "PT"),
                 ("ModalityAndedSearchCriteria", "all")) == rows(
        truth, "SELECT count(*) FROM (SELECT collection_id, PatientID FROM truth WHERE Modality "
               "IN ('CT', 'PT') GROUP BY ALL HAVING count(DISTINCT Modality) = 2)")[0][0]
    assert total(("ImageModalityCriteria", "CT"), ("ImageModalityCriteria", "PT")) == \
        patients_where(truth, "Modality IN ('CT', 'PT')")
    assert total(("SpeciesCriteria", "448771007")) == patients_where(
        truth, "collection_id IN (SELECT collection_id FROM names WHERE species = 'Canine')")
    assert total(("PhantomCriteria", "yes")) == patients_where(
        truth, "collection_id IN (SELECT collection_id FROM names WHERE species = 'Phantom')")
    assert total(("ThirdPartyAnalysis", "yes")) == patients_where(
        truth, "analysis_result_id IS NOT NULL")
    everyone = patients_where(truth, "true")
    assert total(("ExcludeCommercialCriteria", "yes")) < everyone
    assert total(("NoSuchCriteria", "x")) == everyone == total()


def test_simple_search_date_order_follows_the_api_version(api, truth):
    """The advanced API reads the guide's dd/mm/yyyy, v4 the MM-DD-YYYY tcia_utils writes."""
    lung = "collection_id = '4d_lung' AND StudyDate BETWEEN ? AND ?"
    spring = patients_where(truth, lung, "1998-03-02", "1998-04-12")
    assert spring != patients_where(truth, lung, "1998-02-03", "1998-12-04")  # order matters
    advanced = search(api, ("CollectionCriteria", "4D-Lung"),
                      ("DateRangeCriteria", "02/03/1998", "12/04/1998"), size=0)
    assert advanced["totalPatients"] == spring
    v4 = requests.post(f"{api}/v4/getSimpleSearch", data={
        "criteriaType0": "CollectionCriteria", "value0": "4D-Lung",
        "criteriaType1": "DateRangeCriteria", "fromDate1": "03-02-1998", "toDate1": "04-12-1998",
        "size": 0})
    assert v4.json()["totalPatients"] == spring


def test_restrictions_for_simple_search(api):
    seed = requests.post(f"{api}/getRestrictionsForSimpleSearch",
                         data="criteriaType0=ThirdPartyAnalysis&value0=yes&sortField=subject"
                              "&sortDirection=descending&start=0&size=1000000",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert seed.status_code == 200 and seed.text in ("Yes", "No")
    non_commercial = requests.post(f"{api}/getRestrictionsForSimpleSearch", data={
        "criteriaType0": "CollectionCriteria", "value0": "NSCLC-Radiomics-Genomics"})
    assert non_commercial.text == "Yes"
    assert requests.post(f"{api}/getRestrictionsForSimpleSearch", data={
        "criteriaType0": "CollectionCriteria", "value0": "4D-Lung"}).text == "No"


@pytest.mark.slow
def test_manifests(api, server, truth):
    seed = requests.post(f"{api}/getManifestTextV2",
                         data="list=1.3.6.1.4.1.14519.5.2.1.6834.5010."
                              "100089621274100103247029607723&includeAnnotation=false",
                         headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert manifest_series(seed.text, server.url) == [
        "1.3.6.1.4.1.14519.5.2.1.6834.5010.100089621274100103247029607723"]
    third_party = requests.post(f"{api}/getManifestForSimpleSearch",
                                data="criteriaType0=ThirdPartyAnalysis&value0=yes&sortField="
                                     "subject&sortDirection=descending&start=0&size=100",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    uids = manifest_series(third_party.text, server.url)
    assert uids and set(uids) <= set(column(
        truth, "SELECT SeriesInstanceUID FROM truth WHERE analysis_result_id IS NOT NULL"))
    ispy = requests.post(f"{api}/getManifestFromPatientStudySeries",
                         data={"patientIDs": "ISPY1_1001"})
    assert sorted(manifest_series(ispy.text, server.url, annotation="true")) == sorted(column(
        truth, "SELECT SeriesInstanceUID FROM truth WHERE PatientID = 'ISPY1_1001'"))
    study = column(truth, "SELECT StudyInstanceUID FROM truth WHERE PatientID = 'ISPY1_1001'")[0]
    narrowed = requests.post(f"{api}/getManifestFromPatientStudySeries", data={
        "patientIDs": "ISPY1_1001,100_HM10395", "studyUIDs": study, "anyOrAll": "all",
        "includeAnnotation": "false"})
    assert sorted(manifest_series(narrowed.text, server.url)) == sorted(column(
        truth, "SELECT SeriesInstanceUID FROM truth WHERE StudyInstanceUID = ?", study))
    text = requests.post(f"{api}/GetManifestForTextSearch", data={"textValue": "CT"})
    ct = set(manifest_series(text.text, server.url))
    assert set(column(truth, "SELECT SeriesInstanceUID FROM truth WHERE Modality = 'CT'")) <= ct


def test_text_search_highlights_hits(api, truth):
    found = requests.post(f"{api}/getTextSearch", data={"textValue": "mouse"}).json()
    assert found and all(list(p) == ["subjectId", "project", "id", "totalNumberOfStudies",
                                     "totalNumberOfSeries", "hit", "studyIdentifiers"]
                         for p in found)
    assert all(re.fullmatch(r"<em>\w+</em>: .*<strong>mouse</strong>.*", p["hit"], re.I)
               for p in found)
    assert "<em>seriesDesc</em>: PDM <strong>Mouse</strong> Overview" in {p["hit"] for p in found}
    by_uid = requests.post(f"{api}/getTextSearch", data={"textValue": SEED_SERIES}).json()
    assert [p["subjectId"] for p in by_uid] == ["100_HM10395"]
    assert by_uid[0]["hit"] == f"<em>seriesInstanceUID</em>: <strong>{SEED_SERIES}</strong>"
    assert by_uid[0]["studyIdentifiers"][0]["seriesIdentifiers"] == [stable_pk(SEED_SERIES)]
    partial = requests.post(f"{api}/getTextSearch", data={"textValue": "mous"}).json()
    assert all("<strong>mous</strong>" in p["hit"].lower() for p in partial)  # whole words only


def test_study_and_image_drill_downs(api, server, truth):
    (study,) = requests.post(f"{api}/getStudyDrillDownWithSeriesIds",
                             data={"list": SEED_SERIES}).json()
    assert list(study) == ["studyId", "date", "description", "id", "study_id",
                           "excludeCommercial", "seriesList"]
    (series,) = study["seriesList"]
    images, size = rows(truth, "SELECT images, bytes FROM truth WHERE SeriesInstanceUID = ?",
                        SEED_SERIES)[0]
    assert (series["seriesUID"], series["numberImages"], series["exactSize"],
            series["project"], series["patientId"]) == (SEED_SERIES, images, size, "4D-Lung",
                                                       "100_HM10395")
    assert series["seriesPkId"] == stable_pk(SEED_SERIES) and series["studyPkId"] == study["id"]
    by_id = requests.post(f"{api}/getStudyDrillDown",
                          data={"list": [series["seriesPkId"], 262144]}).json()
    assert by_id == [study]
    sample = max(rows(truth, "SELECT SeriesInstanceUID, images FROM truth WHERE "
                             "collection_id = ?", DEMO_COLLECTION), key=lambda r: r[1])[0]
    images = requests.post(f"{api}/getImageDrillDown", data={"list": stable_pk(sample)}).json()
    assert sorted(i["sopInstanceUid"] for i in images) == sorted(column(
        truth, "SELECT SOPInstanceUID FROM local_instances WHERE SeriesInstanceUID = ?", sample))
    root = str(server.commons.archive.root)
    for image in images:
        assert image["imagePkId"] == stable_pk(image["sopInstanceUid"])
        assert image["fileURI"].startswith(f"{server.url}{SERVICES}/v4/getSingleImage?")
        assert root not in image["fileURI"] and "file:" not in image["fileURI"]
    assert requests.post(f"{api}/getImageDrillDown",
                         data={"list": stable_pk(SEED_SERIES)}).json() == []


def test_series_metadata2_csv(api, truth):
    quoted = column(truth, "SELECT SeriesInstanceUID FROM truth WHERE Manufacturer LIKE '%\"%' "
                           "LIMIT 1")[0]
    r = requests.post(f"{api}/getSeriesMetadata2", data={"list": f"{SEED_SERIES},{quoted}"})
    assert r.headers["content-type"].startswith("text/csv")
    header, *lines = r.text.split("\n")
    assert header == SEED_METADATA2_HEADER and lines[-1] == "" and len(lines) == 3
    seed = next(line for line in lines if SEED_SERIES in line)
    assert seed.startswith('"100_HM10395","') and '"4D-Lung","CT"' in seed
    maker = rows(truth, "SELECT Manufacturer FROM truth WHERE SeriesInstanceUID = ?", quoted)[0][0]
    assert '"' + maker.replace('"', '""') + '"' in next(line for line in lines if quoted in line)


def test_shared_list_duplicate_name_changes_nothing(api, server):
    name = f"dup-{uuid.uuid4().hex}"
    first = requests.post(f"{api}/createSharedList", data={
        "list": SEED_SERIES, "name": name, "description": "mine", "url": "https://myurl.com"})
    assert (first.status_code, first.text) == (200, "List created")
    other = "1.3.6.1.4.1.14519.5.2.1.6834.5010.100089621274100103247029607723"
    again = requests.post(f"{api}/createSharedList", data={"list": other, "name": name})
    assert (again.status_code, again.text) == (400, "Duplicate list name")
    saved = server.commons.accounts.get_shared_list(name)
    assert (saved.series_uids, saved.description, saved.url) == ([SEED_SERIES], "mine",
                                                                 "https://myurl.com")
    (study,) = requests.post(f"{api}/getCartData", data={"list": name}).json()
    assert [s["seriesUID"] for s in study["seriesList"]] == [SEED_SERIES]
    assert study["date"] == "1997-09-15"  # a date, where the drill-downs give epoch millis
    assert requests.post(f"{api}/getCartData", data={"list": f"nbia-{name}"}).json() == [study]


@pytest.mark.parametrize("name", ["\u00b2", "\u0661\u0662", "9" * 20, "no-such-cart"])
def test_cart_data_of_an_unknown_cart_is_empty(api, name):
    """Superscript digits pass str.isdigit() but are no series id int() can read."""
    r = requests.post(f"{api}/getCartData", data={"list": name})
    assert (r.status_code, r.json()) == (200, [])


def test_manufacturer_tree(api):
    tree = requests.get(f"{api}/getManufacturerTree").json()
    assert tree["data"] == {"criteria": "root", "value": "All Manufactures"}
    adac = next(m for m in tree["children"] if m["data"]["value"] == "ADAC")
    assert adac["data"]["criteria"] == "Manufacturer"
    assert all(c["data"]["criteria"] == "Model" and c["children"] == [] for c in adac["children"])


def test_updated_series_seed_date(api):
    with requests.get(f"{api}/v2/getUpdatedSeries?fromDate=08/08/2023", stream=True) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        head = ""
        for chunk in r.iter_content(4096, decode_unicode=True):  # the answer is ~0.5 GB
            head += chunk
            if len(head) > 4096:
                break
    assert head.startswith('[{"SeriesInstanceUID":"')
    date = re.search(r'"DateReleased":"(\d{4}-\d\d-\d\d) 00:00:00\.0"', head).group(1)
    assert date >= "2023-08-08"


# ----- versioned API formats -----------------------------------------------------------------
def test_formats_and_empty_answers(api):
    csv = requests.get(f"{api}/v4/getCollectionValues?format=CSV").text.split("\n")
    assert csv[0] == "Collection" and "4D-Lung" in csv and '"' not in csv[1]
    patients = requests.get(f"{api}/v1/getPatient?Collection=4D-Lung&format=csv").text
    assert patients.startswith('"PatientId","PatientName","PatientSex","EthnicGroup",'
                               '"Collection","Phantom","SpeciesCode","SpeciesDescription"\n')
    assert '"100_HM10395","","M","","4D-Lung","NO","337915000","Homo sapiens"\n' in patients
    xml = requests.get(f"{api}/v4/getModalityValues?Collection=4D-Lung&format=xml")
    assert xml.headers["content-type"].startswith("application/xml")
    assert xml.text.endswith("<Row><Modality>CT</Modality></Row>"
                             "<Row><Modality>RTSTRUCT</Modality></Row></Results>")
    page = requests.get(f"{api}/v2/getBodyPartValues?Collection=4D-Lung&format=html").text
    assert "<TH>BodyPartExamined</TH>" in page and "<TD>LUNG</TD>" in page
    for version in ("v1", "v2", "v4"):
        empty = requests.get(f"{api}/{version}/getSeries?Collection=NoSuchCollection")
        assert (empty.status_code, empty.content) == (200, b"")
    injected = requests.get(f"{api}/v1/getSeries", params={"Collection": "x' OR '1'='1"})
    assert (injected.status_code, injected.content) == (200, b"")


def test_xml_answers_are_well_formed(api):
    """XML 1.0 forbids the \\x01 some real IDC series descriptions hold, and element names
    that start with a digit (getSeriesMetaData's "3rd Party Analysis")."""
    uid, description = duckdb.connect().execute(
        f"SELECT SeriesInstanceUID, SeriesDescription FROM read_parquet("
        f"'{IDC / 'idc_index.parquet'}') WHERE contains(SeriesDescription, chr(1)) "
        f"ORDER BY 1 LIMIT 1").fetchone()
    for version in ("v1", "v4"):
        series = requests.get(f"{api}/{version}/getSeries",
                              params={"SeriesInstanceUID": uid, "format": "xml"})
        (row,) = ElementTree.fromstring(series.content)
        fields = {e.tag: e.text for e in row}
        assert fields["SeriesInstanceUID"] == uid
        assert fields["SeriesDescription"] == description.replace("\x01", "\ufffd")
        metadata = requests.get(f"{api}/{version}/getSeriesMetaData",
                                params={"SeriesInstanceUID": uid, "format": "xml"})
        (row,) = ElementTree.fromstring(metadata.content)
        assert uid in {e.text for e in row} and len(row) > 10


def test_version_date_styles_and_authorized(api):
    v4 = requests.get(f"{api}/v4/getSeries?SeriesInstanceUID={SEED_SERIES}").json()[0]
    v1 = requests.get(f"{api}/v1/getSeries?SeriesInstanceUID={SEED_SERIES}").json()[0]
    assert re.fullmatch(r"\d\d-\d\d-\d{4}", v4["StudyDate"]) and v4["Authorized"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d 00:00:00\.0", v1["StudyDate"]) and "Authorized" not in v1
    assert v4["StudyDate"] == "09-15-1997" and v1["StudyDate"] == "1997-09-15 00:00:00.0"
    assert v1["SeriesNumber"] == 500 and v1["ThirdPartyAnalysis"] == "NO"
    metadata = requests.get(f"{api}/v1/getSeriesMetaData?SeriesInstanceUID={SEED_SERIES}").json()
    assert metadata[0]["Series UID"] == SEED_SERIES and "File Location" not in metadata[0]
    # all text, as NBIA's (the Go Data Retriever ports read these into string fields)
    assert all(isinstance(v, str) for v in metadata[0].values())
    assert metadata[0]["Number of Images"] == str(v1["ImageCount"]) and \
        metadata[0]["File Size"] == str(v1["FileSize"])


def test_v4_refuses_unknown_parameters(api):
    r = requests.get(f"{api}/v4/getSeries?Collection=4D-Lung&Bogus=1")
    assert (r.status_code, r.text) == (400, (
        "Invalid query parameter: 'Bogus'. Allowed parameters are: [Collection, PatientID, "
        "StudyInstanceUID, SeriesInstanceUID, Modality, BodyPartExamined, Manufacturer, "
        "ManufacturerModelName, format]"))
    r = requests.get(f"{api}/v4/getPatient?Collection=4D-Lung&patient=1")
    assert r.text == ("Invalid query parameter: 'patient'. Allowed parameters are: "
                      "[Collection, PatientId, format]")
    assert requests.get(f"{api}/v1/getPatient?Collection=4D-Lung&Bogus=1").status_code == 200


# ----- restricted collections ----------------------------------------------------------------
SECRET_FILES = ("rtplan.dcm", "rtstruct.dcm")


@pytest.fixture(scope="module")
def restricted(tmp_path_factory):
    """A private server: CT_small.dcm public, two RT files in the restricted 'secret-coll'."""
    archive = Archive(tmp_path_factory.mktemp("restricted") / "archive")
    commons = Commons(archive)
    ingest(commons.catalog, [SAMPLES / "CT_small.dcm"], DEMO_COLLECTION)
    ingest(commons.catalog, [SAMPLES / f for f in SECRET_FILES], "secret-coll", restricted=True)
    publish(commons.catalog)
    with LiveServer(archive) as live:
        live.granted = live.user_token("granted-user")
        live.commons.accounts.grant("granted-user", "secret_coll")
        live.ungranted = live.user_token("ungranted-user")
        live.secret_series = column(duckdb.connect(), f"""
            SELECT DISTINCT SeriesInstanceUID FROM {local_items(archive.root)}
            WHERE collection_id = 'secret_coll'""")
        yield live


@pytest.mark.parametrize("who", ["guest", "bearer undefined", "nbia_guest token", "ungranted",
                                 "granted"])
def test_restricted_collection_rules(restricted, who):
    if who == "nbia_guest token":
        token = requests.post(f"{restricted.url}{TOKEN}", data={
            "username": "nbia_guest", "password": "", "grant_type": "password"}).json()
        headers = {"Authorization": f"Bearer {token['access_token']}"}
    else:
        headers = {"guest": {}, "bearer undefined": {"Authorization": "Bearer undefined"},
                   "ungranted": {"Authorization": f"Bearer {restricted.ungranted}"},
                   "granted": {"Authorization": f"Bearer {restricted.granted}"}}[who]
    api = f"{restricted.url}{SERVICES}"
    sees = who == "granted"
    secret = restricted.secret_series

    def get(path, **params):
        return requests.get(f"{api}/{path}", params=params, headers=headers)

    def post(path, **data):
        return requests.post(f"{api}/{path}", data=data, headers=headers)

    collections = {c["Collection"] for c in get("v4/getCollectionValues").json()}
    assert ("secret-coll" in collections) == sees and DEMO_COLLECTION in collections
    counts = {c["criteria"] for c in get("getCollectionValuesAndCounts").json()}
    assert ("secret-coll" in counts) == sees
    found = post("getSimpleSearchWithModalityAndBodyPartPaged", size="100").json()
    assert ("secret-coll" in {c["value"] for c in found["collections"]}) == sees
    assert ("secret-coll" in {p["project"] for p in found["resultSet"]}) == sees
    assert bool(get("v4/getSeries", Collection="secret-coll").content) == sees
    assert bool(get("v1/getSeriesSize", SeriesInstanceUID=secret[0]).content) == sees
    assert bool(post("getStudyDrillDownWithSeriesIds", list=secret).json()) == sees
    assert bool(post("getTextSearch", textValue=secret[0]).json()) == sees
    manifest = post("getManifestTextV2", list=secret).text
    assert (secret[0] in manifest) == sees
    shared = post("createSharedList", list=secret[0], name=f"s-{uuid.uuid4().hex}")
    assert shared.status_code == (200 if sees else 400)


# ----- OAuth2 tokens and logout -------------------------------------------------------------
def token(live: LiveServer, method: str = "POST", **fields) -> requests.Response:
    """A token request; POST sends the fields as a form, GET as a query string."""
    if method == "POST":
        return requests.post(f"{live.url}{TOKEN}", data=fields)
    return requests.get(f"{live.url}{TOKEN}", params=fields)


def works(live: LiveServer, access_token: str) -> int:
    return requests.get(f"{live.url}{SERVICES}/v4/getModalityValues?Collection=4D-Lung",
                        headers={"Authorization": f"Bearer {access_token}"}).status_code


@pytest.mark.parametrize("method,where,password", [
    ("POST", "form", ""), ("POST", "query", "anything"), ("GET", "query", ""),
    ("GET", "query", None)])
def test_oauth_guest_token_in_every_form(server, method, where, password):
    fields = {"username": "nbia_guest", "client_id": "NBIA", "grant_type": "password",
              **({} if password is None else {"password": password})}
    if where == "query" and method == "POST":
        r = requests.post(f"{server.url}{TOKEN}", params=fields)
    else:
        r = token(server, method, **fields)
    assert r.status_code == 200, r.text
    body = r.json()
    assert {"access_token", "token_type", "expires_in", "refresh_token", "refresh_expires_in",
            "scope"} <= set(body)
    assert (body["token_type"], body["expires_in"]) == ("bearer", 7200)
    assert works(server, body["access_token"]) == 200


def test_oauth_errors_are_the_specs(server):
    server.user_token("oauth-user", "right-password")
    for fields in ({"username": "oauth-user", "password": "wrong"},
                   {"username": "oauth-user"},
                   {"username": f"nobody-{uuid.uuid4().hex}", "password": "x"}):
        r = token(server, grant_type="password", **fields)
        assert (r.status_code, r.json()) == (401, {"error": "invalid_grant",
                                                   "error_description": "Invalid user credentials"})
    r = token(server, username="oauth-user", password="right-password",
              grant_type="client_credentials")
    assert (r.status_code, r.json()) == (400, {"error": "unsupported_grant_type"})
    assert token(server, "GET", username="oauth-user", password="right-password",
                 grant_type="password").status_code == 200


def test_oauth_refresh_and_logout(server):
    server.user_token("oauth-refresher", "pw-refresh")
    first = token(server, username="oauth-refresher", password="pw-refresh",
                  grant_type="password").json()
    second = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert second.status_code == 200
    pair = second.json()
    assert pair["expires_in"] == 7200 and pair["access_token"] != first["access_token"]
    assert pair["refresh_token"] != first["refresh_token"]
    assert works(server, first["access_token"]) == 401  # the old pair is revoked
    assert works(server, pair["access_token"]) == 200
    reused = token(server, grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    for method in ("GET", "POST"):
        access = token(server, "GET", username="oauth-refresher", password="pw-refresh",
                       grant_type="password").json()["access_token"]
        bye = requests.request(method, f"{server.url}/nbia-api/logout",
                               headers={"Authorization": f"Bearer {access}"})
        assert (bye.status_code, bye.text) == (200, "You Have Logged Out successfully.")
        assert works(server, access) == 401
        again = requests.request(method, f"{server.url}/nbia-api/logout",
                                 headers={"Authorization": f"Bearer {access}"})
        assert again.status_code == 401


def test_an_expired_token_is_401_and_refresh_gives_a_new_pair(small_archive):
    with LiveServer(Archive(small_archive.root, token_lifetime_s=1)) as live:
        pair = token(live, username="nbia_guest", password="").json()
        assert pair["expires_in"] == 1
        time.sleep(1.2)
        r = requests.get(f"{live.url}{SERVICES}/getModalityValuesAndCounts",
                         headers={"Authorization": f"Bearer {pair['access_token']}"})
        assert r.status_code == 401 and "expired" in r.text
        fresh = token(live, grant_type="refresh_token", refresh_token=pair["refresh_token"])
        assert works(live, fresh.json()["access_token"]) == 200


def test_bad_token_is_refused(api):
    r = requests.get(f"{api}/v4/getCollectionValues", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


# ----- malformed requests --------------------------------------------------------------------
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
SEARCH = "getSimpleSearchWithModalityAndBodyPartPaged"
MALFORMED = [
    ("GET", "v4/getSeriesSize", {}),
    ("GET", "v1/getSeriesSize", {}),
    ("GET", "v4/getSOPInstanceUIDs", {}),
    ("GET", "v2/getSeriesMetaData", {}),
    ("GET", "v4/NewPatientsInCollection", {"Date": "01-01-2020"}),
    ("GET", "v4/NewPatientsInCollection", {"Collection": "4D-Lung", "Date": "garbage"}),
    ("GET", "v4/NewStudiesInPatientCollection", {"Collection": "4D-Lung"}),
    ("GET", "v2/getUpdatedSeries", {}),
    ("GET", "v2/getUpdatedSeries", {"fromDate": "32/13/2023"}),
    ("GET", "v4/getUpdatedSeries", {"fromDate": "02-30-2023"}),
    ("GET", "v4/getUpdatedSeries", {"fromDate": "'; DROP TABLE items; --"}),
    ("GET", "v4/getPatientByCollectionAndModality", {"Collection": "4D-Lung"}),
    ("GET", "v4/getSeries", {"format": "pdf"}),
    ("GET", "v4/getSeries", {"Collection": "4D-Lung", "Bogus": "1"}),
    ("GET", "v1/getContentsByName", {}),
    ("GET", "v1/getSeries", {"Collection": "\x00"}),
    ("POST", SEARCH, {"start": "-1"}),
    ("POST", SEARCH, {"size": "-5"}),
    ("POST", SEARCH, {"start": "abc"}),
    ("POST", SEARCH, {"size": "1.5"}),
    ("POST", SEARCH, {"start": "99999999999999999999"}),
    ("POST", SEARCH, {"size": "1000001"}),
    ("POST", SEARCH, {"sortField": "bogus"}),
    ("POST", SEARCH, {"sortField": "subject; DROP TABLE items"}),
    ("POST", SEARCH, {"sortDirection": "sideways"}),
    ("POST", SEARCH, {"criteriaType0": "CollectionCriteria"}),
    ("POST", SEARCH, {"criteriaType0": "SpeciesCriteria"}),
    ("POST", SEARCH, {"criteriaType0": "DateRangeCriteria", "fromDate0": "13/45/2020",
                      "toDate0": "01/01/2021"}),
    ("POST", SEARCH, {"criteriaType0": "DateRangeCriteria", "fromDate0": "01/01/2021",
                      "toDate0": "01/01/2020"}),
    ("POST", SEARCH, {"criteriaType0": "DateRangeCriteria", "fromDate0": "01/01/2021"}),
    ("POST", SEARCH, {"criteriaType0": "MinNumberOfStudiesCriteria", "value0": "many"}),
    ("POST", SEARCH, {"criteriaType0": "MinNumberOfStudiesCriteria", "value0": "-3"}),
    ("POST", SEARCH, {"criteriaType0": "PhantomCriteria", "value0": "maybe"}),
    ("POST", SEARCH, {"criteriaType0": "ThirdPartyAnalysis", "value0": "2"}),
    ("POST", SEARCH, {"criteriaType0": "TimePointCriteria", "fromDay0": "1"}),
    ("POST", SEARCH, {"criteriaType0": "TimePointCriteria", "eventType0": "DIAGNOSIS"}),
    ("POST", SEARCH, {"criteriaType0": "TimePointCriteria", "eventType0": "DIAGNOSIS",
                      "fromDay0": "abc"}),
    ("POST", "getStudyDrillDown", {"list": "abc"}),
    ("POST", "getStudyDrillDown", {}),
    ("POST", "getImageDrillDown", {"list": "1;DROP TABLE items"}),
    ("POST", "getStudyDrillDownWithSeriesIds", {}),
    ("POST", "getManifestTextV2", {}),
    ("POST", "getManifestFromPatientStudySeries", {"anyOrAll": "all"}),
    ("POST", "getSeriesMetadata2", {}),
    ("POST", "createSharedList", {"list": SEED_SERIES}),
    ("POST", "createSharedList", {"name": "no-series"}),
    ("POST", "createSharedList", {"list": SEED_SERIES, "name": "x" * 300}),
    ("POST", "createSharedList", {"list": "9.9.9.no.such.series", "name": "unknown-series"}),
    ("POST", "getCartData", {}),
    ("POST", "getTextSearch", {}),
    ("POST", "getTextSearch", {"textValue": "x" * 300}),
    ("POST", "GetManifestForTextSearch", {"textValue": "   "}),
    ("POST", "getCollectionOrSeriesForDOI", {"CollectionOrSeries": "series"}),
    ("POST", "v4/getSeriesMetadata", {}),
    ("POST", "getManufacturerValuesAndCounts", {"criteriaType0": "ManufacturerCriteria"}),
]


@pytest.mark.parametrize("method,path,params", MALFORMED,
                         ids=[f"{i}-{p}" for i, (_, p, _) in enumerate(MALFORMED)])
def test_malformed_requests_are_refused(api, method, path, params):
    if method == "GET":
        r = requests.get(f"{api}/{path}", params=params)
    else:
        r = requests.post(f"{api}/{path}", data=params, headers=FORM)
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    assert r.text and "Internal server error" not in r.text


def test_unreadable_form_body_is_refused(api):
    r = requests.post(f"{api}/{SEARCH}", data=b"--x\r\nnot a part",
                      headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400

