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

A file's header is read and checked before its data: a ``.npy`` header's dtype (real numbers),
its shape against the grid the map must have (the same sizes, singleton axes aside) and the
file's size against the header (a truncated or padded file is refused), a NIfTI header's shape
likewise; only then is the array read, so a header that claims a huge array costs nothing.

:func:`load_lesion` reads a lesion mask for ``medhdm export --lesion`` the same way and checks
its values as :func:`medhdm.io.annotations.load_annotation` checks a NIfTI label map.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .annotations import check_label_values
from .axes import monai_to_dicom
from .dicom import DicomSource

__all__ = ["find_case_map", "load_case_map", "load_lesion", "load_map", "map_in_source_order"]

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


def _sizes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without its singleton axes (the sizes two layouts of one grid share)."""
    return tuple(int(s) for s in shape if s != 1)


def _load_npy(path: Path, where: str, fits, grid: str) -> np.ndarray:
    """The array in the ``.npy`` file ``path``, read only after its header passed the checks.

    Args:
        path: the file.
        where: how messages name it.
        fits: ``fits(shape)`` says whether the header's shape can be the grid's.
        grid: the grid as messages name it (``"the source grid (96, 96) ..."``).

    Raises:
        ValueError: an unreadable header, a dtype other than real numbers, a shape that is not the
            grid's, or a file whose size is not the one its header gives (truncated or padded).
    """
    from numpy.lib import format as npy

    try:
        with open(path, "rb") as fh:
            version = npy.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npy.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, _, dtype = npy.read_array_header_2_0(fh)
            else:
                raise ValueError(f".npy format version {version[0]}.{version[1]}, expected 1.0 or 2.0")
            offset = fh.tell()
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{where}: unreadable .npy file ({err})") from None
    if dtype.kind not in "fiub" or dtype.fields is not None or dtype.subdtype is not None:
        raise ValueError(f"{where}: a map of dtype {dtype}; expected real numbers (float, int or bool)")
    if not fits(shape):
        raise ValueError(f"{where}: the .npy header's shape {shape} does not match {grid}")
    needed = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = path.stat().st_size - offset
    if held != needed:
        raise ValueError(
            f"{where}: the file holds {held} bytes of array data where its header ({shape}, {dtype}) gives "
            f"{needed}: {'truncated' if held < needed else 'extra bytes after the array'}"
        )
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{where}: unreadable .npy file ({err})") from None


def _nifti_header(path: Path, where: str):
    """The NIfTI image in ``path`` (header read, data not yet), its data dtype checked."""
    import nibabel as nib

    try:
        image = nib.load(path)
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{where}: unreadable NIfTI file ({err})") from None
    if image.get_data_dtype().kind not in "fiub":
        raise ValueError(f"{where}: a map of dtype {image.get_data_dtype()}; expected real numbers")
    return image


def _nifti_data(image, where: str) -> np.ndarray:
    try:
        return np.asarray(image.dataobj, dtype=np.float64)
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{where}: unreadable NIfTI file ({err})") from None


def _source_grid_shape(shape: tuple[int, ...], affine, source: DicomSource, where: str) -> tuple[int, int, int]:
    """``shape`` (MONAI/NIfTI order, trailing singleton axes aside) as the source grid's ``(W, H, D)``, checked with
    the map's RAS ``affine`` against ``source``'s.

    Raises:
        ValueError: naming ``where``: another shape or an affine more than 0.01 mm away from the source's.
    """
    shape = tuple(int(s) for s in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) == 2:
        shape = (*shape, 1)
    expected = source.pixels.shape[::-1]
    if shape != expected:
        raise ValueError(
            f"{where}: map shape {shape} is not the source grid (columns, rows, slices) "
            f"{expected}; resample the map onto the source first"
        )
    difference = np.abs(np.asarray(affine, dtype=np.float64) - source.affine_ras).max()
    if difference > _AFFINE_TOL_MM:
        raise ValueError(
            f"{where}: the map's affine differs from the source's by up to {difference:.3g} mm; resample the map "
            "onto the source grid first"
        )
    return shape


def map_in_source_order(data, affine, source: DicomSource, where: str = "saliency") -> np.ndarray:
    """A map in MONAI/NIfTI order (``(W, H)`` or ``(W, H, D)``, a channel-first ``(1, ...)`` taken as such) with its
    ``(4, 4)`` RAS ``affine``, checked against ``source``'s grid, in ``source`` order (not yet range-checked).

    This is how a map that MONAI took back to the source grid (``Invertd``) meets the source study.

    Raises:
        ValueError: naming ``where``: a map that is not on the source grid (shape or affine).
    """
    array = np.asarray(data, dtype=np.float64)
    if array.ndim in (3, 4) and array.shape[0] == 1:
        array = array[0]
    if np.shape(affine) != (4, 4):
        raise ValueError(f"{where}: expected a (4, 4) RAS affine, got shape {np.shape(affine)}")
    return monai_to_dicom(array.reshape(_source_grid_shape(array.shape, affine, source, where)))


def load_map(path: str | os.PathLike, source: DicomSource) -> np.ndarray:
    """Load the map in ``path`` as an array in ``source`` order (not yet range-checked)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such map file")
    name = path.name.lower()
    if name.endswith(".npy"):
        grid = f"the source grid {source.shape} ({'series D, H, W' if source.is_series else 'image H, W'})"
        return _load_npy(path, str(path), lambda shape: _sizes(shape) == _sizes(source.pixels.shape), grid)
    if name.endswith((".nii", ".nii.gz")):
        image = _nifti_header(path, str(path))
        shape = _source_grid_shape(image.shape, image.affine, source, str(path))  # header checked before the data
        return monai_to_dicom(_nifti_data(image, str(path)).reshape(shape))
    raise ValueError(f"{path}: unknown map format; expected .npy, .nii or .nii.gz")


def load_lesion(path: str | os.PathLike, source: DicomSource) -> np.ndarray:
    """The lesion mask in ``path`` (``.npy`` or NIfTI, read as :func:`load_map` reads a map) in ``source`` order.

    Returns:
        int32 labels, 0 for background.

    Raises:
        ValueError: naming the file: NaN or infinite values, non-integer or negative labels (see
            :func:`medhdm.io.annotations.check_label_values`), or what :func:`load_map` refuses.
    """
    return check_label_values(load_map(path, source), f"{path}: lesion mask")


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
    grid = f"the image grid {shape} (MONAI/NIfTI order: column, row[, slice])"
    if path.name.lower().endswith(".npy"):
        data = np.asarray(_load_npy(path, where, lambda s: _sizes(s) == _sizes(shape), grid), dtype=np.float64)
    else:
        image = _nifti_header(path, where)
        if _sizes(image.shape) != _sizes(shape):
            raise ValueError(f"{where}: map shape {tuple(image.shape)} does not match {grid}")
        data = _nifti_data(image, where)
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
