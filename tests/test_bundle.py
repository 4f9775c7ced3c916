"""MONAI bundles: ``--bundle`` and ``python -m monai.bundle run`` with medhdm's explain.json explain with the bundle's
own preprocessing, and give the map of the equivalent explicit command.

The bundles are written here with MONAI's bundle tools (``init_bundle``) around the shipped 2D and 3D DenseNets,
with preprocessing that differs from medhdm's defaults: another intensity window, a reorientation, and (3D) a
spacing change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.models import DEFAULT_2D, DEFAULT_3D, bundle_digest, load_bundle, load_default_classifier
from medhdm.pipeline import InputSpec, input_record

ROOT = Path(__file__).resolve().parents[1]
WINDOW = (-900.0, 100.0)  # LesionBench files need (-1000, 0) for the shipped models' scale
SPACING_3D = (4.5, 5.208333, 6.0)  # (S, P, L) mm, from (3, 5.208, 5.208): a spacing change


def _network_def(dims: int) -> dict:
    return {
        "_target_": "DenseNet",
        "spatial_dims": dims,
        "in_channels": 1,
        "out_channels": 2,
        "init_features": 16,
        "growth_rate": 8,
        "block_config": [3, 3, 3],
        "bn_size": 2,
    }


def _preprocessing(dims: int) -> list[dict]:
    """LesionBench's (L, P, S) NIfTI files to the shipped models' (slice, row, column) order, windowed, resized."""
    steps = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image"},
        {"_target_": "Orientationd", "keys": "image", "axcodes": "SPL"[3 - dims :]},
    ]
    if dims == 3:
        steps.append({"_target_": "Spacingd", "keys": "image", "pixdim": list(SPACING_3D), "mode": "bilinear"})
    steps += [
        {
            "_target_": "ScaleIntensityRanged",
            "keys": "image",
            "a_min": WINDOW[0],
            "a_max": WINDOW[1],
            "b_min": 0.0,
            "b_max": 1.0,
            "clip": False,
        },  # fmt: skip
        {
            "_target_": "Resized",
            "keys": "image",
            "spatial_size": [96, 96] if dims == 2 else [24, 48, 48],
            "mode": "bilinear" if dims == 2 else "trilinear",
        },  # fmt: skip
    ]
    return steps


def _inference(dims: int) -> dict:
    """A classification bundle's inference.json in the Model Zoo's style (evaluator, postprocessing, handlers)."""
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "dataset_dir": "data",
        "output_dir": "$@bundle_root + '/eval'",
        "datalist": "$sorted(glob.glob(os.path.join(@dataset_dir, '*.nii.gz')))",
        "network_def": _network_def(dims),
        "network": "$@network_def.to(@device)",
        "preprocessing": {"_target_": "Compose", "transforms": _preprocessing(dims)},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
        "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "num_workers": 0},
        "inferer": {"_target_": "SimpleInferer"},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [{"_target_": "Activationsd", "keys": "pred", "softmax": True}],
        },
        "handlers": [
            {
                "_target_": "CheckpointLoader",
                "load_path": "$@bundle_root + '/models/model.pt'",
                "load_dict": {"model": "@network"},
            },
            {
                "_target_": "ClassificationSaver",
                "output_dir": "@output_dir",
                "batch_transform": "$lambda batch: [item['image'].meta for item in batch]",
                "output_transform": "$lambda output: [item['pred'].argmax() for item in output]",
            },
        ],
        "evaluator": {
            "_target_": "SupervisedEvaluator",
            "device": "@device",
            "val_data_loader": "@dataloader",
            "network": "@network",
            "inferer": "@inferer",
            "postprocessing": "@postprocessing",
            "val_handlers": "@handlers",
        },
        "run": ["$@evaluator.run()"],
    }


def _metadata(dims: int) -> dict:
    return {
        "version": "0.1.0",
        "monai_version": "1.4.0",
        "name": f"lesion_densenet{dims}d bundle (medhdm tests)",
        "task": "lesion present / absent",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [96, 96] if dims == 2 else [24, 48, 48],
                    "dtype": "float32",
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "num_channels": 2,
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "channel_def": {"0": "no lesion (bundle)", "1": "lesion (bundle)"},
                }
            },
        },
    }


def make_bundle(folder: Path, dims: int, inference: dict | None = None) -> Path:
    """A bundle around the shipped ``dims``-D DenseNet, written with ``monai.bundle.init_bundle``."""
    from monai.bundle import init_bundle

    model = load_default_classifier(DEFAULT_2D if dims == 2 else DEFAULT_3D)
    init_bundle(folder, network=model, metadata_str=_metadata(dims), inference_str=inference or _inference(dims))
    return folder


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Every run here on one thread (the CLI's MEDHDM_THREADS, the subprocess's OMP_NUM_THREADS): HDM's maps
    change by about 3e-4 with torch's thread count (summation order), more than the 1e-5 compared here."""
    monkeypatch.setenv("MEDHDM_THREADS", "1")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[int, Path]:
    """One LesionBench case with a lesion per dimension as NIfTI (2D written as a 2D NIfTI, as MONAI loads it)."""
    root = tmp_path_factory.mktemp("bundle_data")
    out = {}
    for dims in (2, 3):
        size = (96, 96) if dims == 2 else (24, 48, 48)
        manifest = write_lesionbench(root / f"lb{dims}", n_cases=1, spatial_dims=dims, seed=11, spatial_size=size,
                                     lesion_weights=(0, 1, 0, 0))  # fmt: skip
        case = Path(manifest).parent / "case000" / "image.nii.gz"
        data = root / f"data{dims}"
        data.mkdir()
        image = nib.load(case)
        array = np.asarray(image.dataobj, dtype=np.float32)
        if dims == 2:
            array = array[..., 0]
        nib.save(nib.Nifti1Image(array, image.affine), data / "case.nii.gz")
        out[dims] = data / "case.nii.gz"
    return out


