"""Writing a volume as a DICOM series, modelled on a real single-slice source.

Used to build multi-slice test and demo studies from pydicom's shipped ``CT_small.dcm``
(or any single-frame CT/MR dataset): the patient, study and equipment modules are
kept, every slice gets its own SOP Instance UID, position along the slice normal,
Instance Number and pixels, and all slices share a new Series Instance UID.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

__all__ = ["write_series"]


def _stored_values(volume: np.ndarray, template: Dataset, bits_stored: int) -> np.ndarray:
    """``volume`` (modality units) as the stored integers of the template's rescale and pixel representation."""
    if bits_stored not in (8, 12, 16):
        raise ValueError(f"bits_stored: expected 8, 12 or 16, got {bits_stored}")
    slope = float(template.get("RescaleSlope", 1.0))
    intercept = float(template.get("RescaleIntercept", 0.0))
    stored = np.round((volume - intercept) / slope)
    signed = int(template.get("PixelRepresentation", 0)) == 1
    low, high = (-(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1) if signed else (0, 2**bits_stored - 1)
    if stored.min() < low or stored.max() > high:
        raise ValueError(
            f"volume_modality: values outside what {bits_stored} {'signed' if signed else 'unsigned'} bits "
            f"with the template's rescale can hold ({low * slope + intercept} to {high * slope + intercept})"
        )
    return stored.astype(f"{'i' if signed else 'u'}{1 if bits_stored == 8 else 2}")


def write_series(
    template: Dataset,
    volume_modality: np.ndarray,
    folder: str | os.PathLike,
    slice_spacing: float = 2.5,
    file_order_seed: int | None = 0,
    series_description: str = "medhdm synthetic series",
    pixel_spacing: tuple[float, float] | None = None,
    uid_seed: str | None = None,
    overrides: dict | None = None,
    bits_stored: int = 16,
) -> list[Path]:
    """Write ``volume_modality`` (``(D, H, W)`` in modality units, e.g. HU) as one series.

    Slice ``k`` lies ``k * slice_spacing`` mm along the template's slice normal from the
    template's position. File names are shuffled when ``file_order_seed`` is given (so
    readers must sort by geometry), and Instance Numbers run in slice order.

    Args:
        pixel_spacing: (row, column) spacing in mm; default the template's.
        uid_seed: derive every new UID from this string (reproducible files); default random.
        overrides: attributes set on every slice (``{"PatientID": ..., "StudyInstanceUID": ...}``).
        bits_stored: 16, 12 (Bits Allocated 16) or 8 (Bits Allocated 8): the stored values must fit
            in that many bits, signed or not as the template's Pixel Representation says.

    Returns:
        the written paths, in slice order.
    """
    volume = np.asarray(volume_modality, dtype=np.float64)
    if volume.ndim != 3:
        raise ValueError(f"volume_modality: expected (D, H, W), got shape {volume.shape}")
    stored = _stored_values(volume, template, bits_stored)
    bits_allocated = stored.dtype.itemsize * 8

    iop = np.asarray([float(v) for v in template.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    origin = np.asarray([float(v) for v in template.ImagePositionPatient])
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)

    def new_uid(*parts: object) -> str:
        return generate_uid() if uid_seed is None else generate_uid(entropy_srcs=[uid_seed, *map(str, parts)])

    series_uid = new_uid("series")
    depth = volume.shape[0]
    order = np.arange(depth)
    if file_order_seed is not None:
        order = np.random.default_rng(file_order_seed).permutation(depth)
    paths = []
    for k in range(depth):
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = series_uid
        for keyword, value in (overrides or {}).items():
            setattr(ds, keyword, value)
        ds.SOPInstanceUID = new_uid("instance", k)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SeriesDescription = series_description
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in origin + k * slice_spacing * normal]
        ds.SliceLocation = f"{float((origin + k * slice_spacing * normal) @ normal):.4f}"
        ds.SliceThickness = f"{slice_spacing:g}"
        if "SpacingBetweenSlices" in ds:  # the template's value would disagree with the positions written above
            ds.SpacingBetweenSlices = f"{slice_spacing:g}"
        if pixel_spacing is not None:
            ds.PixelSpacing = [f"{float(v):.6g}" for v in pixel_spacing]
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[2])
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
        ds.PixelData = stored[k].tobytes()
        for keyword in ("SmallestImagePixelValue", "LargestImagePixelValue"):
            if keyword in ds:
                delattr(ds, keyword)
        path = folder / f"IM{int(order[k]):04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
