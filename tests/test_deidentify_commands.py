"""``--deidentify`` on every command that writes DICOM: ``explain --export``, ``pacs explain``, ``pacs serve``.

The objects they write are the ones ``medhdm export --deidentify`` writes (the same
:mod:`medhdm.export.deidentify`): pseudonymous patient, remapped UIDs, Patient Identity
Removed, valid by ``dciodvfy``; the secret is in no output, record or configuration.
"""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import bench_study, instance_file, start_orthanc
from validators import dciodvfy_errors

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.export import Deidentification
from medhdm.export.deidentify import pseudonym, remap_uid

SALT = "a-secret-salt-for-the-tests-7781"


@pytest.fixture(scope="module")
def case2d(tmp_path_factory):
    root = tmp_path_factory.mktemp("deid-bench")
    write_lesionbench(root / "lb2", n_cases=1, spatial_dims=2, lesion_weights=(0.0, 1.0, 0.0, 0.0))
    return root / "lb2" / "case000" / "image.dcm"


def _explain(image: Path, out: Path, *extra: str) -> int:
    argv = ["explain", "--image", str(image), "--method", "gxi", "--intensity-range=-1000,0"]
    return main([*argv, "--export", "sc,pm,seg", "--out", str(out), *extra])


def _every_byte(folder: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file())


def _check_deidentified(datasets: list[pydicom.Dataset], source: pydicom.Dataset) -> None:
    for ds in datasets:
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.PatientID == pseudonym(str(source.PatientID), SALT)
        assert str(ds.PatientName) != str(source.PatientName)
        assert ds.StudyInstanceUID == remap_uid(str(source.StudyInstanceUID), SALT)
        assert "DeidentificationMethodCodeSequence" in ds