def _explicit(tmp_path: Path, image: Path, dims: int) -> np.ndarray:
    """The map of ``medhdm explain`` with the bundle's preprocessing typed as flags (3D: on the image resampled as
    the bundle's Spacingd does, then taken back to the source grid as Invertd does)."""
    from monai.transforms import Compose, EnsureChannelFirst, LoadImage, Orientation, ResampleToMatch, Spacing

    source = LoadImage(image_only=True)(str(image))
    explicit_image = image
    if dims == 3:  # the explicit command has no spacing option: its input is the resampled image
        resampled = Compose([EnsureChannelFirst(), Orientation("SPL"), Spacing(SPACING_3D, mode="bilinear")])(source)
        explicit_image = tmp_path / "resampled.nii.gz"
        nib.save(nib.Nifti1Image(resampled[0].numpy(), resampled.affine.numpy()), explicit_image)
    out = tmp_path / "explicit"
    model = "default" if dims == 2 else "default3d"
    window = f"--intensity-range={WINDOW[0]},{WINDOW[1]}"
    axcodes = "SPL" if dims == 3 else "PLS"  # a 2D image takes the first two
    assert main(["explain", "--image", str(explicit_image), "--model", model, "--axcodes", axcodes, window,
                 "--out", str(out)]) == 0  # fmt: skip
    map_file = next(out.glob("*/*_saliency.nii.gz"))
    saliency = LoadImage(image_only=True)(str(map_file))
    if dims == 3:
        target = EnsureChannelFirst()(source)
        back = ResampleToMatch(mode="bilinear", padding_mode="border")(EnsureChannelFirst()(saliency), target)
        return back[0].numpy()
    return saliency.numpy().reshape(saliency.shape[:2])


def _saliency(out: Path) -> np.ndarray:
    """The map written by ``medhdm explain`` (a 2D map as a 2D array)."""
    image = nib.load(next(out.glob("*/*_saliency.nii.gz")))
    return np.asarray(image.dataobj, dtype=np.float32).reshape([s for i, s in enumerate(image.shape) if i < 2 or s > 1])


