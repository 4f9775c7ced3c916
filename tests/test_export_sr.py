"""The structured report beside SC, PM and SEG: ``export(..., "sr")`` and ``medhdm export --format sr``.

The SR is one object of the export's all-or-nothing set (listed in its manifest), references the SEG
of the same set, passes dciodvfy, and reads back with the values given; what ``medhdm export`` does
not know (the model and its settings) is left out, and what a user must give is refused clearly.
"""

from __future__ import annotations

import json

import numpy as np
import pydicom
import pytest
from validators import dciodvfy_errors

from medhdm.cli import main
from medhdm.data.dicom_series import write_series
from medhdm.export import ReportContent, export, read_structured_report
from medhdm.export.staging import read_manifest
from medhdm.io import read_dicom
from medhdm.testing import ct_volume

SCORES = {"pointing_game": 1.0, "auroc": 0.875, "deletion_auc_log": 0.25, "insertion_half": 0.125}


@pytest.fixture
def series(tmp_path):
    template, volume = ct_volume(depth=4)
    write_series(template, volume, tmp_path / "series", file_order_seed=1)
    source = read_dicom(tmp_path / "series")
    d, h, w = source.pixels.shape
    grid = np.indices((d, h, w)).astype(np.float64)
    saliency = np.exp(-((grid[1] - h / 3) ** 2 + (grid[2] - w / 2) ** 2) / (2 * (h / 10) ** 2))
    np.save(tmp_path / "map.npy", saliency)
    return source, saliency


