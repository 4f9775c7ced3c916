"""Derived objects for an enhanced multi-frame source: SC per frame, Parametric Map and SEG on its frames.

An enhanced (or legacy converted enhanced) CT/MR image keeps its geometry in the
functional groups (PS3.3 C.7.6.16): Plane Orientation and Pixel Measures usually shared,
Plane Position per frame; its frames may be stored in any order along the slice normal.
:class:`~medhdm.io.dicom.DicomSource` holds them as a volume in slice order, so the
one thing added here is the correspondence between the volume's slices and the file's
frames (:func:`source_frame_numbers`), found from each frame's Image Position (Patient)
and checked against the volume's affine.

- **Parametric Map and SEGs** (the thresholded map's and the findings'): highdicom's
  constructors take the multi-frame source itself and pair ``pixel_array[i]`` with the
  source's frame ``i + 1``, copying its plane position, orientation, pixel measures and
  Frame of Reference and writing a Derivation Image Sequence per frame that names the
  source SOP Instance and its Referenced Frame Number. The map is handed to them in the file's frame order.
- **Secondary Capture**: one single-frame RGB SC per frame (``SC_0001.dcm`` ... in slice
  order, as for a series), whose Source and Referenced Image Sequences name the source
  instance and the frame. Single-frame SCs rather than one Multi-frame True Color SC:
  every viewer and archive shows single-frame SCs, the multi-frame SC IOD has no
  per-frame functional groups (no plane position, no per-frame source reference), and
  the output is laid out as for a series.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from pydicom.dataset import Dataset

from ..io.dicom import LPS_TO_RAS, DicomSource
from . import dicom as series
from .dicom import DerivationInfo
from .overlay import OverlayStyle, Window

__all__ = [
    "build_findings_segmentation",
    "build_parametric_map",
    "build_secondary_captures",
    "build_segmentation",
    "display_dataset",
    "source_frame_numbers",
]

#: Top-level attributes of an enhanced image that a single-frame view leaves out (pixels, frame structure).
_FRAME_STRUCTURE = {
    "PixelData",
    "FloatPixelData",
    "DoubleFloatPixelData",
    "NumberOfFrames",
    "PerFrameFunctionalGroupsSequence",
    "SharedFunctionalGroupsSequence",
    "DimensionIndexSequence",
    "DimensionOrganizationSequence",
}

_POSITION_TOL_MM = 1e-2


def _where(source: DicomSource) -> str:
    return str(source.paths[0]) if source.paths and source.paths[0] is not None else "source"


def _functional(ds: Dataset, frame: int, sequence: str, attribute: str):
    """``attribute`` of ``sequence`` in frame ``frame``'s (0-based) functional groups, else the shared ones."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        items = ds.get(groups)
        if items is None or len(items) <= index or sequence not in items[index]:
            continue
        macro = items[index][sequence].value
        if len(macro) and attribute in macro[0]:
            return macro[0][attribute].value
    return None


def source_frame_numbers(source: DicomSource) -> list[int]:
    """The source file's frame number (1-based) of each slice of ``source.pixels``, in slice order.

    Each frame's Image Position (Patient) is taken to voxel indices through the volume's
    affine: it must fall on the first pixel of exactly one slice, and each slice must get
    exactly one frame.

    Raises:
        ValueError: naming the file, for a frame off the grid or several frames per slice
            (e.g. time points or echoes at one position).
    """
    if not source.multiframe:
        raise ValueError(f"{_where(source)}: not a multi-frame source")
    ds = source.first
    depth = source.pixels.shape[0]
    frames = int(ds.NumberOfFrames)
    affine_lps = LPS_TO_RAS @ source.affine_ras  # (column, row, slice) -> LPS
    to_index = np.linalg.inv(affine_lps)
    orientation = _functional(ds, 0, "PlaneOrientationSequence", "ImageOrientationPatient")
    if orientation is not None:
        directions = np.asarray([float(v) for v in orientation]).reshape(2, 3)
        volume_dirs = (affine_lps[:3, :2] / np.linalg.norm(affine_lps[:3, :2], axis=0)).T
        if np.abs(directions - volume_dirs).max() > 1e-3:
            raise ValueError(f"{_where(source)}: the frames' orientation differs from the volume's (flipped frames)")
    slice_of_frame = np.full(frames, -1)
    for f in range(frames):
        position = _functional(ds, f, "PlanePositionSequence", "ImagePositionPatient")
        if position is None:
            raise ValueError(f"{_where(source)}: frame {f + 1} has no Image Position (Patient)")
        ijk = (to_index @ np.r_[[float(v) for v in position], 1.0])[:3]
        k = int(round(ijk[2]))
        offset_mm = np.abs(affine_lps[:3, :3] @ (ijk - [0.0, 0.0, k])).max()
        if not 0 <= k < depth or offset_mm > _POSITION_TOL_MM * max(1.0, source.spacing[0]):
            raise ValueError(f"{_where(source)}: frame {f + 1} at {list(position)} is not on a slice of the volume")
        slice_of_frame[f] = k
    counts = np.bincount(slice_of_frame, minlength=depth)
    if (counts != 1).any():
        k = int(np.flatnonzero(counts != 1)[0])
        raise ValueError(
            f"{_where(source)}: slice {k} has {counts[k]} frames; export needs one frame per position "
            "(a multi-frame image with several frames at one position, e.g. time points or echoes, is not supported)"
        )
    return [int(f) + 1 for f in np.argsort(slice_of_frame)]


