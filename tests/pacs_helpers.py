"""What the PACS tests share: a private Orthanc (or the reason there is none), LesionBench studies, Orthanc's files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medhdm.pacs.orthanc import LocalOrthanc, orthanc_available

REQUIRE_VALIDATORS = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"

#: the AE title the tests call Orthanc from (registered in its DicomModalities for C-FIND/C-GET)
CLIENT_AET = "MEDHDM"


def require_orthanc() -> None:
    """Skip (fail in CI, ``MEDHDM_REQUIRE_VALIDATORS=1``) when Orthanc or its DICOMweb plugin is missing."""
    why = orthanc_available()
    if why:
        if REQUIRE_VALIDATORS:
            pytest.fail(f"{why}; required (MEDHDM_REQUIRE_VALIDATORS=1)")
        pytest.skip(why)


def start_orthanc(folder: Path, **kwargs) -> LocalOrthanc:
    require_orthanc()
    kwargs.setdefault("modalities", {CLIENT_AET: [CLIENT_AET, "127.0.0.1", 11112]})
    return LocalOrthanc(folder, **kwargs).start()


def bench_study(root: Path, dims: int, seed: int = 7) -> dict:
    """A LesionBench case with a lesion: ``{"files", "study_uid", "image", "lesion" (NIfTI), "annotation" (SEG)}``."""
    import json

    from medhdm.data.bench_files import write_lesionbench

    manifest = json.loads(write_lesionbench(root, n_cases=4, spatial_dims=dims, seed=seed).read_text())
    for entry in manifest["testing"]:
        case = root / Path(entry["image"]).parent.name
        if (case / "lesion_seg.dcm").exists():
            image = root / entry["image"]
            files = sorted(image.glob("*.dcm")) if image.is_dir() else [image]
            return {
                "files": files,
                "study_uid": str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID),
                "image": image,
                "lesion": root / entry["lesion"],
                "annotation": case / "lesion_seg.dcm",
            }
    raise AssertionError("no LesionBench case with a lesion")


def instance_file(orthanc: LocalOrthanc, instance_id: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(orthanc.rest("GET", f"/instances/{instance_id}/file").content))


def derived_series(orthanc: LocalOrthanc, study_uid: str) -> dict[str, dict]:
    """The study's medhdm series by kind (``sc``, ``pm``, ``seg``, ``sr``), each with its datasets."""
    kinds = {}
    for series in orthanc.series_of(study_uid):
        if not series["description"].startswith("medhdm"):
            continue
        datasets = [instance_file(orthanc, i) for i in orthanc.instances_of_series(series["id"])]
        sop = str(datasets[0].SOPClassUID)
        kind = {
            "1.2.840.10008.5.1.4.1.1.7": "sc",
            "1.2.840.10008.5.1.4.1.1.30": "pm",
            "1.2.840.10008.5.1.4.1.1.66.4": "seg",
            "1.2.840.10008.5.1.4.1.1.88.34": "sr",
        }[sop]
        assert kind not in kinds, f"two {kind} series in the study"
        kinds[kind] = {**series, "datasets": datasets}
    return kinds


def png_pixels(data: bytes) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(io.BytesIO(data), format="png"))


def enhanced_study(root: Path, seed: int = 13) -> dict:
    """A LesionBench 3D series as one Legacy Converted Enhanced CT (multi-frame) instance, in a new study."""
    import highdicom as hd

    from medhdm.io import read_dicom

    study = bench_study(root / "bench", 3, seed=seed)
    series = read_dicom(study["image"])
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        series.datasets,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path = root / "enhanced.dcm"
    mf.save_as(path)
    return {"files": [path], "study_uid": str(mf.StudyInstanceUID), "frames": len(series.datasets)}
