"""Reading saliency map files: onto a DICOM source's grid (:func:`load_map`), or a map made
elsewhere for one case of an evaluation (:func:`load_case_map`).

:func:`load_map` accepts two layouts, and nothing is resampled silently:

- ``.npy``: an array already in :class:`~medhdm.io.dicom.DicomSource` order,
  ``(H, W)`` or ``(D, H, W)`` (leading singleton axes allowed);
- ``.nii`` / ``.nii.gz``: a NIfTI volume on the source grid, as
  :func:`medhdm.export.export_nifti` writes it (axes column, row, slice; the source's
  RAS affine). Another affine is an error that asks for resampling first.

:func:`load_case_map` finds ``<case id>.nii.gz`` (or ``.nii``), ``<case id>_saliency.nii.gz``,
``<case id>/<case id>_saliency.nii.gz`` (as ``medhdm explain`` writes it, so its ``--out`` can be
given) or ``<case id>.npy`` in a folder. Both are in **MONAI/NIfTI
order** ``(W, H)`` / ``(W, H, D)`` (column, row, slice: the order of the NIfTI data, of
``nibabel``'s ``get_fdata()`` and of arrays from ``monai.transforms.LoadImage``), on the
case's image grid; a NIfTI file's affine must be the image's. Values must be finite and in
[0, 1], as medhdm's maps are (signed attributions: normalise first, e.g. ``|a| / max |a|``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .axes import monai_to_dicom
from .dicom import DicomSource

__all__ = ["find_case_map", "load_case_map", "load_map"]

#: the file names :func:`find_case_map` tries, in this order (``{id}`` the case id)
CASE_MAP_NAMES = (
    "{id}.nii.gz",
    "{id}_saliency.nii.gz",
    "{id}/{id}_saliency.nii.gz",
    "{id}.nii",
    "{id}_saliency.nii",
    "{id}.npy",
)
_RANGE_TOL = 1e-6

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
        if not (
            np.issubdtype(data.dtype, np.floating) or np.issubdtype(data.dtype, np.integer) or data.dtype == np.bool_
        ):
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
            raise ValueError(
                f"{path}: NIfTI shape {data.shape} is not the source grid (columns, rows, slices) "
                f"{expected}; resample the map onto the source first"
            )
        if np.abs(image.affine - source.affine_ras).max() > _AFFINE_TOL_MM:
            raise ValueError(
                f"{path}: NIfTI affine differs from the source's by up to "
                f"{np.abs(image.affine - source.affine_ras).max():.3g} mm; resample the map onto the "
                "source grid first"
            )
        return monai_to_dicom(data)
    raise ValueError(f"{path}: unknown map format; expected .npy, .nii or .nii.gz")


def find_case_map(directory: str | os.PathLike, case_id: str) -> Path:
    """The map file of ``case_id`` in ``directory`` (names in :data:`CASE_MAP_NAMES`); exactly one must exist."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: no such map folder")
    found = [directory / n.format(id=case_id) for n in CASE_MAP_NAMES if (directory / n.format(id=case_id)).is_file()]
    if not found:
        raise ValueError(
            f"case {case_id}: no map in {directory} (expected one of "
            f"{', '.join(n.format(id=case_id) for n in CASE_MAP_NAMES)})"
        )
    if len(found) > 1:
        raise ValueError(f"case {case_id}: several maps in {directory} ({', '.join(p.name for p in found)}); keep one")
    return found[0]


def load_case_map(directory: str | os.PathLike, case_id: str, shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
    """The map of ``case_id`` in ``directory`` on the case's image grid, MONAI/NIfTI order, float64 in [0, 1].

    Args:
        directory: folder of one method's maps (see the module docstring for names and order).
        case_id: the manifest's case id.
        shape: the image grid's shape in MONAI order, ``(W, H)`` or ``(W, H, D)``.
        affine: the image's ``(4, 4)`` RAS affine; a NIfTI map's affine must equal it.

    Raises:
        ValueError: naming the case, the file and the problem (shape, grid or range).
    """
    path = find_case_map(directory, case_id)
    where = f"case {case_id}: {path}"
    shape = tuple(int(s) for s in shape)
    if path.name.lower().endswith(".npy"):
        try:
            data = np.asarray(np.load(path, allow_pickle=False), dtype=np.float64)
        except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
            raise ValueError(f"{where}: unreadable .npy file ({err})") from None
    else:
        import nibabel as nib

        try:
            image = nib.load(path)
            data = np.asarray(image.dataobj, dtype=np.float64)
        except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
            raise ValueError(f"{where}: unreadable NIfTI file ({err})") from None
        size = len(shape)
        expected = np.asarray(affine, dtype=np.float64)
        # a 2D image's grid: compare the in-plane part (NIfTI stores a third axis anyway)
        rows = slice(0, 3)
        cols = [*range(size), 3] if size == 2 else list(range(4))
        difference = np.abs(image.affine[rows][:, cols] - expected[rows][:, cols]).max()
        if difference > _AFFINE_TOL_MM:
            raise ValueError(
                f"{where}: the map's affine differs from the image's by up to {difference:.3g} mm; "
                "the map must lie on the image's grid (resample it first)"
            )
    while data.ndim > len(shape) and data.shape[-1] == 1:
        data = data[..., 0]
    if data.shape != shape:
        raise ValueError(
            f"{where}: map shape {data.shape} is not the image grid {shape} (MONAI/NIfTI order: column, row[, slice])"
        )
    if not np.isfinite(data).all():
        raise ValueError(f"{where}: the map holds {int((~np.isfinite(data)).sum())} NaN or infinite values")
    low, high = float(data.min()), float(data.max())
    if low < -_RANGE_TOL or high > 1 + _RANGE_TOL:
        raise ValueError(
            f"{where}: map values in [{low:.4g}, {high:.4g}], expected [0, 1] (normalise first, e.g. |a| / max |a|)"
        )
    return np.clip(data, 0.0, 1.0)
