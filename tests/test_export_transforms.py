"""``ExportDicom(d)``: a map that MONAI took back to its source grid (a ``MetaTensor`` naming its source) written into
the source DICOM study, as the bundle component does after ``Invertd``; and what it refuses."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import EnsureChannelFirst, LoadImage
from validators import dciodvfy_errors

from medhdm.data.bench_files import write_lesionbench
from medhdm.export import ExportDicom, ExportDicomd, read_structured_report
from medhdm.io.axes import monai_to_dicom
from medhdm.io.dicom import read_dicom


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A LesionBench 3D case: its DICOM series folder and its NIfTI image (the same grid)."""
    root = tmp_path_factory.mktemp("export_transforms")
    write_lesionbench(
        root / "lb", n_cases=1, spatial_dims=3, seed=3, spatial_size=(12, 32, 32), lesion_weights=(0, 1, 0, 0)
    )
    return root / "lb" / "case000"


def _map_of(path) -> MetaTensor:
    """A map on the grid of the image at ``path`` as MONAI loads it ``(1, W, H, D)``: a ramp along the columns times
    a bump in the middle slices, with the image's metadata (as ``Explaind`` + ``Invertd`` leave it)."""
    image = EnsureChannelFirst()(LoadImage(image_only=True)(str(path)))
    w, h, d = image.shape[1:]
    ramp = np.linspace(0.0, 1.0, w)[:, None, None] * np.hanning(d + 2)[1:-1][None, None, :] * np.ones((1, h, 1))
    return MetaTensor(torch.as_tensor(ramp[None], dtype=torch.float32), meta=dict(image.meta))


def test_the_pm_seg_and_sr_hold_the_map_on_the_source_grid(study, tmp_path):
    saliency = _map_of(study / "image")
    data = {"saliency": saliency, "saliency_class": 1, "saliency_score": 0.83}
    out = ExportDicomd("saliency", tmp_path / "out", formats=("pm", "seg", "sr"), method="HDM")(data)
    written = out["saliency_dicom"]
    folder = tmp_path / "out" / "image_dicom"  # the series folder's name
    assert {p.parent for paths in written.values() for p in paths} == {folder}
    source = read_dicom(study / "image")
    expected = monai_to_dicom(saliency[0].numpy())  # (D, H, W), the source's slice order
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in source.datasets])
    for path, values in ((written["pm"][0], expected), (written["seg"][0], expected >= 0.5)):
        errors, report = dciodvfy_errors(path)
        assert errors == [], f"{path.name}:\n{report}"
        ds = pydicom.dcmread(path)
        frames = ds.pixel_array.reshape((-1,) + source.pixels.shape[1:])
        for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
            position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
            k = int(np.abs(positions - position).sum(axis=1).argmin())
            np.testing.assert_allclose(frame, values[k], atol=1e-6)
    report = read_structured_report(written["sr"][0])
    assert report["class_code"] == "class1" and report["probability"] == pytest.approx(0.83)
    assert report["segment"] == pydicom.dcmread(written["seg"][0]).SOPInstanceUID


def test_no_formats_writes_nothing(study, tmp_path):
    assert ExportDicom(tmp_path / "out", formats=[])(_map_of(study / "image")) == {}
    assert not (tmp_path / "out").exists()


def test_a_map_off_the_source_grid_names_the_source(study, tmp_path):
    saliency = _map_of(study / "image")
    shifted = saliency.clone()
    shifted.affine = saliency.affine.clone()
    shifted.affine[0, 3] += 2.0  # 2 mm off: not the source's grid
    with pytest.raises(ValueError, match=r"image.*affine differs from the source's by up to 2 mm"):
        ExportDicom(tmp_path / "out", formats="pm")(shifted)
    cropped = MetaTensor(saliency[:, 1:], meta=dict(saliency.meta))
    with pytest.raises(ValueError, match=r"image.*not the source grid"):
        ExportDicom(tmp_path / "out", formats="pm")(cropped)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_a_nifti_source_is_refused_by_name(study, tmp_path):
    with pytest.raises(ValueError, match=r"image\.nii\.gz: not a DICOM file or series folder"):
        ExportDicom(tmp_path / "out", formats="pm")(_map_of(study / "image.nii.gz"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"formats": ["pm", "nifti"]}, r"formats: expected some of sc, pm, seg, sr"),
        ({"formats": "pm", "seg_threshold": 0.0}, r"seg_threshold: expected a value in \(0, 1\]"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ExportDicom(tmp_path / "out", **kwargs)


def test_the_sr_needs_the_class_and_data_root_dir_must_hold_the_source(study, tmp_path):
    saliency = _map_of(study / "image")
    with pytest.raises(ValueError, match=r"class_idx: the SR"):
        ExportDicom(tmp_path / "out", formats="sr")(saliency)
    with pytest.raises(ValueError, match=r"data_root_dir: .*image does not lie in"):
        ExportDicom(tmp_path / "out", formats="pm", data_root_dir=tmp_path / "elsewhere")(saliency)
    written = ExportDicom(tmp_path / "out", formats="pm", data_root_dir=study.parent)(saliency)
    assert written["pm"][0].parent == tmp_path / "out" / "case000" / "image_dicom"
