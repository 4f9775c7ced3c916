"""The archive client's parts without a server: derived UIDs, the SR, credentials, addresses, the cache."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pacs_helpers import REQUIRE_VALIDATORS, bench_study

from medhdm.cli import main
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE
from medhdm.explain.registry import make_explainer
from medhdm.export import ReportContent, export, read_structured_report
from medhdm.models import load_model
from medhdm.models.identity import configuration_hash
from medhdm.pacs import (
    Credentials,
    DerivedUIDs,
    PacsOptions,
    credentials_from_env,
    explain_local_study,
    pacs_configuration,
    parse_destination,
)
from medhdm.pacs.cache import StudyCache
from medhdm.pacs.dicomweb import DicomwebArchive
from medhdm.pacs.dimse import DimseArchive
from medhdm.pacs.query import parse_query
from medhdm.pacs.secrets import SecretError
from medhdm.pipeline import InputSpec

OPTIONS = PacsOptions("default")


def test_derived_uids_are_valid_deterministic_and_follow_their_inputs():
    uids = DerivedUIDs("a" * 64, "1.2.3", "1.2.3.4", ["1.2.3.4.5", "1.2.3.4.6"])
    uid = uids("sc/series")
    assert re.fullmatch(r"2\.25\.(0|[1-9][0-9]*)", uid) and len(uid) <= 64 and int(uid[5:]) < 2**128
    assert uid == DerivedUIDs("a" * 64, "1.2.3", "1.2.3.4", ["1.2.3.4.6", "1.2.3.4.5"])("sc/series")
    assert uid != uids("pm/series")
    assert uid != DerivedUIDs("b" * 64, "1.2.3", "1.2.3.4", ["1.2.3.4.5", "1.2.3.4.6"])("sc/series")
    assert uid != DerivedUIDs("a" * 64, "1.2.3", "1.2.3.4", ["1.2.3.4.5"])("sc/series")
    expected = uids.expected(["sc", "seg", "sr"])
    assert expected["sc"] == [uids("sc/instance/1.2.3.4.5"), uids("sc/instance/1.2.3.4.6")]
    assert expected["seg"] == [uids("seg/instance")] and expected["sr"] == [uids("sr/instance")]
    assert expected["seg_findings"] == [uids("findings-seg/instance")]


@pytest.fixture(scope="module")
def study2d(tmp_path_factory):
    return bench_study(tmp_path_factory.mktemp("bench"), 2)


@pytest.fixture(scope="module")
def model2d():
    return load_model("default")


def _spec(model):
    return InputSpec(InputSpec.for_model(model).spatial_size, intensity_range=LESIONBENCH_INTENSITY_RANGE)


def _derived(outcome) -> dict[str, tuple[str, str]]:
    return {p.name: _uids(p) for p in outcome.derived}


def _uids(path) -> tuple[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)


def test_local_study_twice_gives_the_same_uids_and_another_method_new_ones(study2d, model2d, tmp_path):
    spec = _spec(model2d)
    explainer = make_explainer("gradientinput", model2d)
    first = explain_local_study(study2d["image"].parent, explainer, spec, tmp_path / "a", OPTIONS)
    again = explain_local_study(study2d["image"].parent, explainer, spec, tmp_path / "b", OPTIONS)
    assert first.status == again.status == "done" and first.study_uid == study2d["study_uid"]
    assert sorted(_derived(first)) == ["PM.dcm", "SC_0001.dcm", "SEG.dcm", "SEG_findings.dcm", "SR.dcm"]
    assert _derived(first) == _derived(again)
    # what the archive is asked for before explaining (to skip a study it holds) is every derived instance
    (series_uid,) = {_uids(p)[0] for p in study2d["files"]}
    sources = [_uids(p)[1] for p in study2d["files"]]
    uids = DerivedUIDs(
        configuration_hash(pacs_configuration(explainer, spec, OPTIONS)), first.study_uid, series_uid, sources
    )
    expected = {uid for group in uids.expected(OPTIONS.formats).values() for uid in group}
    assert expected == {sop for _, sop in _derived(first).values()}
    other = make_explainer("gradcam", model2d)
    third = explain_local_study(study2d["image"].parent, other, spec, tmp_path / "c", OPTIONS)
    assert not {u for pair in _derived(third).values() for u in pair} & {
        u for pair in _derived(first).values() for u in pair
    }


def test_structured_report_is_valid_and_reads_back(study2d, model2d, tmp_path):
    spec = _spec(model2d)
    explainer = make_explainer("gradientinput", model2d)
    outcome = explain_local_study(study2d["image"].parent, explainer, spec, tmp_path, OPTIONS)
    sr_path = next(p for p in outcome.derived if p.name == "SR.dcm")
    seg_uid = _uids(next(p for p in outcome.derived if p.name == "SEG.dcm"))[1]
    config = pacs_configuration(explainer, spec, OPTIONS)
    values = read_structured_report(sr_path)
    assert values["algorithm"] == "medhdm GradientInput"
    assert values["parameters"]["model name"] == "default"
    assert values["parameters"]["model weights sha256"] == config["model"]["weights_sha256"]
    assert values["parameters"]["configuration sha256"] == configuration_hash(config)
    assert "GradientInput" in values["parameters"]["method settings"]
    (result,) = outcome.results
    assert values["class_code"] == f"class{result['class_idx']}"
    assert values["class_meaning"] == ["no lesion", "lesion"][result["class_idx"]]
    assert values["probability"] == pytest.approx(result["score"])
    # the study's folder holds its lesion SEG: the SR carries the scores against it
    localisation = {"pointing_game", "auroc", "lesion_hit_rate", "energy_in_lesion"}
    faithfulness = {"deletion_auc", "insertion_auc", "deletion_auc_log", "insertion_auc_log"}
    faithfulness |= {"deletion_half", "insertion_half"}  # as medhdm evaluate reads them, on log-spaced shares
    assert set(values["scores"]) == localisation | faithfulness
    assert values["scores"] == pytest.approx(result["scores"])
    assert 0 <= values["scores"]["auroc"] <= 1 and values["scores"]["pointing_game"] in (0.0, 1.0)
    assert all(0 <= values["scores"][name] <= 1 for name in faithfulness)
    assert values["scores"]["deletion_half"] < 1 and values["scores"]["insertion_half"] < 1
    assert values["segment"] == seg_uid
    assert values["sources"] == [_uids(study2d["files"][0])[1]]
    # a share that is not defined (no evidence above the reference: NaN) is left out of the SR
    scores = {**result["scores"], "deletion_half": float("nan")}
    content = ReportContent(result["class_idx"], result["score"], config=config, scores=scores)
    source = pydicom.dcmread(study2d["files"][0])
    flat = np.full((source.Rows, source.Columns), 0.5)
    (undefined,) = export(study2d["files"][0], flat, tmp_path / "undefined", ["sr"], report=content)["sr"]
    kept = read_structured_report(undefined)["scores"]
    assert "deletion_half" not in kept and kept == pytest.approx(
        {k: v for k, v in values["scores"].items() if k != "deletion_half"}
    )
    tool = shutil.which("dciodvfy")
    if tool is None:
        if REQUIRE_VALIDATORS:
            pytest.fail("dciodvfy is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("dciodvfy not installed")
    run = subprocess.run([tool, str(sr_path)], capture_output=True, text=True, check=False)
    errors = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
    assert errors == [], run.stdout + run.stderr


def test_credentials_never_show_their_secret(tmp_path):
    secret = "hunter2-secret"
    basic = Credentials("basic", secret, user="alice", source="MEDHDM_PACS_PASSWORD")
    bearer = Credentials("bearer", secret, source="MEDHDM_PACS_TOKEN")
    for creds in (basic, bearer):
        assert secret not in repr(creds) + str(creds) + creds.describe()
    import requests

    session = requests.Session()
    bearer.apply(session)
    assert session.headers["Authorization"] == f"Bearer {secret}"
    archive = parse_destination("https://pacs.example/dicom-web", bearer)
    assert secret not in archive.describe() + repr(archive.credentials)
    assert credentials_from_env(environ={}) is None
    assert credentials_from_env(environ={"MEDHDM_PACS_TOKEN": secret}).kind == "bearer"
    got = credentials_from_env(environ={"MEDHDM_PACS_USER": "alice", "MEDHDM_PACS_PASSWORD": secret})
    assert (got.kind, got.user, got.secret) == ("basic", "alice", secret)
    with pytest.raises(SecretError, match="both"):
        credentials_from_env(environ={"MEDHDM_PACS_USER": "alice"})
    token = tmp_path / "token"
    token.write_text(secret + "\n")
    assert credentials_from_env(token_file=token, environ={}).secret == secret
    (tmp_path / "empty").write_text("")
    with pytest.raises(SecretError, match="empty"):
        credentials_from_env(token_file=tmp_path / "empty", environ={})
    bad = tmp_path / "auth"
    bad.write_text("no-colon")
    with pytest.raises(SecretError, match="user:password"):
        credentials_from_env(basic_auth_file=bad, environ={})


def test_addresses_are_parsed_and_checked():
    assert isinstance(parse_destination("https://pacs.example/dicom-web"), DicomwebArchive)
    dimse = parse_destination("ORTHANC@127.0.0.1:4242")
    assert isinstance(dimse, DimseArchive) and dimse.describe() == "DIMSE ORTHANC@127.0.0.1:4242"
    for text in ("ORTHANC@host", "host:4242", "A" * 17 + "@h:1", "X@h:70000", "ftp://x"):
        with pytest.raises(ValueError, match="AET@HOST:PORT"):
            parse_destination(text)
    with pytest.raises(ValueError, match="credentials in the URL"):
        parse_destination("https://alice:pw@pacs.example/dicom-web")
    assert parse_query(["Modality=CT", "StudyDate=20240101-"]) == {
        "ModalitiesInStudy": "CT",
        "StudyDate": "20240101-",
    }
    with pytest.raises(ValueError, match="unknown key"):
        parse_query(["PatientName=Doe"])


def test_bad_arguments_exit_2_before_any_work(tmp_path, capsys):
    base = ["pacs", "explain", "--dicomweb", "http://127.0.0.1:9/dicom-web", "--work", str(tmp_path)]
    assert main([*base, "--study", "1.2.3", "--push", "sc,png"]) == 2
    assert "--push" in capsys.readouterr().err
    assert main(base) == 2
    assert "--study" in capsys.readouterr().err
    assert main([*base, "--query", "Modality"]) == 2
    assert "KEY=VALUE" in capsys.readouterr().err


def test_cache_fetches_a_complete_series_once(tmp_path, study2d):
    cache = StudyCache(tmp_path)
    source = study2d["files"][0]
    uid = _uids(source)[1]
    calls = []

    def retrieve(folder):
        calls.append(folder)
        shutil.copy(source, folder / f"{uid}.dcm")
        return [folder / f"{uid}.dcm"]

    folder, fetched = cache.fetch("1.2.3", "1.2.3.4", [uid], retrieve)
    assert fetched and (folder / f"{uid}.dcm").is_file()
    assert cache.fetch("1.2.3", "1.2.3.4", [uid], retrieve) == (folder, False)
    assert len(calls) == 1
    with pytest.raises(ValueError, match="missing"):
        cache.fetch("1.2.3", "1.2.3.5", [uid, "1.2.3.9"], retrieve)
    assert not cache.complete("1.2.3", "1.2.3.5", [uid])
    assert not list(tmp_path.rglob("*.partial"))  # an incomplete retrieval leaves nothing behind
    with pytest.raises(ValueError, match="not a DICOM UID"):
        cache.series_folder("../etc", "1.2")


def test_without_an_annotation_the_report_has_no_scores(study2d, model2d, tmp_path):
    alone = tmp_path / "study"
    alone.mkdir()
    shutil.copy(study2d["files"][0], alone / "image.dcm")
    explainer = make_explainer("gradientinput", model2d)
    outcome = explain_local_study(alone, explainer, _spec(model2d), tmp_path / "w", OPTIONS)
    assert outcome.results[0]["scores"] is None
    assert read_structured_report(next(p for p in outcome.derived if p.name == "SR.dcm"))["scores"] == {}


def _segment_pixels(path) -> int:
    """Pixels of the thresholded map's segment (segment 1) of a SEG file (per-frame or shared segment numbers)."""
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    shared = ds.SharedFunctionalGroupsSequence[0]

    def number(item) -> int:
        group = item if "SegmentIdentificationSequence" in item else shared
        return int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)

    numbers = [number(item) for item in ds.PerFrameFunctionalGroupsSequence]
    return int(sum(frames[i].sum() for i, n in enumerate(numbers) if n == 1))


