"""LesionBench on disk: synthetic lesion cases as DICOM and NIfTI, with masks, SEGs and a manifest.

Each case of :func:`medhdm.data.lesions.make_case` (real CT/MR anatomy with inserted
lesions and bright distractors) is written as a study of its own:

- ``caseNNN/image.dcm`` (2D, one CT image) or ``caseNNN/image/`` (3D, a CT series);
- ``caseNNN/image.nii.gz``: the same pixels with the DICOM's affine;
- ``caseNNN/lesion.nii.gz``: the lesion label map (0 background, 1..n lesions) on that grid;
- ``caseNNN/lesion_seg.dcm``: the same lesions as a DICOM SEG (cases with lesions);
- ``manifest.json`` (or ``manifest_path``): the cases in medhdm's manifest format
  (``data_manifests/README.md``).

Intensities ``v`` (about 0 to 1.6) are stored as CT numbers ``HU = 1000 v - 1000`` with a
window (centre -250, width 1700) that shows them all;
:data:`LESIONBENCH_INTENSITY_RANGE` maps them back to ``v`` for the shipped classifiers.
UIDs derive from the seed, so the same arguments write the same files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write
from .lesions import make_dataset

__all__ = ["LESIONBENCH_INTENSITY_RANGE", "write_lesionbench"]

#: CT numbers that map to 0 and 1 on the scale the shipped classifiers were trained on.
LESIONBENCH_INTENSITY_RANGE = (-1000.0, 0.0)

_FIELD_OF_VIEW_MM = 250.0


def _segment_description():
    import highdicom as hd
    from pydicom.sr.codedict import codes

    return hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def write_lesionbench(
    out_dir: str | os.PathLike,
    n_cases: int = 8,
    spatial_dims: int = 2,
    seed: int = 4242,
    spatial_size: tuple[int, ...] | None = None,
    manifest_path: str | os.PathLike | None = None,
    lesion_weights: tuple[float, float, float, float] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write ``n_cases`` LesionBench cases and their manifest into ``out_dir``.

    Args:
        out_dir: output folder (created; existing case folders are overwritten).
        n_cases: number of cases (lesion counts 0-3, half of them without lesions).
        spatial_dims: 2 (one CT image per case) or 3 (a CT series per case).
        seed: seeds the cases and the UIDs.
        spatial_size: default ``(96, 96)`` in 2D, ``(24, 48, 48)`` in 3D.
        manifest_path: where the manifest goes (default ``out_dir/manifest.json``); its
            paths are relative to its own folder, which must contain ``out_dir``.
        lesion_weights: relative frequencies of 0, 1, 2, 3 lesions (default: those of
            :func:`medhdm.data.lesions.make_dataset`, half the cases lesion-free).
        overwrite: replace existing case folders and manifest; ``False`` refuses (``FileExistsError``)
            before anything is written (``medhdm bench-data`` without ``--overwrite``).

    Returns:
        the path of the manifest.
    """
    import pydicom
    from pydicom.data import get_testdata_file

    if spatial_dims not in (2, 3):
        raise ValueError(f"spatial_dims: expected 2 or 3, got {spatial_dims}")
    if n_cases < 1:
        raise ValueError(f"n_cases: expected at least 1, got {n_cases}")
    size = tuple(spatial_size or ((96, 96) if spatial_dims == 2 else (24, 48, 48)))
    out = Path(out_dir)
    manifest_file = Path(manifest_path) if manifest_path is not None else out / "manifest.json"
    base = manifest_file.resolve().parent
    if base not in (out.resolve(), *out.resolve().parents):
        raise ValueError(f"manifest_path: {manifest_file} must lie in {out} or a folder above it")
    if not overwrite:
        existing = [p for p in (manifest_file, *(out / f"case{i:03d}" for i in range(n_cases))) if p.exists()]
        if existing:
            raise FileExistsError(
                f"out_dir: {existing[0]} exists ({len(existing)} of the outputs do); "
                "give another folder or overwrite=True"
            )
    out.mkdir(parents=True, exist_ok=True)
    template = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    cases = (
        make_dataset(seed, n_cases, size)
        if lesion_weights is None
        else make_dataset(seed, n_cases, size, weights=lesion_weights)
    )
    entries = [_write_case(case, i, out, base, template, spatial_dims, seed) for i, case in enumerate(cases)]
    manifest = {
        "name": f"lesionbench{spatial_dims}d",
        "description": (
            f"LesionBench {spatial_dims}D: {n_cases} synthetic lesion cases on real CT/MR anatomy "
            f"(seed {seed}); CT numbers HU = 1000 v - 1000. Each case also has image.nii.gz and, "
            "when it has lesions, lesion_seg.dcm."
        ),
        "classes": ["no lesion", "lesion"],
        "generator": f"medhdm bench-data --cases {n_cases} --dims {spatial_dims} --seed {seed}",
        "testing": entries,
    }
    atomic_write(manifest_file, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest_file


def _write_case(case, i: int, out: Path, base: Path, template, spatial_dims: int, seed: int) -> dict:
    """Write one case (DICOM image or series, NIfTI image and lesion, SEG) into ``out/case<i>``; its manifest entry."""
    from pydicom.uid import generate_uid

    from ..io.axes import dicom_to_monai
    from ..io.dicom import read_dicom
    from ..io.nifti import write_nifti
    from .dicom_series import write_series

    name = f"case{i:03d}"
    folder = out / name
    folder.mkdir(exist_ok=True)
    uid_seed = f"lesionbench-{spatial_dims}d-{seed}-{i}"
    image = case.image[0] if spatial_dims == 3 else case.image[0][None]  # (D, H, W)
    labels = case.lesions[0] if spatial_dims == 3 else case.lesions[0][None]
    overrides = {
        "PatientID": f"LB{spatial_dims}D-{seed}-{i:03d}",
        "PatientName": f"LesionBench^Case{i:03d}",
        "StudyInstanceUID": generate_uid(entropy_srcs=[uid_seed, "study"]),
        "FrameOfReferenceUID": generate_uid(entropy_srcs=[uid_seed, "frame"]),
        "StudyID": name,
        "AccessionNumber": "",
        # The whole stored range (v from about -0.1 to 1.6) in view.
        "WindowCenter": "-250",
        "WindowWidth": "1700",
    }
    spacing = _FIELD_OF_VIEW_MM / image.shape[-1]
    hu = np.round(1000.0 * image - 1000.0)
    target = folder / "image" if spatial_dims == 3 else folder / ".image_tmp"
    write_series(
        template,
        hu,
        target,
        slice_spacing=3.0 if spatial_dims == 3 else 1.0,
        file_order_seed=i,
        series_description=f"LesionBench {spatial_dims}D {name}",
        pixel_spacing=(spacing, spacing),
        uid_seed=uid_seed,
        overrides=overrides,
    )
    if spatial_dims == 2:
        (target / "IM0000.dcm").replace(folder / "image.dcm")
        target.rmdir()
        image_path = folder / "image.dcm"
    else:
        image_path = target
    source = read_dicom(image_path)
    write_nifti(folder / "image.nii.gz", dicom_to_monai(source.pixels).astype(np.int16), source.affine_ras)
    write_nifti(folder / "lesion.nii.gz", dicom_to_monai(labels).astype(np.uint8), source.affine_ras)
    if case.n_lesions > 0:
        _write_seg(source, labels, uid_seed, folder / "lesion_seg.dcm")
    return {
        "id": name,
        "image": str(image_path.resolve().relative_to(base)),
        "lesion": str((folder / "lesion.nii.gz").resolve().relative_to(base)),
        "label": int(case.label),
    }


def _write_seg(source, labels: np.ndarray, uid_seed: str, path: Path) -> None:
    """A binary DICOM SEG of ``labels > 0`` ``(D, H, W)`` on the source images, with UIDs from ``uid_seed``."""
    import highdicom as hd
    from pydicom.uid import generate_uid

    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=labels > 0,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment_description()],
        series_instance_uid=generate_uid(entropy_srcs=[uid_seed, "seg-series"]),
        series_number=300,
        sop_instance_uid=generate_uid(entropy_srcs=[uid_seed, "seg"]),
        instance_number=1,
        manufacturer="medhdm",
        manufacturer_model_name="LesionBench",
        software_versions="medhdm",
        device_serial_number="none",
        omit_empty_frames=False,
    )
    atomic_write(path, lambda p: seg.save_as(p))
