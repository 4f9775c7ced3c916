"""A segmenter explained from files: ``medhdm explain --region`` on a NIfTI, and a DICOM series whose
export holds the target region (SEG segment 2) and names it in the SR."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch

from medhdm.cli import main
from medhdm.data.dicom_series import write_series
from medhdm.explain.registry import make_explainer
from medhdm.export.sr import read_structured_report
from medhdm.pipeline import InputSpec
from medhdm.study import StudyCase, explain_study
from medhdm.testing import ThresholdSegmenter, ct_volume


def _nifti_case(folder):
    volume = np.full((48, 40), 0.1, dtype=np.float32)
    volume[4:12, 4:12], volume[30:42, 24:36] = 1.0, 1.0
    affine = np.diag([0.7, 0.9, 1.0, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), folder / "image.nii.gz")
    mask = np.zeros((48, 40), dtype=np.uint8)
    mask[30:42, 24:36] = 1
    nib.save(nib.Nifti1Image(mask, affine), folder / "region.nii.gz")
    torch.save(ThresholdSegmenter().state_dict(), folder / "segmenter.pt")
    return volume, mask


def _cli(folder, *extra):
    return main(
        [
            "explain",
            "--image",
            str(folder / "image.nii.gz"),
            "--model",
            "medhdm.testing.ThresholdSegmenter",
            "--weights",
            str(folder / "segmenter.pt"),
            "--spatial-size",
            "20,24",
            "--intensity-range",
            "0,1",
            "--method",
            "gradientinput",
            "--class-idx",
            "1",
            *extra,
        ]
    )


def test_the_cli_explains_a_segmenter_for_a_mask_and_writes_the_region_beside_the_map(tmp_path):
    volume, mask = _nifti_case(tmp_path)
    assert _cli(tmp_path, "--region", str(tmp_path / "region.nii.gz"), "--out", str(tmp_path / "given")) in (0, None)
    case = tmp_path / "given" / "image"
    region = nib.load(case / "image_region.nii.gz")
    assert np.array_equal(np.asarray(region.dataobj)[..., 0], mask)
    assert np.allclose(region.affine, np.diag([0.7, 0.9, 1.0, 1.0]))
    saliency = np.asarray(nib.load(case / "image_saliency.nii.gz").dataobj)[..., 0]
    assert saliency[30:42, 24:36].sum() > 2 * saliency[4:12, 4:12].sum()
    # the default target: the model's predicted mask, both boxes
    assert _cli(tmp_path, "--out", str(tmp_path / "predicted")) in (0, None)
    predicted = np.asarray(nib.load(tmp_path / "predicted" / "image" / "image_region.nii.gz").dataobj)[..., 0]
    assert np.array_equal(predicted, (volume > 0.5).astype(np.uint8))


@pytest.mark.parametrize(
    "region, message",
    [("component:0", "--region: expected 'predicted', 'component:K'"), ("missing.nii.gz", "--region: missing")],
)
def test_a_bad_region_is_one_line_and_exit_2(tmp_path, capsys, region, message):
    _nifti_case(tmp_path)
    assert _cli(tmp_path, "--region", region, "--out", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.nii.gz"))


def test_a_dicom_series_export_holds_the_region_as_seg_segment_2_and_the_sr_names_it(tmp_path):
    template, hu = ct_volume(4)
    hu = np.full_like(hu, -900.0)
    hu[:, 20:40, 30:50], hu[:, 80:100, 80:110] = 300.0, 300.0
    write_series(template, hu, tmp_path / "series")
    model = ThresholdSegmenter()
    spec = InputSpec(spatial_size=(4, 32, 32), intensity_range=(-1000.0, 500.0))
    (tmp_path / "out").mkdir()
    row = explain_study(
        StudyCase(tmp_path / "series", "ct"),
        make_explainer("gradientinput", model),
        spec,
        tmp_path / "out",
        export_formats=("seg", "sr"),
        region="component:1",
    )
    seg = pydicom.dcmread(next((tmp_path / "out" / "ct").rglob("SEG*.dcm")))
    labels = [s.SegmentLabel for s in seg.SegmentSequence]
    assert labels[1] == "explained target region" and len(labels) == 2
    region = nib.load(tmp_path / "out" / "ct" / "ct_region.nii.gz")
    assert np.asarray(region.dataobj).sum() > 0
    report = read_structured_report(next((tmp_path / "out" / "ct").rglob("SR*.dcm")))
    assert report["region_code"] == "region-component1"
    assert "connected component 1" in report["region_meaning"]
    assert row["class_idx"] == 1


def _series_case(folder):
    """A 48 x 40 x 4 NIfTI series: box A on slices 0 and 1, box B on slices 1 and 3, slice 2 empty; the
    region file holds box B."""
    volume = np.full((48, 40, 4), 0.1, dtype=np.float32)
    volume[4:12, 4:12, :2] = 1.0
    volume[30:42, 24:36, 1], volume[30:42, 24:36, 3] = 1.0, 1.0
    affine = np.diag([0.7, 0.9, 2.5, 1.0])
    nib.save(nib.Nifti1Image(volume, affine), folder / "image.nii.gz")
    mask = np.zeros(volume.shape, dtype=np.uint8)
    mask[30:42, 24:36, 1], mask[30:42, 24:36, 3] = 1, 1
    nib.save(nib.Nifti1Image(mask, affine), folder / "region.nii.gz")
    torch.save(ThresholdSegmenter().state_dict(), folder / "segmenter.pt")
    return volume, mask


def test_a_2d_segmenter_explains_a_series_slice_by_slice_for_the_region_in_each_slice(tmp_path):
    from medhdm.explain import GradientInput
    from medhdm.pipeline import explain_images

    volume, mask = _series_case(tmp_path)
    spec = InputSpec(spatial_size=(20, 24), intensity_range=(0.0, 1.0))
    explainer = GradientInput(ThresholdSegmenter())
    (given,) = explain_images(
        [tmp_path / "image.nii.gz"], explainer, spec, [1], slices="all", region=[tmp_path / "region.nii.gz"]
    )
    assert given.explained_slices == (1, 3), "only the slices the region holds voxels of"
    assert np.isnan(given.slice_scores[[0, 2]]).all() and given.slice_scores[[1, 3]].min() > 0.9
    assert given.region_spec == "mask" and np.array_equal(given.region, mask)
    assert given.saliency[..., [0, 2]].max() == 0
    # slice 1 holds both boxes: its map explains the region's, box B
    assert given.saliency[30:42, 24:36, 1].sum() > 2 * given.saliency[4:12, 4:12, 1].sum()
    (predicted,) = explain_images([tmp_path / "image.nii.gz"], explainer, spec, [1], slices="top:2")
    assert predicted.region_spec == "predicted" and len(predicted.explained_slices) == 2
    assert set(predicted.explained_slices) <= {0, 1, 3} and np.isnan(predicted.slice_scores[2])
    chosen = list(predicted.explained_slices)
    assert np.array_equal(predicted.region[..., chosen], volume[..., chosen] > 0.5)
    # components connect across slices: box A (slices 0 and 1) is one, smaller than box B on slice 1 or 3
    (third,) = explain_images([tmp_path / "image.nii.gz"], explainer, spec, [1], slices="all", region="component:3")
    assert third.explained_slices == (0, 1) and third.region_spec == "component:3"
    assert third.region[4:12, 4:12, :2].all() and third.region.sum() == 2 * 64
    with pytest.raises(ValueError, match=r"slices: the target region is empty in slice\(s\) \[2\]"):
        explain_images([tmp_path / "image.nii.gz"], explainer, spec, [1], slices="1,2", region=[mask])


def test_the_cli_explains_a_series_slice_by_slice_for_a_mask_region(tmp_path):
    volume, mask = _series_case(tmp_path)
    out = tmp_path / "out"
    assert _cli(tmp_path, "--region", str(tmp_path / "region.nii.gz"), "--slices", "all", "--out", str(out)) in (
        0,
        None,
    )
    region = nib.load(out / "image" / "image_region.nii.gz")
    assert np.array_equal(np.asarray(region.dataobj), mask)
    rows = (out / "image" / "image_slices.csv").read_text().splitlines()
    assert len(rows) == 5 and [r.split(",")[-1] for r in rows[1:]] == ["0", "1", "0", "1"], rows
