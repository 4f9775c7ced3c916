"""Study on disk -> classifier input -> map back on the source grid; ``medhdm explain``; model loading."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from monai.data import MetaTensor
from monai.networks.nets import DenseNet
from monai.transforms import Invertd
from pydicom.data import get_testdata_file

from medhdm.cli import main
from medhdm.data.dicom_series import write_series
from medhdm.explain import make_explainer
from medhdm.io import read_dicom
from medhdm.models import load_model
from medhdm.pipeline import InputSpec, classifier_transforms, explain_image, load_image
from medhdm.testing import ct_volume

TINY_3D = {
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 2,
    "init_features": 4,
    "growth_rate": 4,
    "block_config": [2, 2],
    "bn_size": 2,
}


def _roundtrip_argmax(path, spec: InputSpec) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Argmax of the loaded image, and argmax of its preprocessed copy sent back through Invertd.

    The tests scale intensities by the 0th-100th percentile, so the planted spot stays the unique maximum.
    """
    image = load_image(path)
    transforms = classifier_transforms(image.ndim - 1, spec)
    data = transforms({"image": image})
    data["saliency"] = MetaTensor(data["image"].as_tensor().clone())  # a "map" that is the image itself
    back = Invertd("saliency", transform=transforms, orig_keys="image", nearest_interp=False)(data)["saliency"]
    assert tuple(back.shape) == tuple(image.shape)
    source_peak = np.unravel_index(int(image[0].argmax()), image.shape[1:])
    return source_peak, np.unravel_index(int(back[0].argmax()), image.shape[1:])


def test_roundtrip_puts_a_planted_voxel_back_on_its_source_voxel_2d(tmp_path):
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    pixels = ds.pixel_array.copy()
    pixels[30:33, 90:93] = pixels.max() + 2000  # a 3 x 3 bright spot, off-centre and off-diagonal
    ds.PixelData = pixels.tobytes()
    ds.save_as(tmp_path / "planted.dcm")
    source_peak, back_peak = _roundtrip_argmax(tmp_path / "planted.dcm", InputSpec((96, 96), percentiles=(0.0, 100.0)))
    # MONAI order is (column, row): the spot is at columns 90-92, rows 30-32.
    assert 90 <= source_peak[0] <= 92 and 30 <= source_peak[1] <= 32
    assert 90 <= back_peak[0] <= 92 and 30 <= back_peak[1] <= 32


@pytest.mark.parametrize("layout", ["dicom", "monai"])
def test_roundtrip_3d_nifti_with_a_flipped_anisotropic_affine(tmp_path, layout):
    volume = np.random.default_rng(0).uniform(0, 100, size=(40, 36, 20)).astype(np.float32)
    volume[30:32, 5:7, 14:16] = 1000.0
    affine = np.array([[-0.8, 0, 0, 20], [0, 0.9, 0, -15], [0, 0, 2.5, 7], [0, 0, 0, 1]])  # LAS, anisotropic
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "vol.nii.gz")
    source_peak, back_peak = _roundtrip_argmax(
        tmp_path / "vol.nii.gz", InputSpec((16, 24, 24), layout=layout, percentiles=(0.0, 100.0))
    )
    assert 30 <= source_peak[0] <= 31 and 5 <= source_peak[1] <= 6 and 14 <= source_peak[2] <= 15
    assert 30 <= back_peak[0] <= 31 and 5 <= back_peak[1] <= 6 and 14 <= back_peak[2] <= 15


def _sitk_geometry(image: sitk.Image) -> tuple:
    return (
        image.GetSize(),
        np.asarray(image.GetOrigin()),
        np.asarray(image.GetSpacing()),
        np.asarray(image.GetDirection()),
    )


