"""A corpus of bad inputs and arguments, built here, against every command of the CLI.

Each entry asserts: the exit status (2: bad input), a one-line message without a
traceback that names the file (or the argument) and the problem, that no source file
changed (hashes), and that nothing was written outside ``--out``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid

from medhdm.cli import main
from medhdm.data.bench_files import write_lesionbench
from medhdm.io import read_dicom


def _series_files(folder: Path) -> list[Path]:
    """The series' files sorted along the slice normal (z of Image Position for LesionBench)."""
    files = sorted(folder.glob("*.dcm"))
    return sorted(files, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def _edit(path: Path, change) -> None:
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path, enforce_file_format=True)


def _nifti(path: Path, data: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def _nifti_with_sform(path: Path, data: np.ndarray, srows: np.ndarray) -> Path:
    """An uncompressed NIfTI-1 whose sform rows (the affine readers use; qform code 0) are ``srows`` ``(3, 4)``.

    nibabel refuses to write a singular or non-finite affine, so the header's ``srow_x/y/z``
    (bytes 280-327) are patched after saving.
    """
    image = nib.Nifti1Image(data, np.eye(4))
    image.header.set_qform(None, code=0)
    image.header.set_sform(np.eye(4), code=1)
    nib.save(image, path)
    raw = bytearray(path.read_bytes())
    raw[280:328] = np.asarray(srows, dtype="<f4").tobytes()
    path.write_bytes(bytes(raw))
    return path


class Corpus:
    """Good LesionBench cases and bad variants of them under one root (``root/src``)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        src = root / "src"
        write_lesionbench(src / "lb2", n_cases=1, spatial_dims=2, lesion_weights=(0.0, 1.0, 0.0, 0.0))
        write_lesionbench(src / "lb3", n_cases=1, spatial_dims=3, lesion_weights=(0.0, 1.0, 0.0, 0.0))
        self.image2d = src / "lb2" / "case000" / "image.dcm"
        self.series = src / "lb3" / "case000" / "image"
        self.bad = src / "bad"
        self.bad.mkdir()
        np.save(self.bad / "series_map.npy", np.full(read_dicom(self.series).shape, 0.5))

    # -- series folders -----------------------------------------------------------------
    def series_copy(self, name: str) -> tuple[Path, list[Path]]:
        folder = self.bad / name
        shutil.copytree(self.series, folder)
        return folder, _series_files(folder)

    # -- single files ---------------------------------------------------------------------
    def file(self, name: str, data: bytes | None = None) -> Path:
        path = self.bad / name
        if data is None:
            shutil.copy(self.image2d, path)
        else:
            path.write_bytes(data)
        return path


def _build(c: Corpus) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (argv, texts the error message must hold)."""
    cases: dict[str, tuple[list[str], list[str]]] = {}
    explain = ["explain", "--method", "gxi", "--intensity-range=-1000,0"]

    def explain_series(name, texts, change):
        folder, files = c.series_copy(name)
        named = change(folder, files)
        cases[name] = ([*explain, "--model", "default3d", "--image", str(folder)], [*texts, named])

    # a series folder medhdm refuses must never load through another reader
    explain_series("series_missing_slice", ["missing slice"], lambda f, fs: (fs[10].unlink(), fs[9].name)[1])

    def duplicate(f, fs):
        shutil.copy(fs[5], f / "IM_dup.dcm")
        _edit(f / "IM_dup.dcm", lambda ds: setattr(ds, "SOPInstanceUID", generate_uid()))
        return "duplicate slice"

    explain_series("series_duplicate_slice", [], duplicate)
    explain_series(
        "series_two_series",
        ["expected one series"],
        lambda f, fs: (_edit(fs[3], lambda ds: setattr(ds, "SeriesInstanceUID", generate_uid())), "")[1],
    )
    explain_series(
        "series_mixed_orientation",
        ["mixed orientations"],
        lambda f, fs: (
            _edit(fs[4], lambda ds: setattr(ds, "ImageOrientationPatient", [0, 1, 0, 0, 0, -1])),
            fs[4].name,
        )[1],
    )
    explain_series(
        "series_with_text_file",
        ["not a DICOM file"],
        lambda f, fs: ((f / "notes.txt").write_text("scan notes"), "notes.txt")[1],
    )

    def dicomdir(f, fs):
        ds = pydicom.dcmread(fs[0])
        del ds.PixelData
        ds.save_as(f / "DICOMDIR", enforce_file_format=True)
        return "DICOMDIR"

    explain_series("series_with_dicomdir", ["no pixel data"], dicomdir)

    def smaller(f, fs):
        def change(ds):
            ds.PixelData = ds.pixel_array[:32, :32].copy().tobytes()
            ds.Rows, ds.Columns = 32, 32

        _edit(fs[7], change)
        return fs[7].name

    explain_series("series_slice_of_other_size", ["differs"], smaller)
    explain_series(
        "series_with_empty_file",
        ["not a DICOM file"],
        lambda f, fs: ((f / "IM_empty.dcm").write_bytes(b""), "IM_empty.dcm")[1],
    )
    explain_series(
        "series_with_random_file",
        ["DICOM"],
        lambda f, fs: ((f / "IM_random.dcm").write_bytes(np.random.default_rng(0).bytes(4096)), "IM_random.dcm")[1],
    )
    explain_series(
        "series_pixel_spacing_differs",
        ["pixel spacing"],
        lambda f, fs: (_edit(fs[2], lambda ds: setattr(ds, "PixelSpacing", [9.0, 9.0])), fs[2].name)[1],
    )

    def shear(f, fs):
        for k, path in enumerate(fs):
            _edit(
                path,
                lambda ds, k=k: setattr(
                    ds,
                    "ImagePositionPatient",
                    [float(ds.ImagePositionPatient[0]) + 2.0 * k, *ds.ImagePositionPatient[1:]],
                ),
            )
        return "not stacked along their normal"

    explain_series("series_sheared", [], shear)

    def irregular(f, fs):
        _edit(
            fs[12],
            lambda ds: setattr(
                ds, "ImagePositionPatient", [*ds.ImagePositionPatient[:2], float(ds.ImagePositionPatient[2]) + 1.0]
            ),
        )
        return "irregular series"

    explain_series("series_irregular_step", [], irregular)

    # slices of another patient, study or frame of reference: refused, never filed under the first patient
    def other(**changes):
        def change(f, fs):
            _edit(fs[6], lambda ds: [setattr(ds, k, v) for k, v in changes.items()])
            return fs[6].name

        return change

    explain_series(
        "series_slice_of_another_patient", ["Patient ID"], other(PatientID="OTHER-7", PatientName="Other^Pat")
    )
    explain_series("series_slice_of_another_study", ["Study Instance UID"], other(StudyInstanceUID=generate_uid()))
    explain_series(
        "series_slice_of_another_frame_of_reference",
        ["Frame of Reference UID"],
        other(FrameOfReferenceUID=generate_uid()),
    )
    explain_series(
        "series_with_subfolder",
        ["subfolder inside the series folder"],
        lambda f, fs: ((f / "more").mkdir(), shutil.copy(fs[0], f / "more" / "IM_more.dcm"), "more")[2],
    )
    folder, files = c.series_copy("series_two_patients_exported")
    _edit(files[3], lambda ds: setattr(ds, "PatientID", "OTHER-8"))
    cases["series_two_patients_exported"] = (
        [*explain, "--model", "default3d", "--image", str(folder), "--export", "sc,pm,seg"],
        ["Patient ID", files[3].name],
    )
    folder, files = c.series_copy("export_series_two_patients")
    _edit(files[3], lambda ds: setattr(ds, "PatientID", "OTHER-9"))
    cases["export_from_series_of_two_patients"] = (
        ["export", "--image", str(folder), "--map", str(c.bad / "series_map.npy"), "--format", "sc,pm,seg"],
        ["Patient ID", files[3].name],
    )
    empty = c.bad / "empty_folder"
    empty.mkdir()
    cases["series_empty_folder"] = (
        [*explain, "--model", "default3d", "--image", str(empty)],
        ["holds no files", "empty_folder"],
    )

    # single DICOM files
    def explain_file(name, texts, path, *extra):
        cases[name] = ([*explain, *extra, "--image", str(path)], [*texts, path.name])

    raw = c.image2d.read_bytes()
    explain_file("file_empty", ["not a DICOM file"], c.file("empty.dcm", b""))
    explain_file("file_random_bytes", ["DICOM"], c.file("random.dcm", np.random.default_rng(1).bytes(20000)))
    explain_file("file_truncated", ["pixel data"], c.file("truncated.dcm", raw[: len(raw) // 2]))
    no_meta = c.file("no_meta.dcm")
    ds = pydicom.dcmread(no_meta)
    ds.preamble = None
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.save_as(no_meta, implicit_vr=True, little_endian=True)
    explain_file("file_without_meta_header", ["not a DICOM file"], no_meta)

    def edited(name, change):
        path = c.file(name)
        _edit(path, change)
        return path

    explain_file(
        "file_palette_color",
        ["PALETTE COLOR", "grayscale"],
        edited("palette.dcm", lambda ds: setattr(ds, "PhotometricInterpretation", "PALETTE COLOR")),
    )

    def rgb(ds):
        gray = ds.pixel_array
        ds.PixelData = np.repeat(gray[..., None], 3, axis=-1).astype(gray.dtype).tobytes()
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    explain_file("file_rgb", ["RGB", "grayscale"], edited("rgb.dcm", rgb))
    explain_file(
        "file_seg_as_image", ["DICOM SEG"], c.file("seg.dcm", (c.image2d.parent / "lesion_seg.dcm").read_bytes())
    )
    explain_file("file_without_pixel_data", ["no pixel data"], edited("nopix.dcm", lambda ds: delattr(ds, "PixelData")))
    explain_file(
        "file_without_study_uid",
        ["Study Instance UID"],
        edited("nostudy.dcm", lambda ds: delattr(ds, "StudyInstanceUID")),
        "--export",
        "sc",
    )
    explain_file(
        "file_zero_orientation",
        ["Image Orientation (Patient)", "degenerate"],
        edited("iop0.dcm", lambda ds: setattr(ds, "ImageOrientationPatient", [0, 0, 0, 0, 0, 0])),
    )
    explain_file(
        "file_zero_pixel_spacing",
        ["PixelSpacing", "positive"],
        edited("ps0.dcm", lambda ds: setattr(ds, "PixelSpacing", [0, 0])),
    )

    def corrupt_jpeg(ds):  # a JPEG stream that is cut off after its first marker
        ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEGBaseline8Bit
        ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xe0" + b"\x00" * 64])
        ds["PixelData"].VR = "OB"

    explain_file("file_undecodable_pixels", ["cannot be decoded"], edited("corrupt_jpeg.dcm", corrupt_jpeg))
    explain_file(
        "file_structured_report",
        ["no pixel data"],
        c.file("sr.dcm", Path(get_testdata_file("test-SR.dcm")).read_bytes()),
    )
    cases["file_missing"] = ([*explain, "--image", str(c.bad / "nowhere.dcm")], ["no such file", "nowhere.dcm"])
    explain_file("file_png", ["expected a DICOM file"], c.file("picture.png", b"\x89PNG\r\n\x1a\n" + b"0" * 64))
    explain_file(
        "file_nifti_named_dcm", ["DICOM"], c.file("nifti.dcm", (c.image2d.parent / "image.nii.gz").read_bytes())
    )

    # NIfTI
    volume = np.random.default_rng(2).normal(size=(24, 24, 8)).astype(np.float32)
    explain_file(
        "nifti_singular_affine",
        ["singular"],
        _nifti_with_sform(c.bad / "singular.nii", volume, np.zeros((3, 4))),
        "--model",
        "default3d",
    )
    nan_rows = np.eye(4)[:3]
    nan_rows[0, 3] = np.nan
    explain_file(
        "nifti_nan_affine",
        ["NaN"],
        _nifti_with_sform(c.bad / "nan_affine.nii", volume, nan_rows),
        "--model",
        "default3d",
    )
    with_nan = volume.copy()
    with_nan[3, 3, 3] = np.nan
    explain_file(
        "nifti_nan_voxels", ["NaN"], _nifti(c.bad / "nan_voxels.nii.gz", with_nan, np.eye(4)), "--model", "default3d"
    )
    explain_file(
        "nifti_4d",
        ["several volumes"],
        _nifti(c.bad / "four_d.nii.gz", np.stack([volume] * 2, -1), np.eye(4)),
        "--model",
        "default3d",
    )
    good_gz = (c.series.parent / "image.nii.gz").read_bytes()
    explain_file(
        "nifti_truncated", ["NIfTI"], c.file("truncated.nii.gz", good_gz[: len(good_gz) // 3]), "--model", "default3d"
    )
    explain_file("nifti_empty", ["NIfTI"], c.file("empty.nii.gz", gzip.compress(b"")), "--model", "default3d")
    explain_file(
        "nifti_2d_image_for_3d_model", ["single-slice"], c.image2d.parent / "image.nii.gz", "--model", "default3d"
    )
    explain_file("nifti_3d_volume_for_2d_model", ["3D image", "2D classifier"], c.series.parent / "image.nii.gz")

    # arguments (the source is good)
    def argument(name, texts, *args, image=None):
        cases[name] = (["explain", "--image", str(image or c.image2d), *args], texts)

    argument(
        "arg_intensity_range_empty",
        ["--intensity-range: expected two finite values"],
        "--method",
        "gxi",
        "--intensity-range=0,0",
    )
    argument("arg_intensity_range_text", ["--intensity-range"], "--method", "gxi", "--intensity-range=abc")
    argument("arg_device_banana", ["--device"], "--method", "gxi", "--device", "banana")
    if not torch.cuda.is_available():
        argument("arg_device_cuda_without_gpu", ["--device", "CUDA"], "--method", "gxi", "--device", "cuda")
    argument("arg_axcodes", ["axcodes"], "--method", "gxi", "--axcodes", "XYZ")
    argument("arg_negative_mask_size", ["mask_size"], "--method", "occlusion", "--method-args", '{"mask_size": -4}')
    argument("arg_method_args_not_json", ["--method-args"], "--method", "gxi", "--method-args", "{bad")
    argument("arg_method_args_list", ["--method-args"], "--method", "gxi", "--method-args", "[1]")
    argument("arg_method_unknown", ["banana"], "--method", "banana")
    argument(
        "arg_method_keyword_unknown",
        ["--method-args", "gxi takes no 'nonsense'", "n_samples"],
        "--method",
        "gxi",
        "--method-args",
        '{"nonsense": 1}',
    )
    argument("arg_method_args_empty", ["--method-args", "empty"], "--method", "gxi", "--method-args", "")
    argument("arg_method_args_null", ["--method-args", "got null"], "--method", "gxi", "--method-args", "null")
    argument(
        "arg_method_args_steps_and_steps",
        ["--method-args", "'steps' is 3", "--steps is 4"],
        "--method",
        "hdm",
        "--steps",
        "4",
        "--method-args",
        '{"steps": 3}',
    )
    argument(
        "arg_method_args_steps_for_gxi",
        ["--method-args", "gxi takes no 'steps'", "n_samples"],
        "--method",
        "gxi",
        "--method-args",
        '{"steps": 3}',
    )
    argument(
        "arg_method_args_steps_text",
        ["--method-args", "'steps'", "'3'"],
        "--method",
        "hdm",
        "--method-args",
        '{"steps": "3"}',
    )
    argument("arg_class_idx_negative", ["--class-idx", "-1"], "--method", "gxi", "--class-idx", "-1")
    argument("arg_slices_empty_index", ["--slices", "'1,,2'"], "--method", "gxi", "--slices", "1,,2", image=c.series)
    argument("arg_slices_empty", ["--slices", "got ''"], "--method", "gxi", "--slices", "", image=c.series)
    argument("arg_steps_zero", ["steps"], "--method", "hdm", "--steps", "0")
    argument("arg_steps_for_gxi", ["not an optimised-mask method"], "--method", "gxi", "--steps", "5")
    argument("arg_model_missing", ["nothing.pt"], "--method", "gxi", "--model", str(c.bad / "nothing.pt"))
    argument(
        "arg_model_not_torchscript",
        ["not a TorchScript file", "garbage.pt"],
        "--method",
        "gxi",
        "--model",
        str(c.file("garbage.pt", b"not a model")),
    )
    argument(
        "arg_model_class_path_not_a_module",
        ["os.system", "torch.nn.Module"],
        "--method",
        "gxi",
        "--model",
        "os.system",
        "--model-args",
        '{"command": "true"}',
    )
    argument(
        "arg_model_class_path_without_weights",
        ["weights"],
        "--method",
        "gxi",
        "--model",
        "monai.networks.nets.DenseNet121",
    )
    argument(
        "arg_model_weights_garbage",
        ["weights", "garbage_weights.pt"],
        "--method",
        "gxi",
        "--model",
        "monai.networks.nets.DenseNet121",
        "--model-args",
        '{"spatial_dims": 2, "in_channels": 1, "out_channels": 2}',
        "--weights",
        str(c.file("garbage_weights.pt", b"not weights")),
    )
    argument("arg_export_unknown_format", ["formats", "foo"], "--method", "gxi", "--export", "foo")
    argument(
        "arg_export_from_nifti",
        ["not DICOM", "image.nii.gz"],
        "--method",
        "gxi",
        "--export",
        "sc",
        image=c.image2d.parent / "image.nii.gz",
    )
    argument("arg_class_idx_out_of_range", ["class_idx"], "--method", "gxi", "--class-idx", "7")
    argument("arg_spatial_size_zero", ["spatial_size"], "--method", "gxi", "--spatial-size", "0,0")
    argument("arg_spatial_size_text", ["--spatial-size"], "--method", "gxi", "--spatial-size", "a,b")
    cases["arg_no_image"] = (["explain", "--method", "gxi"], ["--image"])
    cases["arg_out_is_a_file"] = (
        ["explain", "--method", "gxi", "--image", str(c.image2d), "--out", str(c.file("out_file.txt", b"x"))],
        ["--out: ", "out_file.txt", "is a file"],
    )
    cases["arg_out_is_the_series"] = (
        ["explain", "--method", "gxi", "--model", "default3d", "--image", str(c.series), "--out", str(c.series)],
        ["--out: ", "is the source"],
    )
    cases["arg_out_inside_the_series"] = (
        [
            "explain",
            "--method",
            "gxi",
            "--model",
            "default3d",
            "--image",
            str(c.series),
            "--out",
            str(c.series / "maps"),
        ],
        ["--out: ", "inside the source"],
    )

    # manifests
    def manifest(name, data, texts, command="explain"):
        path = c.bad / f"{name}.json"
        path.write_text(data if isinstance(data, str) else json.dumps(data))
        argv = ["explain", "--method", "gxi"] if command == "explain" else ["evaluate", "--methods", "gxi"]
        cases[name] = ([*argv, "--manifest", str(path)], [*texts, path.name])

    image = str(c.image2d)
    manifest("manifest_id_escapes_out", {"testing": [{"id": "../../escaped", "image": image}]}, ["not a plain name"])
    manifest("manifest_id_absolute", {"testing": [{"id": str(c.root / "abs"), "image": image}]}, ["not a plain name"])
    manifest("manifest_deep_nesting", "[" * 100000 + "]" * 100000, ["nested too deeply"])
    manifest(
        "manifest_huge_integer", f'{{"testing": [{{"image": "{image}", "label": {"9" * 6000}}}]}}', ["not valid JSON"]
    )
    manifest("manifest_not_json", "{testing: ", ["not valid JSON"])
    manifest("manifest_without_image", {"testing": [{"id": "a"}]}, ["'image' is required"])
    manifest("manifest_bool_label", {"testing": [{"image": image, "label": True}]}, ["'label'"])
    manifest("manifest_missing_file", {"testing": [{"image": "nowhere.dcm"}]}, ["does not exist"])
    manifest(
        "manifest_evaluate_without_lesions",
        {"testing": [{"id": "a", "image": image}]},
        ["without a 'lesion' annotation"],
        command="evaluate",
    )
    evaluate_in_source = c.bad / "evaluate_in_source.json"
    evaluate_in_source.write_text(
        json.dumps({"testing": [{"id": "s", "image": str(c.series), "lesion": str(c.series.parent / "lesion.nii.gz")}]})
    )
    cases["evaluate_out_inside_the_series"] = (
        [
            "evaluate",
            "--methods",
            "gxi",
            "--model",
            "default3d",
            "--manifest",
            str(evaluate_in_source),
            "--out",
            str(c.series / "report"),
        ],
        ["--out: ", "inside the source"],
    )

    # bench-data
    cases["bench_data_into_existing_dataset"] = (
        ["bench-data", "--out", str(c.root / "src" / "lb2"), "--cases", "1"],
        ["--out: ", "exists", "--overwrite"],
    )
    cases["bench_data_no_cases"] = (["bench-data", "--out", "OUT", "--cases", "0"], ["--cases"])

    # export
    source_map = np.full((96, 96), 0.5)
    np.save(c.bad / "complex.npy", source_map.astype(np.complex128))
    np.save(c.bad / "wrong_shape.npy", np.zeros((10, 10)))
    with_nan_map = source_map.copy()
    with_nan_map[3, 3] = np.nan
    np.save(c.bad / "nan_map.npy", with_nan_map)
    np.save(c.bad / "out_of_range.npy", source_map * 3)
    for name, file, texts in [
        ("export_complex_map", "complex.npy", ["complex"]),
        ("export_map_of_wrong_shape", "wrong_shape.npy", ["shape"]),
        ("export_map_with_nan", "nan_map.npy", ["NaN"]),
        ("export_map_out_of_range", "out_of_range.npy", ["[0, 1]"]),
    ]:
        cases[name] = (
            ["export", "--image", str(c.image2d), "--map", str(c.bad / file), "--format", "sc"],
            [*texts] + ([file] if name == "export_complex_map" else []),
        )
    folder, files = c.series_copy("export_series_missing_slice")
    files[8].unlink()
    cases["export_from_series_with_missing_slice"] = (
        ["export", "--image", str(folder), "--map", str(c.bad / "wrong_shape.npy"), "--format", "sc"],
        ["missing slice"],
    )
    cases["export_map_missing"] = (
        ["export", "--image", str(c.image2d), "--map", str(c.bad / "nothing.npy")],
        ["nothing.npy"],
    )
    good_map = c.bad / "good_map.npy"
    np.save(good_map, source_map)
    raw_map = good_map.read_bytes()
    c.file("truncated_map.npy", raw_map[:500])
    c.file("padded_map.npy", raw_map + b"\0\0")
    for name, file, texts in [
        ("export_map_truncated", "truncated_map.npy", ["holds 372 bytes", "73728", "truncated"]),
        ("export_map_with_bytes_after_it", "padded_map.npy", ["holds 73730 bytes", "extra bytes"]),
    ]:
        cases[name] = (
            ["export", "--image", str(c.image2d), "--map", str(c.bad / file), "--format", "sc"],
            [*texts, file],
        )

    # lesion masks: export --lesion (source order) and evaluate's manifest 'lesion' (a NIfTI label map)
    def export_lesion(name, path, texts):
        cases[name] = (
            ["export", "--image", str(c.image2d), "--map", str(good_map), "--lesion", str(path), "--format", "png"],
            [*texts, path.name],
        )

    mask = np.zeros((96, 96))
    mask[40:50, 40:50] = 1
    mask[0, 0] = np.nan
    np.save(c.bad / "lesion_nan.npy", mask)
    export_lesion("export_lesion_with_nan", c.bad / "lesion_nan.npy", ["lesion mask holds 1 NaN/infinite values"])
    lesion = nib.load(c.image2d.parent / "lesion.nii.gz")
    labels = np.asarray(lesion.dataobj).astype(np.float32)

    def lesion_file(name, value):
        data = labels.copy()
        data[0, 0] = value
        return _nifti(c.bad / name, data, lesion.affine)

    export_lesion(
        "export_lesion_nifti_with_nan", lesion_file("lesion_nan.nii.gz", np.nan), ["lesion mask holds 1 NaN/infinite"]
    )
    export_lesion(
        "export_lesion_negative", lesion_file("lesion_negative.nii.gz", -1), ["lesion mask holds 1 negative values"]
    )

    def evaluate_lesion(name, path, texts, methods="gxi"):
        manifest_path = c.bad / f"{name}.json"
        manifest_path.write_text(json.dumps({"testing": [{"id": "e", "image": str(c.image2d), "lesion": str(path)}]}))
        argv = ["evaluate", "--methods", methods, "--no-faithfulness", "--intensity-range=-1000,0"]
        cases[name] = ([*argv, "--manifest", str(manifest_path)], [*texts, path.name])

    evaluate_lesion("evaluate_lesion_with_nan", c.bad / "lesion_nan.nii.gz", ["label map holds 1 NaN/infinite values"])
    evaluate_lesion(
        "evaluate_lesion_with_inf", lesion_file("lesion_inf.nii.gz", np.inf), ["label map holds 1 NaN/infinite values"]
    )
    evaluate_lesion("evaluate_lesion_negative", c.bad / "lesion_negative.nii.gz", ["label map holds 1 negative values"])
    evaluate_lesion(
        "evaluate_lesion_text_named_nii_gz",
        c.file("lesion_text.nii.gz", b"not an image\n"),
        ["unreadable NIfTI file"],
    )
    evaluate_lesion("evaluate_lesion_is_a_folder", empty, ["a folder", "annotation file"])
    evaluate_lesion("evaluate_methods_twice", c.image2d.parent / "lesion.nii.gz", [], "gxi,gxi")
    cases["evaluate_methods_twice"] = (cases["evaluate_methods_twice"][0], ["--methods", "gxi given twice"])

    # sources whose Patient Orientation cannot be used (no Image Orientation (Patient) to derive it from)
    def oriented(name, value):
        def change(ds):
            del ds.ImageOrientationPatient
            ds.PatientOrientation = value

        return edited(name, change)

    for name, file, value in [
        ("export_source_patient_orientation_garbage", "orientation_garbage.dcm", ["XX", "Y"]),
        ("export_source_patient_orientation_one_value", "orientation_one.dcm", "A"),
    ]:
        cases[name] = (
            ["export", "--image", str(oriented(file, value)), "--map", str(good_map), "--format", "sc"],
            ["Patient Orientation", "letters A, P, R, L, H, F", file],
        )

    # manifests whose cases would share an output folder, or that are not files
    manifest(
        "manifest_same_image_twice", {"testing": [{"image": image}, {"image": image}]}, ["'image'", "distinct ids"]
    )
    cases["manifest_is_a_folder"] = (
        ["explain", "--method", "gxi", "--manifest", str(empty)],
        ["a folder", "manifest file", "empty_folder"],
    )

    # an --out that exists as a file, or below one
    out_file = c.bad / "out_file.txt"
    cases["bench_data_out_is_a_file"] = (
        ["bench-data", "--out", str(out_file), "--cases", "1"],
        ["--out", "out_file.txt exists and is not a folder"],
    )
    cases["bench_data_out_below_a_file"] = (
        ["bench-data", "--out", str(out_file / "cases"), "--cases", "1"],
        ["--out", "out_file.txt (a folder above", "exists and is not a folder"],
    )
    cases["bench_data_manifest_is_a_folder"] = (
        ["bench-data", "--out", "OUT", "--cases", "1", "--manifest", str(empty)],
        ["--manifest", "empty_folder is a folder"],
    )
    cases["demo_out_is_a_file"] = (
        ["demo", "--out", str(out_file), "--cases", "1"],
        ["--out", "out_file.txt exists and is not a folder"],
    )
    return cases


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    c = Corpus(tmp_path_factory.mktemp("corpus"))
    c.cases = _build(c)
    c.hashes = _hashes(c.root / "src")
    return c


CASE_NAMES = [
    "series_missing_slice",
    "series_duplicate_slice",
    "series_two_series",
    "series_mixed_orientation",
    "series_with_text_file",
    "series_with_dicomdir",
    "series_slice_of_other_size",
    "series_with_empty_file",
    "series_with_random_file",
    "series_pixel_spacing_differs",
    "series_sheared",
    "series_irregular_step",
    "series_empty_folder",
    "series_slice_of_another_patient",
    "series_slice_of_another_study",
    "series_slice_of_another_frame_of_reference",
    "series_with_subfolder",
    "series_two_patients_exported",
    "export_from_series_of_two_patients",
    "file_without_study_uid",
    "file_zero_orientation",
    "file_zero_pixel_spacing",
    "file_empty",
    "file_random_bytes",
    "file_truncated",
    "file_without_meta_header",
    "file_palette_color",
    "file_rgb",
    "file_seg_as_image",
    "file_without_pixel_data",
    "file_undecodable_pixels",
    "file_structured_report",
    "file_missing",
    "file_png",
    "file_nifti_named_dcm",
    "nifti_singular_affine",
    "nifti_nan_affine",
    "nifti_nan_voxels",
    "nifti_4d",
    "nifti_truncated",
    "nifti_empty",
    "nifti_2d_image_for_3d_model",
    "nifti_3d_volume_for_2d_model",
    "arg_intensity_range_empty",
    "arg_intensity_range_text",
    "arg_device_banana",
    "arg_device_cuda_without_gpu",
    "arg_axcodes",
    "arg_negative_mask_size",
    "arg_method_args_not_json",
    "arg_method_args_list",
    "arg_method_unknown",
    "arg_method_keyword_unknown",
    "arg_method_args_empty",
    "arg_method_args_null",
    "arg_method_args_steps_and_steps",
    "arg_method_args_steps_for_gxi",
    "arg_method_args_steps_text",
    "arg_class_idx_negative",
    "arg_slices_empty_index",
    "arg_slices_empty",
    "arg_steps_zero",
    "arg_steps_for_gxi",
    "arg_model_missing",
    "arg_model_not_torchscript",
    "arg_model_class_path_not_a_module",
    "arg_model_class_path_without_weights",
    "arg_model_weights_garbage",
    "arg_export_unknown_format",
    "arg_export_from_nifti",
    "arg_class_idx_out_of_range",
    "arg_spatial_size_zero",
    "arg_spatial_size_text",
    "arg_no_image",
    "arg_out_is_a_file",
    "arg_out_is_the_series",
    "arg_out_inside_the_series",
    "manifest_id_escapes_out",
    "manifest_id_absolute",
    "manifest_deep_nesting",
    "manifest_huge_integer",
    "manifest_not_json",
    "manifest_without_image",
    "manifest_bool_label",
    "manifest_missing_file",
    "manifest_evaluate_without_lesions",
    "evaluate_out_inside_the_series",
    "bench_data_into_existing_dataset",
    "bench_data_no_cases",
    "export_complex_map",
    "export_map_of_wrong_shape",
    "export_map_with_nan",
    "export_map_out_of_range",
    "export_from_series_with_missing_slice",
    "export_map_missing",
    "export_map_truncated",
    "export_map_with_bytes_after_it",
    "export_lesion_with_nan",
    "export_lesion_nifti_with_nan",
    "export_lesion_negative",
    "evaluate_lesion_with_nan",
    "evaluate_lesion_with_inf",
    "evaluate_lesion_negative",
    "evaluate_lesion_text_named_nii_gz",
    "evaluate_lesion_is_a_folder",
    "evaluate_methods_twice",
    "export_source_patient_orientation_garbage",
    "export_source_patient_orientation_one_value",
    "manifest_same_image_twice",
    "manifest_is_a_folder",
    "bench_data_out_is_a_file",
    "bench_data_out_below_a_file",
    "bench_data_manifest_is_a_folder",
    "demo_out_is_a_file",
]


def test_the_corpus_is_large_enough(corpus):
    assert len(CASE_NAMES) >= 60
    assert set(corpus.cases) <= set(CASE_NAMES), sorted(set(corpus.cases) - set(CASE_NAMES))


def _in_folder(argv: list[str], folder: Path) -> list[str]:
    """``argv`` with ``--out folder/out`` added where it has none, and the placeholder ``OUT`` as ``folder/OUT``."""
    if "--out" not in argv:
        argv = [*argv, "--out", str(folder / "out")]
    return [str(folder / "OUT") if a == "OUT" else a for a in argv]


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_is_one_clear_error(corpus, name, tmp_path, capsys, monkeypatch):
    if name not in corpus.cases:
        pytest.skip("a CUDA device is present here")
    argv, texts = corpus.cases[name]
    monkeypatch.chdir(tmp_path)
    argv = _in_folder(argv, tmp_path)
    before = _tree(tmp_path)
    rc = main(argv)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2, (rc, err)
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in texts:
        assert text in err, (text, err)
    # nothing written outside --out, no source changed
    out = Path(argv[argv.index("--out") + 1])
    added = {p for p in _tree(tmp_path) - before if not (tmp_path / p).resolve().is_relative_to(out.resolve())}
    assert not added, added
    assert _hashes(corpus.root / "src") == corpus.hashes
    assert not (corpus.root / "escaped").exists() and not (corpus.root / "abs_saliency.nii.gz").exists()


def test_a_bad_case_among_good_ones_keeps_the_good_ones(corpus, tmp_path, capsys):
    """The first case is written (map and CSV row), the second is listed in failures.csv and named in the
    one-line error; the exit status is 2 (bad input)."""
    bad = corpus.bad / "empty.dcm"
    out = tmp_path / "out"
    rc = main(
        [
            "explain",
            "--method",
            "gxi",
            "--intensity-range=-1000,0",
            "--image",
            str(corpus.image2d),
            "--image",
            str(bad),
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "1 of 2 cases failed" in err and "case 2" in err and "empty.dcm" in err, err
    assert len(err.strip().splitlines()) == 1, err
    rows = (out / "explanations.csv").read_text().strip().splitlines()
    assert len(rows) == 2 and rows[1].startswith("image,")  # header and the first case
    assert nib.load(out / "image" / "image_saliency.nii.gz").shape[:2] == (96, 96)
    assert sorted(p.name for p in out.iterdir()) == ["explanations.csv", "failures.csv", "image"]
    failures = (out / "failures.csv").read_text().strip().splitlines()
    assert failures[0] == "case,image,error_type,error" and failures[1].startswith("empty,") and len(failures) == 2


def test_a_failed_only_case_leaves_only_its_failure(corpus, tmp_path, capsys):
    out = tmp_path / "new" / "out"
    rc = main(["explain", "--method", "gxi", "--image", str(corpus.bad / "empty.dcm"), "--out", str(out)])
    assert rc == 2, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["failures.csv"]


def test_debug_prints_the_traceback(corpus, tmp_path, capsys):
    rc = main(
        [
            "--debug",
            "explain",
            "--method",
            "gxi",
            "--image",
            str(corpus.bad / "empty.dcm"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("medhdm explain: error:")


def test_a_failure_of_the_run_exits_1(tmp_path, capsys, monkeypatch):
    """Not bad input: an error inside the run (here the model's forward pass) exits 1, one line."""
    import medhdm.study

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(medhdm.study, "explain_images", broken)
    image = write_lesionbench(tmp_path / "lb", 1, 2).parent / "case000" / "image.dcm"
    rc = main(["explain", "--method", "gxi", "--image", str(image), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 1 and "case 1" in err and "RuntimeError: CUDA out of memory" in err, err
    assert len(err.strip().splitlines()) == 1, err


def test_source_files_are_never_written(corpus):
    assert os.access(corpus.image2d, os.R_OK)
    assert _hashes(corpus.root / "src") == corpus.hashes


def test_a_rerun_resumes_and_another_configuration_needs_overwrite(corpus, tmp_path, capsys):
    """explain: the same command again skips the complete case (nothing rewritten, exit 0); another
    configuration over it is refused (exit 2, nothing touched) unless --overwrite, which redoes it."""
    out = tmp_path / "out"
    argv = [
        "explain",
        "--method",
        "gxi",
        "--intensity-range=-1000,0",
        "--image",
        str(corpus.image2d),
        "--out",
        str(out),
    ]
    assert main(argv) == 0, capsys.readouterr().err
    before = _hashes(out)
    assert main(argv) == 0
    assert "1 of 1 cases are complete" in capsys.readouterr().out
    assert _hashes(out) == before
    other = [*argv[:2], "gradcam", *argv[3:]]
    assert main(other) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "record.json" in err and "--overwrite" in err, err
    assert _hashes(out) == before
    assert main([*other, "--overwrite"]) == 0, capsys.readouterr().err
    assert _hashes(out) != before
    assert json.loads((out / "image" / "record.json").read_text())["configuration"]["method"] == "GradCAM"


def test_image_and_manifest_together_are_refused_by_the_parser(corpus, tmp_path, capsys):
    """``explain --image X --manifest M`` is an argparse error (exit 2) naming both options; nothing explained."""
    manifest = tmp_path / "m.json"
    manifest.write_text(json.dumps({"testing": [{"id": "m", "image": str(corpus.image2d)}]}))
    out = tmp_path / "out"
    argv = [
        "explain",
        "--method",
        "gxi",
        "--image",
        str(corpus.image2d),
        "--manifest",
        str(manifest),
        "--out",
        str(out),
    ]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err
    assert "argument --manifest: not allowed with argument --image" in err.strip().splitlines()[-1], err
    assert not out.exists()


def test_method_args_steps_sets_the_steps_of_every_phase(corpus, tmp_path, capsys):
    """``--method-args '{"steps": 3}'`` is HDM's steps (as ``--steps 3``): 3 in every phase of the record's settings."""
    out = tmp_path / "out"
    argv = [
        "explain",
        "--method",
        "hdm",
        "--intensity-range=-1000,0",
        "--image",
        str(corpus.image2d),
        "--out",
        str(out),
    ]
    assert main([*argv, "--method-args", '{"steps": 3, "max_stages": 1}']) == 0, capsys.readouterr().err
    settings = json.loads((out / "image" / "record.json").read_text())["configuration"]["settings"]
    phases = ("benchmark_objective", "volume_benchmark_objective", "auxiliary_objective")
    assert [settings[k]["steps"] for k in phases] == [3, 3, 3] and settings["max_stages"] == 1, settings


_UNDER_MEMORY_LIMIT = """
import resource, sys
import numpy, torch
from medhdm.cli import main
from medhdm.io.maps import load_case_map

size = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
limit = size * 1024 + (3 << 29)  # what this process holds now and 1.5 GiB more
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.argv[1] == "case_map":
    try:
        load_case_map(sys.argv[2], "case", (96, 96), numpy.eye(4))
    except ValueError as err:
        print(f"ValueError: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("shape", [(20000, 20000), (99999, 99999)])
def test_a_npy_header_claiming_a_huge_array_is_refused_before_reading_it(corpus, tmp_path, shape):
    """A 200-byte .npy whose header claims ``shape`` float64 (3.2 GB, 80 GB) is refused from its header, naming the
    file and both shapes, by ``export --map`` and by an evaluation's map folder (``load_case_map``), in a process that
    may not take 1.5 GiB more address space than it holds after its imports."""
    import subprocess
    import sys

    from numpy.lib import format as npy

    folder = tmp_path / "maps"
    folder.mkdir()
    huge = folder / "case.npy"
    with huge.open("wb") as fh:
        npy.write_array_header_1_0(fh, {"descr": "<f8", "fortran_order": False, "shape": shape})
        fh.write(b"\0" * 64)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {
        "export": [
            *("export", "--image", str(corpus.image2d), "--map", str(huge)),
            *("--format", "png", "--out", str(tmp_path / "out")),
        ],
        "case_map": ["case_map", str(folder)],
    }
    for name, argv in runs.items():
        run = subprocess.run(
            [sys.executable, "-c", _UNDER_MEMORY_LIMIT, *argv], capture_output=True, text=True, env=env, timeout=300
        )
        assert run.returncode == 2, (name, run.stderr)
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in run.stderr, (name, run.stderr)
        for text in ("case.npy", str(shape), "(96, 96)"):
            assert text in lines[0], (name, text, lines[0])
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["explain", "evaluate"])
def test_a_case_folder_that_exists_as_a_file_is_refused_before_any_work(corpus, tmp_path, capsys, command):
    """``--out`` holds a file with a case's name: one clear error naming it, before any case is explained."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "image").write_text("not a folder")
    manifest = tmp_path / "m.json"
    lesion = corpus.image2d.parent / "lesion.nii.gz"
    manifest.write_text(json.dumps({"testing": [{"id": "image", "image": str(corpus.image2d), "lesion": str(lesion)}]}))
    argv = {
        "explain": ["explain", "--method", "gxi", "--image", str(corpus.image2d)],
        "evaluate": ["evaluate", "--methods", "gxi", "--no-faithfulness", "--manifest", str(manifest)],
    }[command]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert f"--out: {out / 'image'} exists and is not a folder" in err and "case image" in err, err
    assert sorted(p.name for p in out.iterdir()) == ["image"]


def _source_without_orientation(corpus, folder: Path, name: str, change) -> Path:
    folder.mkdir(exist_ok=True)
    path = folder / f"{name}.dcm"
    shutil.copy(corpus.image2d, path)
    _edit(path, change)
    return path


def _oblique(ds):
    c, s = np.cos(0.5), np.sin(0.5)
    ds.ImageOrientationPatient = [c, s, 0.0, -s, c, 0.0]


def _unknown(value):
    def change(ds):
        del ds.ImageOrientationPatient
        ds.PatientOrientation = value

    return change


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("oblique", _oblique, ["LP", "PR"]),
        ("orientation_empty", _unknown(""), None),
        ("orientation_two_empty_values", _unknown(["", ""]), None),
        ("orientation_given", _unknown(["A", "FR"]), ["A", "FR"]),
    ],
)
def test_sc_export_writes_the_patient_orientation_dciodvfy_accepts(corpus, tmp_path, capsys, name, change, expected):
    """An oblique source gets its two- or three-letter Patient Orientation (highdicom takes single letters only); a
    source without Image Orientation (Patient) keeps its own, or an empty one (Type 2C: unknown) when it has none."""
    from validators import dciodvfy_errors

    source = _source_without_orientation(corpus, tmp_path / "src", name, change)
    out = tmp_path / "out"
    argv = ["export", "--image", str(source), "--map", str(corpus.bad / "good_map.npy"), "--format", "sc"]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    sc = out / "SC_0001.dcm"
    ds = pydicom.dcmread(sc)
    assert "PatientOrientation" in ds
    assert (list(ds.PatientOrientation) if ds.PatientOrientation else None) == expected
    errors, report = dciodvfy_errors(sc)
    assert errors == [], report


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.nan, "label map holds 1 NaN/infinite values"),
        (-np.inf, "label map holds 1 NaN/infinite values"),
        (-2, "label map holds 1 negative values (min -2)"),
        (0.5, "label map has non-integer values"),
    ],
)
def test_load_annotation_refuses_values_that_are_not_labels(corpus, tmp_path, value, message):
    from medhdm.io.annotations import ImageGrid, load_annotation
    from medhdm.io.dicom import read_dicom

    lesion = nib.load(corpus.image2d.parent / "lesion.nii.gz")
    data = np.asarray(lesion.dataobj).astype(np.float32)
    data[5, 5] = value
    path = _nifti(tmp_path / "labels.nii.gz", data, lesion.affine)
    with pytest.raises(ValueError, match=re.escape(f"labels.nii.gz: {message}")):
        load_annotation(path, ImageGrid.from_dicom(read_dicom(corpus.image2d)))


if __name__ == "__main__":  # python tests/test_bad_inputs.py: the corpus as a Markdown table
    import contextlib
    import io
    import tempfile

    root = Path(tempfile.mkdtemp())
    corpus_ = Corpus(root)
    built = _build(corpus_)
    print("| input | exit | message |\n| --- | --- | --- |")
    for case_name in CASE_NAMES:
        if case_name not in built:
            continue
        case_argv, _ = built[case_name]
        run_dir = root / "run" / case_name
        run_dir.mkdir(parents=True)
        case_argv = _in_folder(case_argv, run_dir)
        captured = io.StringIO()
        with contextlib.redirect_stderr(captured):
            status = main(case_argv)
        text = captured.getvalue().strip().split("error:", 1)[-1].strip().replace(f"{root}/src/bad/", "")
        text = re.sub(r"^case 1 \([^)]*\) failed: ", "", text.replace(f"{root}/", "")).replace("|", "/")
        print(f"| {case_name} | {status} | {text[:170]} |")
