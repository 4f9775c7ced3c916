"""Data manifests: MONAI datalist format, paths relative to the manifest, every problem reported at once."""

from __future__ import annotations

import json

import pytest
from pydicom.data import get_testdata_file

from medhdm.io.manifest import ManifestError, load_manifest, validate_manifest


def _write(path, data) -> None:
    path.write_text(json.dumps(data))


def test_manifest_resolves_relative_paths_with_monai(tmp_path):
    (tmp_path / "cases" / "a").mkdir(parents=True)
    (tmp_path / "cases" / "a" / "image.nii.gz").write_bytes(b"")
    (tmp_path / "cases" / "a" / "lesion.nii.gz").write_bytes(b"")
    _write(
        tmp_path / "m.json",
        {
            "name": "t",
            "classes": ["no lesion", "lesion"],
            "testing": [
                {
                    "id": "a",
                    "image": "cases/a/image.nii.gz",
                    "lesion": "cases/a/lesion.nii.gz",
                    "label": 1,
                    "class_idx": 1,
                },
                {"image": get_testdata_file("CT_small.dcm"), "label": 0},
            ],
        },
    )
    entries = load_manifest(tmp_path / "m.json")
    assert entries[0]["image"] == str(tmp_path / "cases" / "a" / "image.nii.gz")
    assert entries[0]["lesion"] == str(tmp_path / "cases" / "a" / "lesion.nii.gz")
    assert entries[0]["label"] == 1 and entries[0]["class_idx"] == 1
    assert entries[1]["id"] == "CT_small"  # default id: the image's name


def test_every_problem_is_reported_at_once(tmp_path):
    (tmp_path / "x.nii.gz").write_bytes(b"")
    _write(
        tmp_path / "bad.json",
        {
            "classes": ["a", "b"],
            "colour": "red",
            "testing": [
                {"id": "one", "image": "missing.nii.gz", "label": 1},
                {"id": "one", "image": "x.nii.gz", "lesion": "nolesion.nii.gz", "label": "yes"},
                {"image": "x.nii.gz", "class_idx": 5, "weight": 2},
                {"lesion": "x.nii.gz"},
            ],
        },
    )
    problems = validate_manifest(tmp_path / "bad.json")
    expected = [
        "unknown top-level key 'colour'",
        "entry 0 (one): image 'missing.nii.gz' does not exist",
        "entry 1 (one): id 'one' repeats entry 0",
        "entry 1 (one): lesion 'nolesion.nii.gz' does not exist",
        "entry 1 (one): 'label' must be a non-negative int, got 'yes'",
        "entry 2: unknown key 'weight'",
        "entry 2: 'class_idx' 5 is not a class index of 'classes' (2)",
        "entry 3: 'image' is required",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert len(problems) == len(expected)
    with pytest.raises(ManifestError, match="8 problem"):
        load_manifest(tmp_path / "bad.json")


def test_unreadable_or_empty_manifests(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    assert "not valid JSON" in validate_manifest(tmp_path / "broken.json")[0]
    _write(tmp_path / "empty.json", {"testing": []})
    assert validate_manifest(tmp_path / "empty.json") == ["'testing' must be a non-empty list of cases"]
    assert "no such manifest" in validate_manifest(tmp_path / "nothing.json")[0]