@pytest.mark.parametrize("dims", [2, 3])
def test_bundle_option_gives_the_explicit_commands_map(dims, images, tmp_path):
    bundle = make_bundle(tmp_path / "bundle", dims)
    out = tmp_path / "via_bundle"
    assert main(["explain", "--image", str(images[dims]), "--bundle", str(bundle), "--out", str(out)]) == 0
    explicit = _explicit(tmp_path, images[dims], dims)
    via_bundle = _saliency(out)
    assert via_bundle.shape == explicit.shape == nib.load(images[dims]).shape
    assert via_bundle.max() > 0.5
    np.testing.assert_allclose(via_bundle, explicit, atol=1e-5)
    record = json.loads(next(out.glob("*/record.json")).read_text())
    assert record["configuration"]["extra"]["input"]["bundle_sha256"] == bundle_digest(bundle)


@pytest.mark.parametrize("dims", [2, 3])
def test_monai_bundle_run_with_medhdm_explain_config(dims, images, tmp_path):
    bundle = make_bundle(tmp_path / "bundle", dims)
    from medhdm.models import write_explain_config

    explain_json = write_explain_config(bundle)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
               f"['{bundle}/configs/inference.json','{explain_json}']", "--bundle_root", str(bundle),
               "--dataset_dir", str(images[dims].parent)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    predictions = bundle / "eval" / "predictions.csv"
    assert predictions.is_file()  # the bundle's own inference ran
    maps = list((bundle / "eval").rglob("*_saliency.nii.gz"))
    assert len(maps) == 1
    via_run = np.asarray(nib.load(maps[0]).dataobj, dtype=np.float32)
    explicit = _explicit(tmp_path, images[dims], dims)
    assert via_run.shape == explicit.shape
    np.testing.assert_allclose(via_run, explicit, atol=1e-5)


def test_load_bundle_reads_network_classes_and_preprocessing(tmp_path):
    bundle = make_bundle(tmp_path / "bundle", 3)
    loaded = load_bundle(bundle)
    shipped = load_default_classifier(DEFAULT_3D)
    for name, value in shipped.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], value)
    assert loaded.class_names == ("no lesion (bundle)", "lesion (bundle)")
    assert loaded.model.medhdm_card["classes"] == list(loaded.class_names)
    spec = InputSpec.from_bundle(loaded)
    names = [type(t).__name__ for t in __import__("medhdm.pipeline").pipeline.classifier_transforms(3, spec).transforms]
    assert names == ["Orientationd", "Spacingd", "ScaleIntensityRanged", "Resized"]
    before = configuration = input_record(spec)
    assert configuration["bundle_sha256"] == loaded.digest
    (bundle / "configs" / "inference.json").write_text(
        (bundle / "configs" / "inference.json").read_text().replace("-900.0", "-800.0")
    )
    assert input_record(InputSpec.from_bundle(load_bundle(bundle))) != before  # the hash covers the bundle's files