def test_explain_export_deidentifies_every_object(case2d, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MEDHDM_DEIDENTIFY_SALT", SALT)
    source = pydicom.dcmread(case2d)
    out = tmp_path / "out"
    assert _explain(case2d, out, "--deidentify") == 0, capsys.readouterr().err
    files = sorted((out / "image" / "image_dicom").glob("*.dcm"))
    assert {f.name[:2] for f in files} == {"SC", "PM", "SE"}
    datasets = [pydicom.dcmread(f) for f in files]
    _check_deidentified(datasets, source)
    for f in files:
        errors, report = dciodvfy_errors(f)
        assert not errors, report
    everything = _every_byte(out)
    assert SALT.encode() not in everything
    assert str(source.PatientName).encode() not in everything
    record = json.loads((out / "image" / "record.json").read_text())
    assert record["configuration"]["extra"]["deidentify"]["retain_dates"] is False

    # the same command without --deidentify is another configuration: refused without --overwrite
    assert _explain(case2d, out) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert _explain(case2d, out, "--overwrite") == 0
    identified = pydicom.dcmread(sorted((out / "image" / "image_dicom").glob("SC*.dcm"))[0])
    assert identified.PatientID == source.PatientID


def test_explain_retain_dates_keeps_the_study_date(case2d, tmp_path, monkeypatch):
    salt_file = tmp_path / "salt.txt"
    salt_file.write_text(SALT)
    source = pydicom.dcmread(case2d)
    assert source.StudyDate
    out = tmp_path / "out"
    assert _explain(case2d, out, "--deidentify-salt-file", str(salt_file), "--retain-dates") == 0
    sc = pydicom.dcmread(sorted((out / "image" / "image_dicom").glob("SC*.dcm"))[0])
    assert sc.StudyDate == source.StudyDate and sc.PatientID == pseudonym(str(source.PatientID), SALT)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["explain", "--deidentify"], "--deidentify: only with --export"),
        (["explain", "--retain-dates"], "--retain-dates: only with de-identification"),
        (["explain", "--export", "sc", "--deidentify-salt", "x", "--deidentify-salt-file", "f"], "give one of"),
        (["explain", "--export", "sc", "--deidentify"], "MEDHDM_DEIDENTIFY_SALT"),
    ],
)
def test_explain_deidentify_arguments_are_checked_before_any_work(case2d, tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.delenv("MEDHDM_DEIDENTIFY_SALT", raising=False)
    out = tmp_path / "out"
    rc = main([*argv, "--image", str(case2d), "--method", "gxi", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and message in err, err
    assert not out.exists()


@pytest.mark.parametrize("command", [["pacs", "explain", "--dicomweb", "http://127.0.0.1:9"], ["pacs", "serve"]])
def test_the_sr_cannot_be_pushed_deidentified(tmp_path, monkeypatch, capsys, command):
    """The Basic Profile does not keep an SR's Content Sequence: refused before the model loads or a port opens."""
    monkeypatch.setenv("MEDHDM_DEIDENTIFY_SALT", SALT)
    extra = (
        ["--study", "1.2.3"]
        if command[1] == "explain"
        else ["--spool", str(tmp_path / "spool"), "--calling-aet", "X", "--destination", "http://127.0.0.1:9"]
    )
    rc = main([*command, *extra, "--push", "sc,pm,seg,sr", "--deidentify", "--model", "no-such-model.pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "--push: the SR cannot be de-identified" in err, err
    assert not (tmp_path / "spool").exists()


def _study_files(orthanc, study_uid: str) -> list[pydicom.Dataset]:
    return [
        instance_file(orthanc, i)
        for series in orthanc.series_of(study_uid)
        for i in orthanc.instances_of_series(series["id"])
    ]


def test_pacs_explain_and_the_service_push_deidentified_results_into_the_deidentified_study(
    tmp_path, monkeypatch, capsys
):
    """``pacs explain --deidentify``: SC, PM and SEG land in the study whose UID the salt gives, none in the
    source study; a second run finds them there and skips the study. The service's step does the same."""
    from medhdm.explain.registry import make_explainer
    from medhdm.models import load_default_classifier
    from medhdm.pacs.dicomweb import DicomwebArchive
    from medhdm.pacs.serve import explain_and_push
    from medhdm.pacs.workflow import PacsOptions
    from medhdm.pipeline import InputSpec

    monkeypatch.setenv("MEDHDM_DEIDENTIFY_SALT", SALT)
    study = bench_study(tmp_path / "bench", 2)
    source = pydicom.dcmread(study["files"][0])
    anonymous_study = remap_uid(study["study_uid"], SALT)
    orthanc = start_orthanc(tmp_path / "orthanc")
    try:
        orthanc.upload(study["files"])
        before = orthanc.instances_count()
        argv = ["pacs", "explain", "--dicomweb", orthanc.dicomweb_url, "--study", study["study_uid"]]
        argv += ["--method", "gradientinput", "--intensity-range=-1000,0", "--push", "sc,pm,seg", "--deidentify"]
        assert main([*argv, "--work", str(tmp_path / "w1")]) == 0
        assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
        assert orthanc.instances_count() == before + len(study["files"]) + 3  # SCs, PM, SEG, findings SEG
        assert len(_study_files(orthanc, study["study_uid"])) == len(study["files"])  # nothing in the source study
        derived = _study_files(orthanc, anonymous_study)
        assert sorted(str(ds.Modality) for ds in derived) == sorted(["OT"] * len(study["files"]) + ["OT", "SEG", "SEG"])
        _check_deidentified(derived, source)
        assert main([*argv, "--work", str(tmp_path / "w2")]) == 0
        assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
        assert orthanc.instances_count() == before + len(study["files"]) + 3

        # pacs serve's step: a received study explained, de-identified and pushed (here: another salt)
        other = Deidentification("another-salt-55")
        model = load_default_classifier()
        spec = InputSpec((96, 96), intensity_range=(-1000.0, 0.0))
        explainer = make_explainer("gradientinput", model)
        options = PacsOptions("default", formats=("sc", "seg"), deidentify=other)
        process = explain_and_push(explainer, spec, options, DicomwebArchive(orthanc.dicomweb_url))
        outcome = process(study["study_uid"], study["image"].parent, tmp_path / "serve-work")
        assert outcome.pushed == len(study["files"]) + 2  # the SCs, the SEG and the findings SEG
        pushed = _study_files(orthanc, other.uid(study["study_uid"]))
        assert len(pushed) == len(study["files"]) + 2
        assert all(ds.PatientID == pseudonym(str(source.PatientID), "another-salt-55") for ds in pushed)
    finally:
        orthanc.stop()