def test_the_sr_is_written_with_sc_pm_seg_as_one_set_and_references_the_seg(series, tmp_path):
    source, saliency = series
    content = ReportContent(1, 0.9, "lesion", scores={**SCORES, "insertion_auc": float("nan")})
    out = tmp_path / "out"
    written = export(source, saliency, out, ["sc", "pm", "seg", "sr"], method="GradCAM", report=content)
    (sr_path,) = written["sr"]
    assert sr_path == out / "SR.dcm"
    current = out / ".medhdm-current"
    assert sorted(read_manifest(current.resolve())["files"]) == sorted(
        [p.name for paths in written.values() for p in paths]
    )  # the SR belongs to the published set, with the SCs, the PM and the SEG
    errors, report = dciodvfy_errors(sr_path)
    assert errors == [], report
    values = read_structured_report(sr_path)
    seg = pydicom.dcmread(written["seg"][0], stop_before_pixels=True)
    assert values["segment"] == seg.SOPInstanceUID
    assert values["sources"] == [
        str(ds.SOPInstanceUID) for ds in sorted(source.datasets, key=lambda d: d.InstanceNumber)
    ]
    assert (values["class_code"], values["class_meaning"], values["probability"]) == ("class1", "lesion", 0.9)
    assert values["scores"] == SCORES  # the undefined (NaN) score left out
    assert values["algorithm"] == "medhdm GradCAM" and values["parameters"] == {}
    sr = pydicom.dcmread(sr_path, stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.first.StudyInstanceUID
    assert int(sr.SeriesNumber) == int(pydicom.dcmread(written["seg"][0]).SeriesNumber) + 1


def test_an_sr_needs_its_content_and_is_never_deidentified(series, tmp_path):
    source, saliency = series
    with pytest.raises(ValueError, match="report: the SR"):
        export(source, saliency, tmp_path / "a", ["sr"])
    with pytest.raises(ValueError, match="the SR cannot be de-identified"):
        export(source, saliency, tmp_path / "b", ["seg", "sr"], report=ReportContent(0), deidentify_salt="s3cret")
    with pytest.raises(ValueError, match="scores: unknown names"):
        ReportContent(0, scores={"dice": 0.5})
    with pytest.raises(ValueError, match="probability"):
        ReportContent(0, 1.5)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def _export(series_dir, tmp_path, out: str, *extra: str) -> int:
    argv = ["export", "--image", str(series_dir), "--map", str(tmp_path / "map.npy"), "--out", str(tmp_path / out)]
    return main([*argv, *extra])


def test_cli_export_format_sr(series, tmp_path, capsys):
    series_dir = tmp_path / "series"
    (tmp_path / "scores.json").write_text(json.dumps(SCORES))
    rc = _export(series_dir, tmp_path, "sr", "--format", "seg,sr", "--class-label", "1", "--probability", "0.75")
    assert rc == 0, capsys.readouterr().err
    scores = str(tmp_path / "scores.json")
    rc = _export(series_dir, tmp_path, "scored", "--format", "sr", "--class-label", "0", "--scores", scores)
    assert rc == 0, capsys.readouterr().err
    for out in ("sr", "scored"):
        errors, report = dciodvfy_errors(tmp_path / out / "SR.dcm")
        assert errors == [], report
    with_seg = read_structured_report(tmp_path / "sr" / "SR.dcm")
    assert (with_seg["class_code"], with_seg["probability"], with_seg["scores"]) == ("class1", 0.75, {})
    assert with_seg["segment"] == pydicom.dcmread(tmp_path / "sr" / "SEG.dcm", stop_before_pixels=True).SOPInstanceUID
    scored = read_structured_report(tmp_path / "scored" / "SR.dcm")
    assert scored["probability"] is None and scored["scores"] == SCORES and scored["segment"] is None
    assert scored["algorithm"] == "medhdm HDM" and scored["class_meaning"] == "class 0"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "sr"], "--class-label: the SR (--format sr) needs the explained class's index"),
        (["--format", "sr", "--class-label", "lesion"], "--class-label: the SR"),
        (["--format", "sr", "--class-label", "1", "--probability", "1.5"], "--probability: expected a value in [0, 1]"),
        (["--format", "sc", "--probability", "0.5"], "--probability: only with --format sr"),
        (["--format", "sr", "--class-label", "1", "--scores", "{bad}"], "--scores {bad}: unknown names ['dice']"),
        (["--format", "sr", "--class-label", "1", "--scores", "{missing}"], "--scores: cannot read"),
        (["--format", "seg,sr", "--class-label", "1", "--deidentify-salt", "s3cret"], "the SR cannot be de-identified"),
    ],
)
def test_cli_export_format_sr_refuses_what_it_cannot_report(series, tmp_path, capsys, extra, message):
    (tmp_path / "bad.json").write_text(json.dumps({"dice": 0.5}))
    files = {"{bad}": str(tmp_path / "bad.json"), "{missing}": str(tmp_path / "missing.json")}
    extra = [files.get(item, item) for item in extra]
    message = message.replace("{bad}", files["{bad}"])
    assert _export(tmp_path / "series", tmp_path, "out", *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_explain_export_sr_carries_the_run_configuration(tmp_path, capsys):
    """``medhdm explain --export sr`` writes the model, the method's settings and the configuration hash that
    the case's run record holds (what ``medhdm export --format sr`` cannot know)."""
    from medhdm.data.bench_files import write_lesionbench

    write_lesionbench(tmp_path / "lb", n_cases=1, spatial_dims=2, lesion_weights=(0.0, 1.0, 0.0, 0.0))
    image = tmp_path / "lb" / "case000" / "image.dcm"
    argv = ["explain", "--image", str(image), "--method", "gxi", "--export", "seg,sr", "--out", str(tmp_path / "out")]
    assert main(argv) == 0, capsys.readouterr().err
    (sr_path,) = (tmp_path / "out").glob("*/*_dicom/SR.dcm")
    errors, text = dciodvfy_errors(sr_path)
    assert errors == [], text
    record = json.loads(next((tmp_path / "out").glob("*/record.json")).read_text())
    parameters = read_structured_report(sr_path)["parameters"]
    assert parameters["configuration sha256"] == record["configuration_hash"], (parameters, record)
    assert parameters["model name"] == "default" and json.loads(parameters["method settings"]), parameters
