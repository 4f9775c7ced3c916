"""A 2D classifier over a 3D series: slice scores, the chosen slices explained, the maps stacked on the series grid."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medhdm.cli import main
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.explain import GradientInput
from medhdm.io.annotations import ImageGrid, load_annotation
from medhdm.io.manifest import load_manifest
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, SliceSelection, classifier_transforms, explain_image, load_image

SPEC = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """Three LesionBench 3D series (24 slices of 48 x 48), each with 1-3 lesions."""
    return write_lesionbench(
        tmp_path_factory.mktemp("lb3"), n_cases=3, spatial_dims=3, seed=1, lesion_weights=(0.0, 1.0, 1.0, 1.0)
    )


@pytest.fixture(scope="module")
def model():
    return load_model("default")  # the shipped 2D DenseNet, input 96 x 96


def _lesion(entry, image) -> np.ndarray:
    return load_annotation(entry["lesion"], ImageGrid.from_image(image))


def test_top_slices_hold_the_lesions_and_the_map_lies_on_the_series_grid(series, model):
    for entry in load_manifest(series):
        image = load_image(entry["image"])
        result = explain_image(image, GradientInput(model), SPEC, class_idx=1, slices="top:3")
        lesion = _lesion(entry, image)
        assert result.saliency.shape == tuple(image.shape[1:]) == (48, 48, 24)
        np.testing.assert_allclose(result.affine, np.asarray(image.affine))
        assert len(result.explained_slices) == 3 and result.slice_scores.shape == (24,)
        # the three slices with the highest lesion probability, and each holds lesion voxels
        assert set(result.explained_slices) == set(np.argsort(-result.slice_scores)[:3].tolist())
        for k in result.explained_slices:
            assert lesion[..., k].any(), (entry["id"], k)
            assert result.saliency[..., k].max() > 0
        others = [k for k in range(24) if k not in result.explained_slices]
        assert np.all(result.saliency[..., others] == 0)
        assert result.score == pytest.approx(result.slice_scores.max()) and result.slice_reduce == "max"
        assert result.model_input.shape == (3, 1, 96, 96) and result.model_saliency.shape == (3, 1, 96, 96)


def test_slice_scores_are_the_classifier_on_each_slice_alone(series, model):
    entry = load_manifest(series)[0]
    image = load_image(entry["image"])
    result = explain_image(image, GradientInput(model), SPEC, class_idx=1, slices="4,9")
    assert result.explained_slices == (4, 9)
    mean = explain_image(
        image, GradientInput(model), SPEC, class_idx=1, slices=SliceSelection("list", indices=(4, 9), reduce="mean")
    )
    assert mean.score == pytest.approx(result.slice_scores.mean())
    transforms = classifier_transforms(2, SPEC)
    for k in (0, 4, 17):
        one = transforms({"image": image[..., k]})["image"].as_tensor()[None].float()  # slice k as a 2D image
        with torch.no_grad():
            p = torch.softmax(model(one), dim=1)[0, 1].item()
        assert result.slice_scores[k] == pytest.approx(p, abs=1e-4)


def test_slice_options_that_cannot_work_are_refused(series, model):
    image = load_image(load_manifest(series)[0]["image"])
    with pytest.raises(ValueError, match="slices="):  # a 2D model on a series without slices points to the option
        explain_image(image, GradientInput(model), SPEC)
    with pytest.raises(ValueError, match="outside the series' 24 slices"):
        explain_image(image, GradientInput(model), SPEC, slices="3,24")
    with pytest.raises(ValueError, match="top:K"):
        SliceSelection.parse("top:x")
    with pytest.raises(ValueError, match="2D classifier on a 3D series"):
        explain_image(image, GradientInput(model), InputSpec((24, 48, 48)), slices="all")


def test_cli_explain_and_evaluate_by_slice(series, tmp_path, capsys):
    rc = main(
        [
            "explain",
            "--manifest",
            str(series),
            "--method",
            "gxi",
            "--slices",
            "top:2",
            "--class-idx",
            "1",
            "--intensity-range=-1000,0",
            "--out",
            str(tmp_path / "maps"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with open(tmp_path / "maps" / "explanations.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(r["slice_reduce"] == "max" and len(r["slices"].split()) == 2 for r in rows)
    with open(rows[0]["slice_scores"]) as f:
        per_slice = list(csv.DictReader(f))
    assert len(per_slice) == 24
    explained = [int(r["slice"]) for r in per_slice if r["explained"] == "1"]
    assert explained == [int(k) for k in rows[0]["slices"].split()]
    assert float(rows[0]["score"]) == pytest.approx(max(float(r["p_class1"]) for r in per_slice), abs=1e-4)
    # the map file has the series' geometry (that of the case's image.nii.gz)
    source = nib.load(Path(load_manifest(series)[0]["image"]).parent / "image.nii.gz")
    saved = nib.load(rows[0]["map"])
    assert saved.shape == source.shape
    np.testing.assert_allclose(saved.affine, source.affine, atol=1e-4)
    assert np.asarray(saved.dataobj)[..., explained].max() > 0

    rc = main(
        [
            "evaluate",
            "--manifest",
            str(series),
            "--methods",
            "gxi",
            "--slices",
            "top:2",
            "--no-faithfulness",
            "--intensity-range=-1000,0",
            "--out",
            str(tmp_path / "report"),
        ]
    )
    assert rc == 0, capsys.readouterr().err
    with open(tmp_path / "report" / "per_case.csv") as f:
        scored = list(csv.DictReader(f))
    assert [len(r["slices"].split()) for r in scored] == [2, 2, 2]
