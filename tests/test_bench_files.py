"""LesionBench on disk: reproducible files, consistent annotations, committed manifests, explain over a manifest."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.io import read_dicom
from medhdm.io.annotations import ImageGrid, load_annotation
from medhdm.io.manifest import load_manifest, validate_manifest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench2d(tmp_path_factory) -> Path:
    """The committed manifest's layout: cases in lesionbench2d/, the manifest beside that folder."""
    root = tmp_path_factory.mktemp("manifests")
    return write_lesionbench(
        root / "lesionbench2d", n_cases=8, spatial_dims=2, manifest_path=root / "lesionbench2d.json"
    )


def test_committed_manifests_are_what_the_generator_writes(bench2d, tmp_path):
    committed = json.loads((ROOT / "data_manifests" / "lesionbench2d.json").read_text())
    assert json.loads(bench2d.read_text()) == committed
    small3d = write_lesionbench(
        tmp_path / "lesionbench3d", n_cases=4, spatial_dims=3, manifest_path=tmp_path / "lesionbench3d.json"
    )
    committed3d = json.loads((ROOT / "data_manifests" / "lesionbench3d.json").read_text())
    assert json.loads(small3d.read_text()) == committed3d
    assert validate_manifest(small3d) == []
    first = load_manifest(small3d)[0]
    source = read_dicom(first["image"])
    assert source.pixels.shape == (24, 48, 48)
    # every slice's Spacing Between Slices (the template has one) is the distance its positions say
    positions = [np.asarray(ds.ImagePositionPatient, dtype=float) for ds in source.datasets]
    gap = np.linalg.norm(positions[1] - positions[0])
    assert {float(ds.SpacingBetweenSlices) for ds in source.datasets} == {gap} and gap == float(source.spacing[0])


def test_files_are_reproducible_and_annotations_agree(bench2d, tmp_path):
    again = write_lesionbench(tmp_path / "again", n_cases=8, spatial_dims=2)
    assert json.loads(again.read_text())["testing"][0]["image"] == "case000/image.dcm"  # default: manifest inside
    entries = load_manifest(bench2d)
    assert [e["label"] for e in entries].count(1) >= 2 and [e["label"] for e in entries].count(0) >= 2
    for entry in entries:
        case = Path(entry["image"]).parent
        other = again.parent / case.name
        assert other.is_dir()
        assert read_dicom(entry["image"]).first.SOPInstanceUID == read_dicom(other / "image.dcm").first.SOPInstanceUID
        grid = ImageGrid.from_dicom(read_dicom(entry["image"]))
        lesion = load_annotation(entry["lesion"], grid)
        assert (lesion.max() > 0) == bool(entry["label"])
        if (case / "lesion_seg.dcm").exists():
            np.testing.assert_array_equal(load_annotation(case / "lesion_seg.dcm", grid) > 0, lesion > 0)


def test_seg_files_pass_dciodvfy(bench2d):
    tool = shutil.which("dciodvfy")
    if tool is None:
        if os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1":
            pytest.fail("dciodvfy is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("dciodvfy not installed (apt-get install dicom3tools)")
    for seg in sorted(bench2d.parent.glob("case*/lesion_seg.dcm"))[:2]:
        report = subprocess.run([tool, str(seg)], capture_output=True, text=True, check=False)
        errors = [line for line in (report.stdout + report.stderr).splitlines() if line.startswith("Error")]
        assert errors == [], report.stdout + report.stderr


def test_explain_over_a_manifest_predicts_the_labels(bench2d, tmp_path, capsys):
    rc = main(
        [
            "explain",
            "--manifest",
            str(bench2d),
            "--method",
            "gxi",
            "--intensity-range=-1000,0",
            "--out",
            str(tmp_path / "maps"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "[8/8] case007: done" in out
    with open(tmp_path / "maps" / "explanations.csv") as f:
        rows = list(csv.DictReader(f))
    labels = {e["id"]: e["label"] for e in load_manifest(bench2d)}
    assert all(int(r["class_idx"]) == labels[r["case"]] for r in rows)  # the shipped model gets all 8 right
    assert len(list((tmp_path / "maps").glob("case*/case*_saliency.nii.gz"))) == 8


def test_manifest_outside_the_case_folder_tree_is_refused(tmp_path):
    with pytest.raises(ValueError, match="must lie in"):
        write_lesionbench(tmp_path / "a" / "cases", n_cases=1, manifest_path=tmp_path / "b" / "m.json")
