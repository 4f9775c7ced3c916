"""Reading a saliency map file onto a DICOM source's grid.

Two layouts are accepted, and nothing is resampled silently:

- ``.npy``: an array already in :class:`~medhdm.io.dicom.DicomSource` order,
  ``(H, W)`` or ``(D, H, W)`` (leading singleton axes allowed);
- ``.nii`` / ``.nii.gz``: a NIfTI volume on the source grid, as
  :func:`medhdm.export.export_nifti` writes it (axes column, row, slice; the source's
  RAS affine). Another affine is an error that asks for resampling first.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .axes import monai_to_dicom
from .dicom import DicomSource

__all__ = ["load_map"]

_AFFINE_TOL_MM = 1e-2


def load_map(path: str | os.PathLike, source: DicomSource) -> np.ndarray:
    """Load the map in ``path`` as an array in ``source`` order (not yet range-checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such map file")
    name = path.name.lower()
    if name.endswith(".npy"):
        try:
            data = np.load(path, allow_pickle=False)
        except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
            raise ValueError(f"{path}: unreadable .npy file ({err})") from None
        if not (np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer)
                or data.dtype == np.bool_):
            raise ValueError(f"{path}: a map of dtype {data.dtype}; expected real numbers (float, int or bool)")
        return data
    if name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            image = nib.load(path)
            if image.get_data_dtype().kind not in "fiub":
                raise ValueError(f"a map of dtype {image.get_data_dtype()}; expected real numbers")
            data = np.asarray(image.dataobj, dtype=np.float64)
        except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
            raise ValueError(f"{path}: unreadable NIfTI file ({err})") from None
        while data.ndim > 3 and data.shape[-1] == 1:
            data = data[..., 0]
        if data.ndim == 2:
            data = data[..., None]
        expected = source.pixels.shape[::-1]
        if data.shape != expected:
            raise ValueError(f"{path}: NIfTI shape {data.shape} is not the source grid (columns, rows, slices) "
                             f"{expected}; resample the map onto the source first")
        if np.abs(image.affine - source.affine_ras).max() > _AFFINE_TOL_MM:
            raise ValueError(f"{path}: NIfTI affine differs from the source's by up to "
                             f"{np.abs(image.affine - source.affine_ras).max():.3g} mm; resample the map onto the "
                             "source grid first")
        return monai_to_dicom(data)
    raise ValueError(f"{path}: unknown map format; expected .npy, .nii or .nii.gz")