def _in_frame_order(source: DicomSource, volume: np.ndarray) -> np.ndarray:
    """``volume`` ``(D, H, W)`` in slice order, reordered into the source file's frame order."""
    order = np.argsort(source_frame_numbers(source))  # frame f + 1 holds slice order[f]
    return np.ascontiguousarray(np.asarray(volume)[order])


def display_dataset(source: DicomSource) -> Dataset:
    """The dataset whose attributes describe how to show the source (window, modality, orientation).

    For a series, its first slice; for a multi-frame image, a single-frame view of it:
    the top-level attributes (patient, study, series, equipment, SOP Instance) with the
    first frame's Image Orientation (Patient), Pixel Spacing and Window Center/Width from
    the functional groups, without the pixel data and the frame structure.
    """
    if not source.multiframe:
        return source.first
    ds = source.first
    view = Dataset()
    for element in ds:
        if element.keyword not in _FRAME_STRUCTURE:
            view.add(element)
    for sequence, attributes in (
        ("PlaneOrientationSequence", ("ImageOrientationPatient",)),
        ("PixelMeasuresSequence", ("PixelSpacing",)),
        ("FrameVOILUTSequence", ("WindowCenter", "WindowWidth")),
    ):
        for attribute in attributes:
            value = _functional(ds, 0, sequence, attribute)
            if value is not None and attribute not in view:
                setattr(view, attribute, value)
    return view


def _unknown_laterality(derived: Dataset) -> None:
    """Laterality (General Series, Type 2C) present and empty when the enhanced source does not say it.

    Enhanced images often give the laterality per frame (Frame Anatomy) or not at all.
    """
    if "Laterality" not in derived:
        derived.Laterality = None


def build_secondary_captures(
    source: DicomSource,
    overlays: list[np.ndarray],
    info: DerivationInfo,
    style: OverlayStyle,
    window: Window,
) -> list[tuple[str, Dataset]]:
    """One RGB Secondary Capture per slice of a multi-frame source, referencing its frame.

    Args and returns as :func:`medhdm.export.dicom.build_secondary_captures`; each SC's
    Source and Referenced Image Sequences name the source instance with the Referenced
    Frame Number of the slice.
    """
    frames = source_frame_numbers(source)
    view = display_dataset(source)
    per_slice = replace(source, datasets=[view] * len(frames))
    out = series.build_secondary_captures(per_slice, overlays, info, style, window)
    for (_, sc), frame in zip(out, frames):
        for sequence in ("SourceImageSequence", "ReferencedImageSequence"):
            sc[sequence].value[0].ReferencedFrameNumber = frame
        _unknown_laterality(sc)
    return out


def build_parametric_map(
    source: DicomSource, saliency: np.ndarray, info: DerivationInfo | None = None
) -> list[tuple[str, Dataset]]:
    """A float32 Parametric Map on the frames of a multi-frame source (``saliency`` ``(D, H, W)`` in slice order)."""
    out = series.build_parametric_map(source, _in_frame_order(source, saliency), info)
    for _, pm in out:
        _unknown_laterality(pm)
    return out


def build_segmentation(
    source: DicomSource,
    saliency: np.ndarray,
    threshold: float = 0.5,
    info: DerivationInfo | None = None,
    region: np.ndarray | None = None,
) -> list[tuple[str, Dataset]]:
    """A binary SEG of ``saliency >= threshold`` (and a segmenter's target ``region`` as segment 2) on the
    frames of a multi-frame source (slice order in)."""
    frames = None if region is None else _in_frame_order(source, region)
    return series.build_segmentation(source, _in_frame_order(source, saliency), threshold, info, frames)


def build_findings_segmentation(
    source: DicomSource, regions: np.ndarray, descriptions, info: DerivationInfo | None = None
) -> list[tuple[str, Dataset]]:
    """``SEG_findings.dcm``, one segment per finding (:func:`medhdm.export.dicom.build_findings_segmentation`) on
    the frames of a multi-frame source: ``regions`` ``(K, D, H, W)`` in slice order."""
    regions = np.asarray(regions, dtype=bool)
    if regions.ndim != 4 or regions.shape[1:] != source.pixels.shape:
        return series.build_findings_segmentation(source, regions, descriptions, info)  # its error names the shapes
    ordered = np.stack([_in_frame_order(source, region) for region in regions])
    return series.build_findings_segmentation(source, ordered, descriptions, info)