def test_the_seg_threshold_of_the_options_is_the_segs_threshold(study2d, model2d, tmp_path):
    # the PM holds the map on the source grid; the SEG must hold exactly its pixels >= seg_threshold
    spec, explainer = _spec(model2d), make_explainer("gradientinput", model2d)
    counts = {}
    for threshold in (0.3, 0.8):
        options = PacsOptions("default", ("pm", "seg"), seg_threshold=threshold)
        outcome = explain_local_study(study2d["image"].parent, explainer, spec, tmp_path / str(threshold), options)
        files = {p.name: p for p in outcome.derived}
        pm = pydicom.dcmread(files["PM.dcm"]).pixel_array
        counts[threshold] = _segment_pixels(files["SEG.dcm"])
        assert counts[threshold] == int((pm >= threshold).sum()) > 0
    assert counts[0.8] < counts[0.3]
    with pytest.raises(ValueError, match=r"^seg_threshold: expected a value in \(0, 1\], got 0"):
        PacsOptions("default", ("seg",), seg_threshold=0)


def test_explain_seg_threshold_reaches_the_seg_and_the_run_record(study2d, tmp_path, capsys):
    hashes = {}
    for threshold in ("0.5", "0.8"):
        out = tmp_path / threshold
        argv = ["explain", "--image", str(study2d["image"]), "--method", "gxi", "--out", str(out)]
        argv += ["--intensity-range=" + ",".join(str(v) for v in LESIONBENCH_INTENSITY_RANGE)]
        assert main([*argv, "--export", "pm,seg", "--seg-threshold", threshold]) == 0, capsys.readouterr().err
        (pm,) = out.glob("*/*_dicom/PM.dcm")
        seg = pm.with_name("SEG.dcm")
        assert _segment_pixels(seg) == int((pydicom.dcmread(pm).pixel_array >= float(threshold)).sum()) > 0
        hashes[threshold] = json.loads(next(out.glob("*/record.json")).read_text())["configuration_hash"]
    assert hashes["0.5"] != hashes["0.8"]
