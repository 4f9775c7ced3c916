"""A MONAI ``ImageReader`` for DICOM files and series folders, built on :func:`read_dicom`.

Plug it into MONAI's loaders::

    LoadImage(reader=DicomSeriesReader(), image_only=True)(path)
    LoadImaged(keys="image", reader=DicomSeriesReader())

Arrays follow MONAI's (and NIfTI's) convention: axis 0 runs along the columns, axis 1
along the rows, axis 2 (series only) along the slices, matching ``affine`` (RAS). The
metadata carries the DICOM provenance needed to write derived objects back into the
study: Study/Series/Frame of Reference UIDs, the SOP Instance UID of every slice in
volume order, patient and study identifiers, modality and the source window. Unlike
MONAI's ``PydicomReader`` it refuses folders with two series, missing or duplicate
slices and mixed orientations (see :func:`medhdm.io.dicom.read_dicom`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys

from .axes import dicom_to_monai
from .dicom import DicomSource, first_number, read_dicom

__all__ = ["DicomSeriesReader", "dicom_meta", "is_dicom_path"]


def is_dicom_path(path: str | os.PathLike) -> bool:
    """A folder (read as a series), a ``.dcm`` file, or a file with the DICOM preamble."""
    path = Path(path)
    if path.is_dir():
        return True
    if path.suffix.lower() in (".dcm", ".dicom"):
        return True
    if path.is_file():
        with open(path, "rb") as f:
            head = f.read(132)
        return head[128:132] == b"DICM"
    return False


def dicom_meta(source: DicomSource) -> dict:
    """Provenance and display metadata of a DICOM source.

    Only strings and numbers, so that MONAI's collation of a batch's metadata works:
    lists (the files, the SOP Instance UID of every slice in volume order) are joined
    with a backslash, DICOM's multi-value separator. Absent values are left out.
    """
    first = source.first
    meta = {
        "dicom_source": "\\".join(str(p) for p in source.paths if p is not None),
        "StudyInstanceUID": str(first.get("StudyInstanceUID", "")),
        "SeriesInstanceUID": str(first.get("SeriesInstanceUID", "")),
        "FrameOfReferenceUID": str(first.get("FrameOfReferenceUID", "")),
        "SOPInstanceUIDs": "\\".join(str(d.SOPInstanceUID) for d in source.datasets),
        "SOPClassUID": str(first.get("SOPClassUID", "")),
        "PatientID": str(first.get("PatientID", "")),
        "AccessionNumber": str(first.get("AccessionNumber", "")),
        "Modality": str(first.get("Modality", "")),
        "WindowCenter": first_number(first.get("WindowCenter")),
        "WindowWidth": first_number(first.get("WindowWidth")),
    }
    return {k: v for k, v in meta.items() if v is not None}


class DicomSeriesReader(ImageReader):
    """Read a DICOM file or a one-series folder for ``monai.transforms.LoadImage``."""

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        return bool(names) and all(is_dicom_path(n) for n in names)

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs) -> DicomSource:
        if not isinstance(data, (str, os.PathLike)):
            data = list(data)
            if len(data) != 1:
                raise ValueError("DicomSeriesReader reads one file or one series folder at a time")
            data = data[0]
        return read_dicom(data)

    def get_data(self, img: DicomSource) -> tuple[np.ndarray, dict]:
        array = dicom_to_monai(img.pixels)  # (columns, rows, slices)
        if not img.is_series:
            array = array[..., 0]
        meta = dicom_meta(img)
        meta[MetaKeys.AFFINE] = img.affine_ras.copy()
        meta[MetaKeys.ORIGINAL_AFFINE] = img.affine_ras.copy()
        meta[MetaKeys.SPATIAL_SHAPE] = np.asarray(array.shape)
        meta[MetaKeys.SPACE] = SpaceKeys.RAS
        meta[MetaKeys.ORIGINAL_CHANNEL_DIM] = float("nan")
        meta["filename_or_obj"] = str(img.series_folder or (img.paths[0] or ""))
        return np.ascontiguousarray(array), meta
