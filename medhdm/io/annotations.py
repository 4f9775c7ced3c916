"""Lesion annotations on an image's grid: NIfTI label maps, DICOM SEG, RTSTRUCT.

All three come back as an integer label array on the image grid in MONAI/NIfTI array
order (``(W, H)`` or ``(W, H, D)`` for DICOM images; the file's order for NIfTI), 0 for
background. Geometry is checked, never assumed:

- NIfTI: same shape and affine -> used as is; another grid in the same space ->
  nearest-neighbour resampling with a warning; no overlap with the image -> error. The
  values must be labels (:func:`check_label_values`): finite, whole numbers, not negative.
- DICOM SEG (read with highdicom): its Frame of Reference must be the image's and it must
  reference the image's SOP instances; frames are matched to slices by SOP Instance UID.
- RTSTRUCT: the ROI's Frame of Reference must be the image's; every contour must lie on
  a slice of the image (within a quarter of the slice spacing); contours are rasterised
  (pixel centres inside the polygon, even-odd rule for holes) with matplotlib's ``Path``.
  Every ROI (or the named ones) becomes one label.

highdicom reads SEG; for RTSTRUCT neither pydicom nor highdicom offers rasterisation,
hence the polygon filling here.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from scipy import ndimage

from .axes import dicom_to_monai
from .dicom import LPS_TO_RAS, DicomSource

__all__ = ["ImageGrid", "check_label_values", "load_annotation"]

_AFFINE_TOL = 1e-3


@dataclass(frozen=True)
class ImageGrid:
    """The grid an annotation must land on.

    Attributes:
        shape: spatial shape in MONAI/NIfTI array order.
        affine: ``(4, 4)`` index -> RAS mm.
        frame_of_reference_uid: the image's Frame of Reference UID (DICOM), or ``None``.
        sop_instance_uids: the SOP Instance UID of every slice in array order (DICOM), or ``None``.
    """

    shape: tuple[int, ...]
    affine: np.ndarray
    frame_of_reference_uid: str | None = None
    sop_instance_uids: tuple[str, ...] | None = None

    @classmethod
    def from_dicom(cls, source: DicomSource) -> ImageGrid:
        shape = tuple(source.pixels.shape[::-1]) if source.is_series else tuple(source.pixels.shape[:0:-1])
        return cls(
            shape,
            source.affine_ras,
            str(source.first.get("FrameOfReferenceUID", "")) or None,
            tuple(str(d.SOPInstanceUID) for d in source.datasets),
        )

    @classmethod
    def from_meta(cls, shape: tuple[int, ...], affine, meta: dict) -> ImageGrid:
        """From a spatial shape, an affine and the metadata of :class:`~medhdm.io.reader.DicomSeriesReader`."""
        uids = meta.get("SOPInstanceUIDs")
        return cls(
            tuple(int(s) for s in shape),
            np.asarray(affine, dtype=np.float64),
            meta.get("FrameOfReferenceUID") or None,
            tuple(uids.split("\\")) if uids else None,
        )

    @classmethod
    def from_image(cls, image) -> ImageGrid:
        """From a loaded ``(1, *S)`` MetaTensor (see :func:`medhdm.pipeline.load_image`)."""
        return cls.from_meta(image.shape[1:], image.affine, image.meta)


def check_label_values(data: np.ndarray, where: str) -> np.ndarray:
    """``data`` as int32 labels (0 = background), refused unless every value is a finite whole number >= 0.

    Args:
        data: a label map (any real dtype).
        where: names the map at the start of messages, e.g. ``"lesion.nii.gz: label map"`` (then
            ``"lesion.nii.gz: label map holds 3 NaN/infinite values; ..."``).

    Raises:
        ValueError: NaN or infinite values, values that are not whole numbers, negative values,
            or labels beyond int32.
    """
    data = np.asarray(data)
    if data.dtype.kind not in "fiub":
        raise ValueError(f"{where} has values of dtype {data.dtype}; expected 0 (background) and lesion labels")
    if data.dtype.kind == "f":
        bad = int((~np.isfinite(data)).sum())
        if bad:
            raise ValueError(f"{where} holds {bad} NaN/infinite values; expected 0 (background) and lesion labels")
        if not np.allclose(data, np.round(data)):
            raise ValueError(f"{where} has non-integer values; expected 0 (background) and lesion labels")
        data = np.round(data)
    if data.size and data.min() < 0:
        raise ValueError(
            f"{where} holds {int((data < 0).sum())} negative values (min {data.min():g}); "
            "expected 0 (background) and positive lesion labels"
        )
    if data.size and data.max() > np.iinfo(np.int32).max:
        raise ValueError(f"{where} holds the label {data.max():g}, which is beyond the int32 range")
    return data.astype(np.int32)


def _nifti_on_grid(path: Path, grid: ImageGrid) -> np.ndarray:
    import nibabel as nib

    try:
        image = nib.load(path)
        data = np.asarray(image.dataobj)
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{path}: unreadable NIfTI file ({type(err).__name__}: {err})") from None
    while data.ndim > len(grid.shape) and data.shape[-1] == 1:
        data = data[..., 0]
    data = check_label_values(data, f"{path}: label map")
    if data.shape == grid.shape and np.abs(image.affine - grid.affine).max() <= _AFFINE_TOL:
        return data.astype(np.int32)
    if data.ndim != len(grid.shape):
        raise ValueError(f"{path}: a {data.ndim}D label map for a {len(grid.shape)}D image")
    # Map the image's voxel indices into the label map's and resample nearest-neighbour.
    nd = data.ndim
    img_affine = grid.affine if nd == 3 else _as_2d(grid.affine)
    lab_affine = image.affine if nd == 3 else _as_2d(image.affine)
    index_map = np.linalg.inv(lab_affine) @ img_affine
    corners = np.array(np.meshgrid(*[[0, s - 1] for s in grid.shape], indexing="ij")).reshape(nd, -1)
    mapped = index_map[:nd, :nd] @ corners + index_map[:nd, nd : nd + 1]
    lo, hi = mapped.min(axis=1), mapped.max(axis=1)
    if np.any(hi < -0.5) or np.any(lo > np.asarray(data.shape) - 0.5):
        raise ValueError(f"{path}: label map does not overlap the image (other grid, no common voxels)")
    warnings.warn(
        f"{path}: label map is on another grid; resampled onto the image grid (nearest neighbour)", stacklevel=3
    )
    return ndimage.affine_transform(
        data.astype(np.int32), index_map[:nd, :nd], offset=index_map[:nd, nd], output_shape=grid.shape, order=0, cval=0
    )


def _as_2d(affine: np.ndarray) -> np.ndarray:
    out = np.eye(3)
    out[:2, :2] = affine[:2, :2]
    out[:2, 2] = affine[:2, 3]
    return out


def _check_frame_of_reference(path: Path, uid: str | None, grid: ImageGrid) -> None:
    if grid.frame_of_reference_uid is None:
        raise ValueError(f"{path}: a DICOM annotation needs a DICOM image with a Frame of Reference")
    if uid != grid.frame_of_reference_uid:
        raise ValueError(f"{path}: Frame of Reference {uid} is not the image's {grid.frame_of_reference_uid}")


def _dicom_order_to_grid(stack: np.ndarray, grid: ImageGrid) -> np.ndarray:
    """``(N, rows, cols)`` per slice -> MONAI order ``(cols, rows[, N])``."""
    out = dicom_to_monai(stack)
    return out[..., 0] if len(grid.shape) == 2 else out


def _seg_on_grid(path: Path, ds: pydicom.Dataset, grid: ImageGrid) -> np.ndarray:
    import highdicom as hd

    seg = hd.seg.Segmentation.from_dataset(ds)
    _check_frame_of_reference(path, str(ds.get("FrameOfReferenceUID", "")), grid)
    if grid.sop_instance_uids is None:
        raise ValueError(f"{path}: SEG needs the image's SOP Instance UIDs (load the image as DICOM)")
    referenced = {str(uid) for _, _, uid in seg.get_source_image_uids()}
    if not referenced & set(grid.sop_instance_uids):
        raise ValueError(f"{path}: SEG references none of the image's SOP instances (another series?)")
    wanted = [uid for uid in grid.sop_instance_uids if uid in referenced]
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=wanted, combine_segments=True, skip_overlap_checks=True
    )
    stack = np.zeros((len(grid.sop_instance_uids), *pixels.shape[1:]), dtype=np.int32)
    index = {uid: i for i, uid in enumerate(grid.sop_instance_uids)}
    for uid, frame in zip(wanted, pixels):
        stack[index[uid]] = frame
    return _dicom_order_to_grid(stack, grid)


def _rtstruct_on_grid(path: Path, ds: pydicom.Dataset, grid: ImageGrid, roi_names: list[str] | None) -> np.ndarray:
    from matplotlib.path import Path as Polygon

    names = {int(r.ROINumber): str(r.ROIName) for r in ds.get("StructureSetROISequence", [])}
    frames = {int(r.ROINumber): str(r.ReferencedFrameOfReferenceUID) for r in ds.get("StructureSetROISequence", [])}
    if roi_names is not None:
        missing = sorted(set(roi_names) - set(names.values()))
        if missing:
            raise ValueError(f"{path}: no ROI named {', '.join(missing)} (ROIs: {', '.join(names.values())})")
    three_d = len(grid.shape) == 3
    shape3 = grid.shape if three_d else (*grid.shape, 1)
    labels = np.zeros(shape3, dtype=np.int32)
    inverse = np.linalg.inv(LPS_TO_RAS @ grid.affine)  # LPS mm -> (col, row, slice) index
    cols, rows = np.meshgrid(np.arange(shape3[0]), np.arange(shape3[1]), indexing="ij")
    centres = np.stack([cols.ravel(), rows.ravel()], axis=1)
    label = 0
    for roi in ds.get("ROIContourSequence", []):
        number = int(roi.ReferencedROINumber)
        if roi_names is not None and names.get(number) not in roi_names:
            continue
        _check_frame_of_reference(path, frames.get(number), grid)
        label += 1
        for contour in roi.get("ContourSequence", []):
            points = np.asarray([float(v) for v in contour.ContourData]).reshape(-1, 3)
            index = inverse[:3, :3] @ points.T + inverse[:3, 3:4]
            k = float(np.round(index[2].mean()))
            if np.abs(index[2] - k).max() > 0.25 or not 0 <= k < shape3[2]:
                raise ValueError(
                    f"{path}: a contour of ROI {names.get(number, number)!r} lies off the image's "
                    f"slices (slice index {index[2].mean():.2f})"
                )
            inside = Polygon(index[:2].T).contains_points(centres).reshape(shape3[:2])
            plane = labels[..., int(k)]  # a view: contours of one ROI on one slice combine even-odd (holes)
            current = plane == label
            plane[current & inside] = 0
            plane[~current & inside] = label
    if label == 0:
        raise ValueError(f"{path}: RTSTRUCT holds no ROI contours")
    return labels if three_d else labels[..., 0]


def load_annotation(
    path: str | os.PathLike,
    grid: ImageGrid,
    roi_names: list[str] | None = None,
) -> np.ndarray:
    """The annotation in ``path`` as an integer label array on ``grid`` (0 = background).

    Args:
        path: a NIfTI label map, a DICOM SEG or a DICOM RTSTRUCT file.
        grid: the image's grid (:meth:`ImageGrid.from_image` or :meth:`ImageGrid.from_dicom`).
        roi_names: RTSTRUCT only, the ROIs to take (default: all, labelled 1, 2, ... in file order).

    Raises:
        FileNotFoundError: no such file.
        IsADirectoryError: ``path`` is a folder.
        ValueError: an unreadable file, unknown format, values that are not labels, or geometry that
            does not fit the image (see the module docstring).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: a folder; expected an annotation file (NIfTI, DICOM SEG or RTSTRUCT)")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such annotation file")
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _nifti_on_grid(path, grid)
    try:
        ds = pydicom.dcmread(path)
    except Exception as err:  # noqa: BLE001 (any decoding failure is reported the same way)
        raise ValueError(f"{path}: neither NIfTI nor readable DICOM ({err})") from None
    modality = str(ds.get("Modality", ""))
    if modality == "SEG":
        return _seg_on_grid(path, ds, grid)
    if modality == "RTSTRUCT":
        return _rtstruct_on_grid(path, ds, grid, roi_names)
    raise ValueError(f"{path}: a DICOM {modality or 'object'} is not an annotation (expected SEG or RTSTRUCT)")