def test_bundle_whose_network_cannot_be_built_names_the_key(tmp_path, capsys, images):
    inference = _inference(3)
    inference["network_def"]["block_config"] = "not a list"
    bundle = make_bundle(tmp_path / "bundle", 3, inference)
    with pytest.raises(ValueError, match="'network_def' cannot be built"):
        load_bundle(bundle)
    code = main(["explain", "--image", str(images[3]), "--bundle", str(bundle), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "network_def" in err[0] and "--bundle:" in err[0], err
    assert not (tmp_path / "out").exists()


def test_bundle_whose_checkpoint_does_not_match_names_the_key(tmp_path, capsys, images):
    inference = _inference(3)
    inference["network_def"]["growth_rate"] = 12  # another network than the checkpoint's
    bundle = make_bundle(tmp_path / "bundle", 3, inference)
    with pytest.raises(ValueError, match=r"model\.pt does not fit 'network_def'"):
        load_bundle(bundle)
    code = main(["explain", "--image", str(images[3]), "--bundle", str(bundle), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "network_def" in err[0] and "model.pt" in err[0], err


def test_bundle_refuses_input_flags(tmp_path, capsys, images):
    bundle = make_bundle(tmp_path / "bundle", 2)
    code = main(["explain", "--image", str(images[2]), "--bundle", str(bundle), "--intensity-range=-1000,0",
                 "--out", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--bundle" in err and "--intensity-range" in err


@pytest.mark.parametrize(
    "command",
    [
        ["explain", "--image", "x.nii.gz", "--out", "o"],
        ["evaluate", "--manifest", "m.json", "--out", "o"],
        ["pacs", "explain", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3"],
        ["pacs", "serve", "--spool", "s", "--destination", "http://127.0.0.1:1/dicom-web"],
    ],
    ids=["explain", "evaluate", "pacs-explain", "pacs-serve"],
)
def test_every_model_command_takes_bundle(command, tmp_path):
    from medhdm.cli import build_parser
    from medhdm.cli.options import model_and_spec

    bundle = make_bundle(tmp_path / "bundle", 2)
    args = build_parser().parse_args([*command, "--bundle", str(bundle)])
    _, model, spec = model_and_spec(args)
    assert spec.bundle == str(bundle) and spec.bundle_sha256 == bundle_digest(bundle)
    assert model.medhdm_card["classes"] == ["no lesion (bundle)", "lesion (bundle)"]


def test_monai_bundle_run_writes_the_dicom_objects_of_a_dicom_series(images, tmp_path):
    """The component on a DICOM series (the 3D image's own study), asked for DICOM objects: the PM holds the NIfTI map
    the run wrote, on the source grid, the SEG and SR beside it pass dciodvfy, the SR reports the predicted class."""
    import csv

    import pydicom
    from scipy import ndimage
    from validators import dciodvfy_errors

    from medhdm.export import read_structured_report
    from medhdm.io.axes import monai_to_dicom
    from medhdm.io.dicom import read_dicom
    from medhdm.models import write_explain_config

    series = images[3].parents[1] / "lb3" / "case000" / "image"  # the DICOM study of images[3]
    bundle = make_bundle(tmp_path / "bundle", 3)
    explain_json = write_explain_config(bundle)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file",
               f"['{bundle}/configs/inference.json','{explain_json}']", "--bundle_root", str(bundle),
               "--datalist", f"['{series}']", "--explain_dicom_formats", "['pm','seg','sr']"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(bundle / "eval" / "predictions.csv") as fh:
        predicted = int(float(next(csv.reader(fh))[1]))
    saliency = np.asarray(nib.load(bundle / "eval" / "image_saliency.nii.gz").dataobj, dtype=np.float32)
    expected = monai_to_dicom(saliency)  # (D, H, W) in the source's slice order
    source = read_dicom(series)
    lesion = monai_to_dicom(np.asarray(nib.load(series.parent / "lesion.nii.gz").dataobj)) > 0
    near = ndimage.binary_dilation(lesion, iterations=2)  # within 2 voxels (6 mm across slices, 10 in plane)
    assert near.reshape(-1)[expected.argmax()]  # the map's peak lies at the planted lesion
    folder = bundle / "eval" / "image_dicom"
    paths = {p.name[:2]: p for p in folder.glob("*.dcm")}
    assert sorted(paths) == ["PM", "SE", "SR"]
    for path in paths.values():
        errors, report = dciodvfy_errors(path)
        assert errors == [], f"{path.name}:\n{report}"
    pm = pydicom.dcmread(paths["PM"])
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in source.datasets])
    frames = pm.pixel_array.reshape((-1,) + source.pixels.shape[1:])
    assert len(frames) == len(source.datasets)
    for frame, group in zip(frames, pm.PerFrameFunctionalGroupsSequence):
        position = np.array([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.abs(positions - position).sum(axis=1).argmin())
        np.testing.assert_allclose(frame, expected[k], atol=1e-6)
    sr = read_structured_report(paths["SR"])
    assert sr["class_code"] == f"class{predicted}" and 0.5 <= sr["probability"] <= 1.0
    assert sr["segment"] == pydicom.dcmread(paths["SE"]).SOPInstanceUID