def test_cli_explain_dicom_file_map_sits_on_the_source_in_simpleitk(tmp_path, capsys):
    path = get_testdata_file("CT_small.dcm")
    rc = main(["explain", "--image", path, "--method", "gxi", "--out", str(tmp_path / "out"), "--export", "sc"])
    assert rc == 0, capsys.readouterr().err
    assert "[1/1] CT_small: done" in capsys.readouterr().out
    saliency = sitk.ReadImage(str(tmp_path / "out" / "CT_small" / "CT_small_saliency.nii.gz"))
    source = sitk.ReadImage(path)
    size, origin, spacing, direction = _sitk_geometry(saliency)
    s_size, s_origin, s_spacing, s_direction = _sitk_geometry(source)
    assert size == s_size
    np.testing.assert_allclose(origin, s_origin, atol=1e-4)
    np.testing.assert_allclose(spacing[:2], s_spacing[:2], atol=1e-6)
    np.testing.assert_allclose(direction, s_direction, atol=1e-6)
    sc = pydicom.dcmread(tmp_path / "out" / "CT_small" / "CT_small_dicom" / "SC_0001.dcm")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(path).SOPInstanceUID
    rows = (tmp_path / "out" / "explanations.csv").read_text().splitlines()
    assert rows[0].startswith("case,image,class_idx,score,map") and len(rows) == 2


def test_cli_explain_series_with_a_class_path_model(tmp_path, capsys):
    template, volume = ct_volume(depth=6)
    write_series(template, volume, tmp_path / "series", file_order_seed=2)
    torch.manual_seed(0)
    torch.save(DenseNet(**TINY_3D).state_dict(), tmp_path / "net.pt")
    rc = main(
        [
            "explain",
            "--image",
            str(tmp_path / "series"),
            "--model",
            "monai.networks.nets.DenseNet",
            "--model-args",
            json.dumps(TINY_3D),
            "--weights",
            str(tmp_path / "net.pt"),
            "--spatial-size",
            "8,32,32",
            "--method",
            "gxi",
            "--out",
            str(tmp_path / "out"),
            "--export",
            "sc,pm",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    saliency = sitk.ReadImage(str(tmp_path / "out" / "series" / "series_saliency.nii.gz"))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "series")))
    source = reader.Execute()
    size, origin, spacing, direction = _sitk_geometry(saliency)
    s_size, s_origin, s_spacing, s_direction = _sitk_geometry(source)
    assert size == s_size
    np.testing.assert_allclose(origin, s_origin, atol=1e-4)
    np.testing.assert_allclose(spacing, s_spacing, atol=1e-4)
    np.testing.assert_allclose(direction, s_direction, atol=1e-6)
    assert len(list((tmp_path / "out" / "series" / "series_dicom").glob("SC_*.dcm"))) == 6
    # The map is not empty and lies within [0, 1].
    array = sitk.GetArrayFromImage(saliency)
    assert array.min() >= 0 and array.max() <= 1 and array.max() > 0.5


