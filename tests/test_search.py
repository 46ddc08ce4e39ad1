"""The NBIA search core without HTTP: `CatalogSearch` over a small real archive (pydicom's
CT and MR samples public, its RT plan and structure set in a restricted collection), each
expected value read from the DICOM files themselves."""

from __future__ import annotations

import pydicom
import pytest

from conftest import SAMPLES
from imaging_commons.config import Archive
from imaging_commons.core.demo import DEMO_COLLECTION
from imaging_commons.core.errors import TooLarge, Unavailable
from imaging_commons.core.front_door import Commons
from imaging_commons.core.ingest import ingest, publish
from imaging_commons.core.search import Criteria, Sort, Species, TextHit
from imaging_commons.core.search.species import species_of

PUBLIC_FILES = ("CT_small.dcm", "MR_small.dcm")
SECRET_FILES = ("rtplan.dcm", "rtstruct.dcm")


def header(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(SAMPLES / name, stop_before_pixels=True, force=True)


@pytest.fixture(scope="module")
def commons(tmp_path_factory) -> Commons:
    commons = Commons(Archive(tmp_path_factory.mktemp("search") / "archive"))
    ingest(commons.catalog, [SAMPLES / f for f in PUBLIC_FILES], DEMO_COLLECTION)
    ingest(commons.catalog, [SAMPLES / f for f in SECRET_FILES], "secret-coll", restricted=True)
    publish(commons.catalog)
    return commons


@pytest.fixture(scope="module")
def granted(commons):
    user = commons.accounts.add_user("granted-user", "pw-secret-1")
    commons.accounts.grant("granted-user", "secret_coll")
    return user


def test_simple_search_finds_each_public_patient_with_its_study_and_series(commons):
    search = commons.search
    page = search.search(search.scope(None), Criteria(), Sort(), 0, 10)
    expected = {header(f).PatientID: header(f) for f in PUBLIC_FILES}
    assert page.total_patients == len(expected)
    assert sorted(p.patient_id for p in page.patients) == sorted(expected)
    for patient in page.patients:
        ds = expected[patient.patient_id]
        assert patient.collection == DEMO_COLLECTION
        assert (patient.total_studies, patient.total_series) == (1, 1)
        assert patient.modalities == [ds.Modality]
        assert [s.study_uid for s in patient.studies] == [ds.StudyInstanceUID]
    assert dict(page.modalities) == {header(f).Modality: 1 for f in PUBLIC_FILES}
    assert page.collections == [(DEMO_COLLECTION, len(expected))]


def test_criteria_sort_and_paging(commons):
    search = commons.search
    scope = search.scope(None)
    ct = header("CT_small.dcm")
    only_ct = search.search(scope, Criteria(modalities=["CT"]), Sort(), 0, 10)
    assert [p.patient_id for p in only_ct.patients] == [ct.PatientID]
    assert search.search(scope, Criteria(modalities=["XA"]), Sort(), 0, 10).total_patients == 0
    ids = sorted(header(f).PatientID for f in PUBLIC_FILES)
    backwards = search.search(scope, Criteria(), Sort("subject", descending=True), 0, 10)
    assert [p.patient_id for p in backwards.patients] == ids[::-1]
    second = search.search(scope, Criteria(), Sort(), 1, 1)
    assert second.total_patients == 2 and [p.patient_id for p in second.patients] == ids[1:]
    assert search.values(scope, "Modality", Criteria()) == sorted(
        header(f).Modality for f in PUBLIC_FILES)


def test_drill_down_and_images_of_a_series(commons):
    search = commons.search
    scope = search.scope(None)
    mr = header("MR_small.dcm")
    (study,) = search.drill_down(scope, Criteria(series_uids=[mr.SeriesInstanceUID]))
    assert study.study_uid == mr.StudyInstanceUID
    assert [s.series_uid for s in study.series] == [mr.SeriesInstanceUID]
    assert (study.series[0].image_count, study.series[0].modality) == (1, "MR")
    (image,) = search.images(scope, Criteria(series_uids=[mr.SeriesInstanceUID]))
    assert (image.sop_instance_uid, image.study_instance_uid) == (
        mr.SOPInstanceUID, mr.StudyInstanceUID)
    assert image.size == (SAMPLES / "MR_small.dcm").stat().st_size


def test_text_search_reports_the_field_and_spans_that_matched(commons):
    search = commons.search
    uid = header("CT_small.dcm").SeriesInstanceUID
    patients, series = search.text_search(search.scope(None), uid)
    assert series == [uid]
    assert [p.hit for p in patients] == [TextHit("SeriesInstanceUID", uid, ((0, len(uid)),))]
    patients, _ = search.text_search(search.scope(None), "ct")  # whole words, any case
    assert [p.hit.field if p.hit else None for p in patients] == ["Modality"]
    assert patients[0].hit == TextHit("Modality", "CT", ((0, 2),))


def test_a_restricted_collection_is_invisible_without_a_grant(commons, granted):
    search = commons.search
    secret = header("rtplan.dcm")
    for user, sees in ((None, False), (granted, True)):
        scope = search.scope(user)
        page = search.search(scope, Criteria(), Sort(), 0, 10)
        assert (secret.PatientID in {p.patient_id for p in page.patients}) is sees
        assert ("secret-coll" in {c.name for c in scope.visible_collections()}) is sees
        assert bool(search.drill_down(scope, Criteria(series_uids=[secret.SeriesInstanceUID]))) \
            is sees
        assert bool(search.text_search(scope, secret.SeriesInstanceUID)[1]) is sees
        assert bool(search.series(scope, Criteria(collections=["secret-coll"]))) is sees
        assert search.visible_series_uids(scope, [secret.SeriesInstanceUID]) == (
            [secret.SeriesInstanceUID] if sees else [])


def test_a_list_larger_than_allowed_is_refused_before_any_row(commons):
    search = commons.search
    batches = search.iter_series(search.scope(None), Criteria(), max_rows=1)
    with pytest.raises(TooLarge, match="2 series, more than the 1"):
        next(batches)
    assert sum(map(len, search.iter_series(search.scope(None), Criteria(), max_rows=2))) == 2


def test_nothing_published_is_unavailable(tmp_path):
    with pytest.raises(Unavailable):
        Commons(Archive(tmp_path / "empty")).search.scope(None)


def test_species_are_snomed_codes_with_the_catalogue_name():
    assert species_of("Human, Phantom") == ((Species("337915000", "Human"),), True)
    assert species_of("Mouse,Axolotl") == (
        (Species("447612001", "Mouse"), Species("Axolotl", "Axolotl")), False)
    assert species_of(None) == ((), False)
