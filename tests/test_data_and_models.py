"""Synthetic lesion cases, the shipped classifier and the command line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medhdm.cli import main
from medhdm.data import anatomy, make_case, make_dataset
from medhdm.models import accuracy_and_auc, load_default_classifier


def test_cases_are_seeded_and_annotated():
    a = make_dataset(3, 6, (48, 48))
    b = make_dataset(3, 6, (48, 48))
    for ca, cb in zip(a, b):
        assert np.array_equal(ca.image, cb.image) and np.array_equal(ca.lesions, cb.lesions)
    rng = np.random.default_rng(0)
    for k in (0, 1, 2, 3):
        case = make_case(rng, (64, 64), k, n_distractors=2)
        assert case.image.shape == (1, 64, 64) and case.image.dtype == np.float32
        assert case.label == int(k > 0)
        assert case.n_lesions == int(case.lesions.max())
        assert case.n_lesions >= min(k, 1)  # a lesion may split into components, never vanish
        if k:
            # lesions are brighter than their surroundings
            inside = case.image[case.lesions > 0].mean()
            assert inside > np.median(case.image)


def test_3d_cases_and_real_anatomy():
    vols = anatomy((16, 24, 24))
    assert len(vols) == 2 and all(v.shape == (16, 24, 24) for v in vols)
    assert all(0 <= v.min() and v.max() <= 1 and v.std() > 0.05 for v in vols)  # real content, windowed
    case = make_case(np.random.default_rng(1), (16, 24, 24), 2)
    assert case.image.shape == (1, 16, 24, 24) and case.n_lesions >= 1


def test_bad_case_arguments():
    with pytest.raises(ValueError, match="spatial_size: expected 2 or 3 axes"):
        make_case(np.random.default_rng(0), (8,), 1)
    with pytest.raises(ValueError, match="n_lesions: expected >= 0"):
        make_case(np.random.default_rng(0), (32, 32), -1)


def test_shipped_classifier_detects_lesions():
    model = load_default_classifier()
    assert model.medhdm_card["held_out"]["accuracy"] > 0.9
    cases = make_dataset(777, 60, (96, 96))
    acc, auc = accuracy_and_auc(model, cases)
    assert acc > 0.85 and auc > 0.9, (acc, auc)
    assert not model.training


def test_shipped_3d_classifier_detects_lesions():
    model = load_default_classifier("lesion_densenet3d")
    assert model.medhdm_card["held_out"]["accuracy"] > 0.9 and model.medhdm_card["held_out"]["auc"] > 0.95
    cases = make_dataset(778, 60, (24, 48, 48))
    acc, auc = accuracy_and_auc(model, cases)
    assert acc > 0.8 and auc > 0.9, (acc, auc)


def test_demo_command_writes_results(tmp_path, capsys):
    import pydicom

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--cases", "2", "--cases-3d", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| HDM |" in printed and "| GradientInput |" in printed and "3D, 1 cases" in printed
    for dims, methods in (
        (2, {"HDM", "MDM", "NeuroMask", "GradientInput", "Occlusion", "RISE", "GradCAM"}),
        (3, {"HDM", "GradientInput", "Occlusion"}),
    ):
        report = out / f"report_{dims}d"
        summary = json.loads((report / "summary.json").read_text())["summary"]
        assert {s["method"] for s in summary} == methods
        assert (report / "overlays.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        cases = 2 if dims == 2 else 1
        assert (report / "per_case.csv").read_text().count("\n") == 1 + cases * len(methods)
        page = (report / "report.html").read_text()
        assert "<h2>Cases" in page and 'id="case-case000"' in page and 'href="#case-case000"' in page
    sc = pydicom.dcmread(out / "export_dicom" / "SC_0001.dcm")
    source = pydicom.dcmread(out / "data" / "lesionbench2d" / "case000" / "image.dcm")
    assert sc.StudyInstanceUID == source.StudyInstanceUID and "HDM" in sc.SeriesDescription
    assert not list(out.rglob("*.tmp"))


def test_cli_bad_input_is_one_line(capsys):
    assert main(["demo", "--cases", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "medhdm demo: error: --cases: expected at least 1, got 0"


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    from medhdm.io.atomic import atomic_write

    target = tmp_path / "out.bin"
    atomic_write(target, b"first")

    def broken(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"first"  # the old file is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temporary left behind