def test_cli_explain_nifti_with_torchscript_and_bundle_models(tmp_path, capsys):
    volume = np.random.default_rng(1).uniform(0, 1, size=(30, 28, 12)).astype(np.float32)
    affine = np.array([[0.7, 0, 0, -10], [0, 0.7, 0, 5], [0, 0, 3.0, 2], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case1.nii.gz")
    torch.manual_seed(0)
    net = DenseNet(**TINY_3D).eval()
    torch.jit.save(torch.jit.script(net), tmp_path / "net.ts")
    bundle = tmp_path / "bundle"
    (bundle / "configs").mkdir(parents=True)
    (bundle / "models").mkdir()
    (bundle / "configs" / "inference.json").write_text(
        json.dumps({"network_def": {"_target_": "monai.networks.nets.DenseNet", **TINY_3D}})
    )
    torch.save(net.state_dict(), bundle / "models" / "model.pt")
    for model, out in ((tmp_path / "net.ts", "ts"), (bundle, "bundle")):
        rc = main(
            [
                "explain",
                "--image",
                str(tmp_path / "case1.nii.gz"),
                "--model",
                str(model),
                "--spatial-size",
                "16,16,8",
                "--method",
                "hdm",
                "--steps",
                "3",
                "--out",
                str(tmp_path / out),
            ]
        )
        assert rc == 0, capsys.readouterr().err
        result = nib.load(tmp_path / out / "case1" / "case1_saliency.nii.gz")
        assert result.shape == volume.shape
        np.testing.assert_allclose(result.affine, affine, atol=1e-5)
    ts = np.asarray(nib.load(tmp_path / "ts" / "case1" / "case1_saliency.nii.gz").dataobj)
    bd = np.asarray(nib.load(tmp_path / "bundle" / "case1" / "case1_saliency.nii.gz").dataobj)
    np.testing.assert_allclose(ts, bd, atol=1e-4)  # the same network, loaded two ways


def test_model_and_method_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown 'nope'"):
        make_explainer("nope", DenseNet(**TINY_3D))
    with pytest.raises(ValueError, match="GradCAM needs forward hooks, which TorchScript modules do not support"):
        make_explainer("gradcam", torch.jit.script(DenseNet(**TINY_3D)))
    with pytest.raises(ValueError, match="steps: GradCAM is not an optimised-mask method"):
        make_explainer("GradCAM", DenseNet(**TINY_3D), steps=5)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="is not a TorchScript file"):
        load_model(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="cannot import"):
        load_model("monai.networks.nets.NoSuchNet", weights=tmp_path / "junk.pt")
    torch.save(DenseNet(**TINY_3D).state_dict(), tmp_path / "net.pt")
    with pytest.raises(ValueError, match="does not fit DenseNet"):
        load_model(
            "monai.networks.nets.DenseNet", weights=tmp_path / "net.pt", model_args={**TINY_3D, "block_config": [3, 3]}
        )
    with pytest.raises(ValueError, match="not a MONAI bundle"):
        load_model(tmp_path)
    rc = main(["explain", "--image", str(tmp_path / "missing.dcm"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "no such file" in capsys.readouterr().err
    rc = main(
        ["explain", "--image", get_testdata_file("CT_small.dcm"), "--model-args", "{bad", "--out", str(tmp_path / "o")]
    )
    assert rc == 2 and "--model-args: not valid JSON" in capsys.readouterr().err


def test_series_read_directly_matches_the_loader(tmp_path):
    template, volume = ct_volume(depth=3)
    write_series(template, volume, tmp_path / "s")
    image = load_image(tmp_path / "s")
    source = read_dicom(tmp_path / "s")
    np.testing.assert_allclose(image.affine.numpy(), source.affine_ras, atol=1e-6)
    np.testing.assert_allclose(image[0].numpy(), np.transpose(source.pixels, (2, 1, 0)))
    assert image.meta["SOPInstanceUIDs"].split("\\") == [d.SOPInstanceUID for d in source.datasets]
    assert image.meta["StudyInstanceUID"] == template.StudyInstanceUID


def test_case_ids_are_unique_and_readable(tmp_path):
    from medhdm.io.cases import unique_case_ids

    assert unique_case_ids(["a/ct1.dcm", "b/ct2.nii.gz"]) == ["ct1", "ct2"]
    assert unique_case_ids(["x/case1/image.dcm", "x/case2/image.nii.gz"]) == ["case1_image", "case2_image"]
    with pytest.raises(ValueError, match="the same image is given twice"):
        unique_case_ids(["x/case1/image.dcm", "x/case1/image.dcm"])


def test_explain_image_from_a_loaded_image_equals_from_its_path():
    path = get_testdata_file("CT_small.dcm")
    model, spec = load_model("default"), InputSpec((96, 96))
    explainer = make_explainer("gxi", model)
    image = load_image(path)
    before = image.clone()
    from_path = explain_image(path, explainer, spec)
    from_image = explain_image(image, explainer, spec)
    assert np.array_equal(from_path.saliency, from_image.saliency)
    assert np.array_equal(from_path.affine, from_image.affine) and from_path.score == from_image.score
    assert torch.equal(image.as_tensor(), before.as_tensor()) and image.meta.keys() == before.meta.keys()
    assert len(image.applied_operations) == len(before.applied_operations)  # the loaded image is not modified
    with pytest.raises(ValueError, match="keep_dicom: needs the image's path"):
        explain_image(image, explainer, spec, keep_dicom=True)
