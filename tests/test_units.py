"""HDM in physical units: the spacing read or given, mm settings turned into voxels, the file pipeline passing it."""

from __future__ import annotations

import csv

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from medhdm import HDM, GradientInput
from medhdm.explain.units import SHIPPED_GRIDS, NativeGrid, PhysicalSettings, input_spacing
from medhdm.pipeline import InputSpec, classifier_spacing, explain_image, load_image
from medhdm.study import StudyCase, explain_study
from medhdm.testing import BlobDetector, plant
from medhdm.transforms import Explaind

LESION_2D = [(slice(6, 10), slice(20, 25))]


def _case(shape=(32, 32), boxes=None):
    x, _ = plant(shape, boxes or LESION_2D)
    return x, BlobDetector(len(shape)).calibrate(x)


def _hdm(model, **kwargs) -> HDM:
    return HDM(model, max_stages=2, **kwargs).set_steps(2)


def _same(a, b) -> None:
    assert torch.equal(a.saliency, b.saliency)
    assert list(a.masks) == list(b.masks) and all(torch.equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert torch.equal(a.reference_score, b.reference_score)


def test_spacing_is_read_from_a_metatensor_and_recorded():
    x, model = _case()
    hdm = _hdm(model, units=NativeGrid(spacing=(0.5, 0.8), size=(32, 32)))
    image = MetaTensor(x, affine=torch.diag(torch.tensor([0.5, 0.8, 1.0, 1.0], dtype=torch.float64)))
    result = hdm.explain(image, 1)
    assert result.spacing.tolist() == [[0.5, 0.8]]
    _same(result, _hdm(model, units=None).explain(x, 1))  # the native grid: the voxel settings exactly
    assert hdm.explain(x, 1).spacing is None  # a plain tensor: unknown
    assert hdm.explain(MetaTensor(x), 1).spacing is None  # MONAI's default identity affine: unknown
    batch = MetaTensor(torch.cat([x, x]), affine=torch.diag(torch.tensor([2.0, 3.0, 1.0, 1.0]))[None].repeat(2, 1, 1))
    assert np.allclose(input_spacing(batch), [[2.0, 3.0], [2.0, 3.0]])  # a collated batch: one affine per image
    assert _hdm(model, units=None).explain(image, 1).spacing is None  # units=None: voxels whatever the input
    assert GradientInput(model).explain(image, 1).spacing is None  # methods without physical units


def test_mm_defaults_equal_the_voxel_defaults_at_the_shipped_grid():
    x, model = _case((96, 96), [(slice(20, 30), slice(60, 72))])
    hdm = _hdm(model)
    at_native = hdm.explain(x, 1, spacing=SHIPPED_GRIDS[2].spacing)
    _same(at_native, hdm.explain(x, 1))
    assert "stage1/benchmark/6x6" in at_native.masks
    settings = hdm.physical_settings(2)
    assert settings.benchmark_cells_mm[0] == pytest.approx((250 / 6, 250 / 6))  # 16 voxels of 2.604 mm
    assert settings.smooth_mm == pytest.approx((7.8125, 7.8125)) and settings.area_mm == pytest.approx(1250)
    assert settings.blur_mm == pytest.approx((12.5, 12.5))
    assert hdm.physical_settings(3).smooth_mm == pytest.approx((4.5, 7.8125, 7.8125))  # 1.5 voxels on every axis


def test_mm_settings_equal_the_voxel_settings_at_a_3d_native_grid():
    x, model = _case((24, 48, 48), [(slice(8, 12), slice(10, 18), slice(30, 38))])
    _same(_hdm(model).explain(x, 1, spacing=SHIPPED_GRIDS[3].spacing), _hdm(model).explain(x, 1))  # 3 x 5.2 x 5.2 mm
    x, model = _case((8, 16, 16), [(slice(2, 5), slice(3, 7), slice(9, 13))])
    grid = NativeGrid(spacing=(3.0, 0.7, 0.7), size=(8, 16, 16))
    settings = {"benchmark_grids": (4,), "auxiliary_grids": (2,)}
    _same(
        _hdm(model, units=grid, **settings).explain(x, 1, spacing=(3.0, 0.7, 0.7)),
        _hdm(model, **settings).explain(x, 1),
    )


def test_grids_and_gaussians_follow_the_spacing():
    # The same 250 mm field of view at twice the voxels: the same grids, Gaussians twice as wide in voxels.
    hdm = HDM(BlobDetector(2))
    units = hdm.physical_settings(2)
    fine = (250 / 192, 250 / 192)
    assert units.grid_shapes("benchmark", (192, 192), fine) == [(6, 6), (12, 12)]
    assert units.grid_shapes("auxiliary", (192, 192), fine) == [(24, 24), (48, 48)]
    assert units.sigma(fine) == (6.0, 6.0) and units.blur_sigma(fine) == (9.6, 9.6)
    assert units.area_share((192, 192), fine) == pytest.approx(0.02)  # the same 1250 mm^2
    x = torch.zeros(1, 1, 192, 192)
    assert hdm._sigma(x) == 6.0 and hdm._sigma(x, fine) == (6.0, 6.0)
    # Twice the field of view at the native spacing: twice the cells, the same Gaussians in voxels,
    # a quarter of the image.
    native = SHIPPED_GRIDS[2].spacing
    assert units.grid_shapes("benchmark", (192, 192), native) == [(12, 12), (24, 24)]
    assert units.sigma(native) == (3.0, 3.0) and units.area_share((192, 192), native) == pytest.approx(0.005)


def test_the_grid_ladder_moves_finer_where_a_benchmark_grid_would_not_fit():
    hdm = HDM(BlobDetector(3))
    # S/16 on 16 voxels is 1 cell: the whole ladder an octave finer, not that axis clipped to 2 (2 x 2 x 2)
    assert hdm.grid_shapes((16, 32, 32)) == ([(2, 4, 4), (4, 8, 8)], [(8, 16, 16), (16, 32, 32)])
    x, model = _case((16, 32, 32), [(slice(6, 10), slice(10, 16), slice(18, 24))])
    masks = _hdm(model).explain(x, 1).masks
    assert "stage1/benchmark/2x4x4" in masks and "stage1/benchmark/2x2x2" not in masks
    # in mm: 16 slices of 3 mm hold one 48 mm cell
    assert hdm.grid_shapes((16, 32, 32), (3.0, 250 / 48, 250 / 48))[0] == [(2, 4, 4), (4, 8, 8)]
    # the shipped models' inputs fit as asked (24 slices: 1.5 cells, rounded to 2): their grids do not move
    assert hdm.grid_shapes((24, 48, 48)) == ([(2, 3, 3), (3, 6, 6)], [(6, 12, 12), (12, 24, 24)])
    assert hdm.grid_shapes((24, 48, 48), SHIPPED_GRIDS[3].spacing) == hdm.grid_shapes((24, 48, 48))
    assert hdm.grid_shapes((96, 96)) == ([(6, 6), (12, 12)], [(24, 24), (48, 48)])
    assert hdm.grid_shapes((96, 96), SHIPPED_GRIDS[2].spacing) == hdm.grid_shapes((96, 96))
    assert hdm.grid_shapes((64, 64)) == ([(4, 4), (8, 8)], [(16, 16), (32, 32)])  # the 2D segmenter's
    assert hdm.grid_shapes((1, 32, 32))[0] == [(1, 2, 2), (1, 4, 4)]  # an axis of 1 voxel holds 1 cell


def test_anisotropic_spacing_gives_anisotropic_grids_and_gaussians():
    x, model = _case()
    hdm = _hdm(model, units=NativeGrid(spacing=(1.0, 1.0), size=(32, 32)), benchmark_grids=(16,), auxiliary_grids=(4,))
    result = hdm.explain(x, 1, spacing=(1.0, 2.0))  # axis 1 spans 64 mm: twice the cells of axis 0
    assert {"stage1/benchmark/2x4", "stage1/auxiliary/8x16"} <= set(result.masks)
    assert hdm._sigma(x, (1.0, 2.0)) == (1.0, 0.5)  # 1/32 of 32 voxels = 1 mm: 1 and 0.5 voxels
    assert hdm.physical_settings(2).blur_sigma((1.0, 2.0)) == (1.6, 0.8)


def test_images_of_different_spacing_in_one_batch_equal_them_one_by_one():
    x, model = _case()
    hdm = _hdm(model, units=NativeGrid(spacing=(1.0, 1.0), size=(32, 32)))
    coarse, fine = (1.0, 1.0), (0.5, 0.5)
    both = hdm.explain(torch.cat([x, x, x]), [1, 1, 1], spacing=[fine, coarse, fine])
    alone = [hdm.explain(x, 1, spacing=s) for s in (fine, coarse)]
    # CPU kernels differ with the batch size at float precision (as in the contract tests)
    for i, one in enumerate([alone[0], alone[1], alone[0]]):
        assert torch.allclose(both.saliency[i], one.saliency[0], atol=1e-3)
    assert not torch.allclose(alone[0].saliency, alone[1].saliency, atol=1e-3)  # the grids did differ
    assert both.spacing.tolist() == [list(fine), list(coarse), list(fine)]
    grid = {k.split("/")[-1] for k in both.masks if k.startswith("stage1/benchmark")}
    assert grid == {"2x2", "4x4"} and len(both.stages) == max(len(a.stages) for a in alone)


@pytest.mark.parametrize(
    "spacing, match",
    [
        ((0.0, 1.0), "finite voxel sizes > 0"),
        ((-1.0, 1.0), "finite voxel sizes > 0"),
        ((float("nan"), 1.0), "finite voxel sizes > 0"),
        ((1.0, 1.0, 1.0), "expected 2 values in mm"),
        ([[1.0, 1.0], [1.0, 1.0]], r"got shape \(2, 2\)"),
        ("1mm", "expected 2 values in mm"),
    ],
)
def test_bad_spacing_is_a_clear_error(spacing, match):
    x, model = _case()
    for explainer in (_hdm(model), GradientInput(model)):  # every method refuses it, also those that ignore it
        with pytest.raises(ValueError, match=f"spacing: .*{match}"):
            explainer.explain(x, 1, spacing=spacing)


def test_bad_units_are_clear_errors():
    model = BlobDetector(2)
    with pytest.raises(ValueError, match="units: expected 'shipped', None"):
        HDM(model, units="mm")
    with pytest.raises(ValueError, match="NativeGrid: expected 2 or 3 spacings"):
        NativeGrid(spacing=(1.0,), size=(32,))
    with pytest.raises(ValueError, match="area_mm: expected None or a positive"):
        PhysicalSettings(benchmark_cells_mm=(10.0,), auxiliary_cells_mm=(2.0,), area_mm=-1.0)
    x, _ = _case()
    with pytest.raises(ValueError, match="units: a 3D NativeGrid for 2D inputs"):
        HDM(model, units=NativeGrid((1.0, 1.0, 1.0), (8, 8, 8))).explain(x, 1, spacing=(1.0, 1.0))


def test_units_written_as_json_as_the_cli_and_settings_records_give_them():
    """``--method-args '{"units": ...}'`` and an explainer's settings() record give the same HDM as the dataclasses."""
    import json

    from medhdm.explain.registry import make_explainer

    x, model = _case()
    grid = NativeGrid(spacing=(0.5, 0.8), size=(32, 32))
    mm = PhysicalSettings(benchmark_cells_mm=(8.0, (4.0, 6.0)), auxiliary_cells_mm=(2.0,), smooth_mm=(1.0, 1.5))
    for units in (grid, mm, {2: grid, 3: SHIPPED_GRIDS[3]}):
        record = json.loads(json.dumps(HDM(model, units=units).settings()))["units"]  # as a JSON file holds it
        assert HDM(model, units=record).units == units
    cli = make_explainer("hdm", model, units=json.loads('{"spacing": [0.5, 0.8], "size": [32, 32]}'))
    assert cli.units == grid
    _same(
        make_explainer("hdm", model, steps=2, max_stages=2, units={"spacing": [0.5, 0.8], "size": [32, 32]}).explain(
            x, 1, spacing=(1.0, 1.0)
        ),
        _hdm(model, units=grid).explain(x, 1, spacing=(1.0, 1.0)),
    )
    assert HDM(model, units={"2": {"spacing": [1, 1], "size": [32, 32]}}).units == {2: NativeGrid((1.0, 1.0), (32, 32))}
    with pytest.raises(ValueError, match=r"units: NativeGrid.size: expected positive ints"):
        HDM(model, units={"spacing": [1.0, 1.0], "size": [0, 32]})
    with pytest.raises(ValueError, match=r"units: .*benchmark_cells_mm: expected one positive size"):
        HDM(model, units={"benchmark_cells_mm": [-1.0], "auxiliary_cells_mm": [2.0]})
    with pytest.raises(ValueError, match="units: expected 'shipped', None"):
        HDM(model, units={"spacing": [1.0, 1.0]})  # a grid without its size


def test_explicit_mm_settings():
    x, model = _case()
    units = PhysicalSettings(benchmark_cells_mm=(8.0,), auxiliary_cells_mm=(2.0,), smooth_mm=1.0, blur_mm=2.0)
    result = _hdm(model, units=units).explain(x, 1, spacing=(0.5, 0.5))  # 16 mm across
    assert {"stage1/benchmark/2x2", "stage1/auxiliary/8x8"} <= set(result.masks)
    with torch.no_grad():  # the blur reference of 2 mm is 4 voxels wide
        expected = float(torch.softmax(model(_blurred(x, 4.0)), 1)[0, 1])
    assert result.reference_score.item() == pytest.approx(expected, rel=1e-5)


def _blurred(x, sigma):
    from medhdm.explain.reference import gaussian_blur

    return gaussian_blur(x, sigma).detach()


def _nifti(tmp_path):
    """A 2D NIfTI of 40 x 30 voxels (MONAI order: 40 columns of 0.5 mm, 30 rows of 0.8 mm) with a bright spot."""
    image = np.full((40, 30), 0.1, dtype=np.float32)
    image[20:24, 8:12] = 1.0
    path = tmp_path / "case.nii.gz"
    nib.save(nib.Nifti1Image(image, np.diag([0.5, 0.8, 1.0, 1.0])), path)
    return path


def test_the_file_pipeline_passes_the_classifier_inputs_spacing(tmp_path):
    path = _nifti(tmp_path)
    spec = InputSpec((16, 16), percentiles=(0.0, 100.0))
    # DICOM layout (row, column): 30 rows x 0.8 mm = 24 mm and 40 columns x 0.5 mm = 20 mm, over 16 voxels each.
    assert classifier_spacing(load_image(path), spec) == pytest.approx((1.5, 1.25))
    monai_spec = InputSpec((16, 16), layout="monai", percentiles=(0.0, 100.0))
    assert classifier_spacing(load_image(path), monai_spec) == pytest.approx((1.25, 1.5))
    model = BlobDetector(2).calibrate(torch.full((1, 1, 16, 16), 0.1).index_fill_(2, torch.tensor([8]), 1.0))
    hdm = _hdm(model, units=NativeGrid(spacing=(1.0, 1.0), size=(16, 16)))
    result = explain_image(path, hdm, spec, class_idx=1)
    assert result.spacing == pytest.approx((1.5, 1.25)) and result.model_spacing == result.spacing
    baseline = explain_image(path, GradientInput(model), spec, class_idx=1)
    assert baseline.spacing is None and baseline.model_spacing == pytest.approx((1.5, 1.25))
    row = explain_study(StudyCase(path, "case", 1), hdm, spec, tmp_path)
    assert row["spacing"] == "1.5 1.25"
    from medhdm.study import write_explanations_csv

    write_explanations_csv(tmp_path / "explanations.csv", [row])
    with open(tmp_path / "explanations.csv") as f:
        assert next(csv.DictReader(f))["spacing"] == "1.5 1.25"


def test_explaind_passes_a_metatensors_spacing_or_a_keys():
    x, model = _case()
    hdm = _hdm(model, units=NativeGrid(spacing=(1.0, 1.0), size=(32, 32)))
    image = MetaTensor(x[0], affine=torch.diag(torch.tensor([0.5, 2.0, 1.0, 1.0], dtype=torch.float64)))
    out = Explaind("image", hdm, class_idx=1)({"image": image})
    assert out["image_saliency_spacing"] == (0.5, 2.0)
    assert torch.equal(out["image_saliency"].as_tensor(), hdm(x, 1, spacing=(0.5, 2.0))[0])
    keyed = Explaind("image", hdm, class_idx=1, spacing_key="spacing")({"image": image, "spacing": (1.0, 1.0)})
    assert keyed["image_saliency_spacing"] == (1.0, 1.0)
