"""Derived DICOM objects built with highdicom: Secondary Capture overlays, Parametric Map, SEG.

Each builder takes a :class:`~medhdm.io.dicom.DicomSource` and a map on its grid and
returns ``(file name, dataset)`` pairs in memory; :mod:`medhdm.export.api` writes them.
All objects join the source study (patient and study modules copied from the source),
in a new series, and reference the exact source instances they were derived from.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from .. import __version__
from ..io.dicom import DicomSource
from .overlay import OverlayStyle, Window, apply_window, render_overlay

__all__ = [
    "DerivationInfo",
    "build_parametric_map",
    "build_secondary_captures",
    "build_segmentation",
    "patient_orientation",
]

_MANUFACTURER = "medhdm"
_SOFTWARE = f"medhdm {__version__}"


@dataclass(frozen=True)
class DerivationInfo:
    """What the derived objects say about how they were made.

    Attributes:
        method: the explanation method (``"HDM"``, ``"GradCAM"``, ...).
        class_label: the explained class (name or index), or ``None``.
        series_number: Series Number of the first derived series (SC); PM and SEG take
            the next numbers. Default: the source's Series Number + 1000.
        uid_source: makes the derived Series and SOP Instance UIDs from a key such as
            ``"sc/series"``, ``"sc/instance/<source SOP Instance UID>"`` (multi-frame source:
            ``.../<slice number>``, 1-based), ``"pm/instance"``
            (deterministic UIDs, :class:`medhdm.pacs.uids.DerivedUIDs`); ``None``: new random UIDs.
    """

    method: str = "HDM"
    class_label: str | int | None = None
    series_number: int | None = None
    uid_source: Callable[[str], str] | None = None

    def uid(self, key: str) -> str:
        """The UID for ``key`` from ``uid_source``, or a new one."""
        return generate_uid() if self.uid_source is None else self.uid_source(key)

    @property
    def legend_label(self) -> str:
        """The short label burned in beside the colour bar."""
        return self.method if self.class_label is None else f"{self.method} c{self.class_label}"

    def describe(self) -> str:
        target = f", class {self.class_label}" if self.class_label is not None else ""
        return f"{self.method} saliency{target}"

    def base_series_number(self, source: Dataset) -> int:
        if self.series_number is not None:
            return int(self.series_number)
        return int(source.get("SeriesNumber", 0) or 0) + 1000


_ORIENTATION_LETTERS = re.compile(r"[APRLHF]{1,3}")


def patient_orientation(ds: Dataset, where: str = "source") -> tuple[str, str] | None:
    """Patient Orientation (0020,0020) of the row and column directions: one to three LPS letters each.

    From Image Orientation (Patient) when the dataset has it (the main letter first, then up to
    two for an oblique direction, e.g. ``("LP", "PL")``); else the dataset's own Patient
    Orientation. ``None`` when neither says anything (no attribute, or an empty one).

    Raises:
        ValueError: naming ``where``: an Image Orientation (Patient) that is not two non-zero
            vectors, or a Patient Orientation that is not two values of the letters A, P, R, L, H, F.
    """
    if "ImageOrientationPatient" in ds:
        value = ds.ImageOrientationPatient
        try:
            iop = np.asarray([float(v) for v in value], dtype=np.float64).reshape(2, 3)
        except (TypeError, ValueError):
            iop = None
        norms = None if iop is None else np.linalg.norm(iop, axis=1)
        if iop is None or not np.isfinite(iop).all() or np.any(norms < 1e-6):
            raise ValueError(f"{where}: Image Orientation (Patient) {value} is not two direction vectors")
        rows, cols = iop / norms[:, None]

        def letters(v: np.ndarray) -> str:
            out = ""
            for axis in np.argsort(-np.abs(v), kind="stable"):
                if abs(v[axis]) < 0.25 or len(out) == 3:
                    break
                out += ("L", "P", "H")[axis] if v[axis] > 0 else ("R", "A", "F")[axis]
            return out

        return letters(rows), letters(cols)
    element = ds.get("PatientOrientation")
    if element is None:
        return None
    values = [str(v).strip() for v in ([element] if isinstance(element, str) else element)]
    if not any(values):
        return None
    if len(values) != 2 or not all(_ORIENTATION_LETTERS.fullmatch(v) for v in values):
        given = "\\".join(values)
        raise ValueError(
            f"{where}: Patient Orientation '{given}' is not two values of the letters A, P, R, L, H, F (such as L\\P)"
        )
    return values[0], values[1]


def _reference(ds: Dataset, purpose: bool) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = ds.SOPClassUID
    item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
    if purpose:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator = "121322", "DCM"
        code.CodeMeaning = "Source image for image processing operation"
        item.PurposeOfReferenceCodeSequence = DicomSequence([code])
    return item


def _copy_series_context(derived: Dataset, source: Dataset) -> None:
    """Laterality and body part follow the source series (Type 2C/3 in General Series)."""
    for keyword in ("Laterality", "BodyPartExamined"):
        if keyword in source:
            setattr(derived, keyword, source.data_element(keyword).value)


#: General Image attributes (PS3.3 C.7.6.1.1.5) saying that an image has been through lossy compression
_LOSSY = ("LossyImageCompressionRatio", "LossyImageCompressionMethod")


def _copy_lossy_compression(derived: Dataset, source: Dataset) -> None:
    """Lossy Image Compression "01", with ratio and method, when the source says it was lossy compressed.

    Once "01", the standard keeps it so on every image made from it: the overlay shows the decoded lossy
    pixels. (highdicom does the same for the Parametric Map and the SEG.)
    """
    if str(source.get("LossyImageCompression", "")).strip() != "01":
        return
    derived.LossyImageCompression = "01"
    for keyword in _LOSSY:
        if keyword in source:
            setattr(derived, keyword, source.data_element(keyword).value)


def render_source_overlays(
    source: DicomSource,
    saliency: np.ndarray,
    info: DerivationInfo,
    style: OverlayStyle,
    window: Window,
    lesion_mask: np.ndarray | None = None,
) -> list[np.ndarray]:
    """The RGB overlay ``(H, W, 3)`` uint8 of each source slice, as SCs and PNGs show it.

    Args:
        source: the source image or series.
        saliency: ``(D, H, W)`` map in [0, 1] on the source grid (slice order of ``source``).
        info: method and class, for the burned-in label.
        style: colormap, threshold, opacity, legend.
        window: display window (see :func:`window_for`).
        lesion_mask: optional ``(D, H, W)`` boolean annotation whose outline is drawn.
    """
    invert = str(source.first.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    return [
        render_overlay(
            apply_window(source.pixels[k], window, invert=invert),
            saliency[k],
            style,
            lesion_mask=None if lesion_mask is None else lesion_mask[k],
            label=info.legend_label,
        )
        for k in range(len(source.pixels))
    ]


def build_secondary_captures(
    source: DicomSource,
    overlays: list[np.ndarray],
    info: DerivationInfo,
    style: OverlayStyle,
    window: Window,
) -> list[tuple[str, Dataset]]:
    """One RGB Secondary Capture per source slice holding its overlay (:func:`render_source_overlays`).

    ``style`` and ``window`` are named in the Derivation Description.

    Returns:
        ``("SC_0001.dcm", dataset), ...`` in slice order, Instance Numbers 1..D.
    """
    first = source.first
    series_uid = info.uid("sc/series")
    series_number = info.base_series_number(first)
    row_sp, col_sp = source.spacing[1], source.spacing[2]
    out = []
    for k, (src, rgb) in enumerate(zip(source.datasets, overlays)):
        path = source.paths[min(k, len(source.paths) - 1)] if source.paths else None
        orientation = patient_orientation(src, str(path) if path is not None else "source")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=src,
            pixel_array=rgb,
            photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=series_uid,
            series_number=series_number,
            sop_instance_uid=info.uid(f"sc/instance/{src.SOPInstanceUID}" + (f"/{k + 1}" if source.multiframe else "")),
            instance_number=k + 1,
            manufacturer=_MANUFACTURER,
            pixel_spacing=(row_sp, col_sp),
            patient_orientation=("L", "P"),  # replaced below: highdicom takes one letter per direction only
            transfer_syntax_uid=ExplicitVRLittleEndian,
        )
        # Type 2C: the source's orientation, or present and empty when it is unknown (a source without
        # patient geometry: OT, some US and NM images)
        sc.PatientOrientation = list(orientation) if orientation else None
        sc.SeriesDescription = f"medhdm {info.describe()}"[:64]
        sc.ImageType = ["DERIVED", "SECONDARY"]
        sc.BurnedInAnnotation = "YES"
        sc.DerivationDescription = (
            f"{info.describe()} by {_SOFTWARE} burned over the source image; window {window.center:g}/"
            f"{window.width:g} ({window.source}); colormap {style.cmap}, opacity {style.alpha:g} where the "
            f"map >= {style.threshold:g}"
        )[:1024]
        sc.SourceImageSequence = DicomSequence([_reference(src, purpose=True)])
        sc.ReferencedImageSequence = DicomSequence([_reference(src, purpose=False)])
        sc.SoftwareVersions = _SOFTWARE
        _copy_series_context(sc, src)
        _copy_lossy_compression(sc, src)
        out.append((f"SC_{k + 1:04d}.dcm", sc))
    return out


def _equipment(source: Dataset, info: DerivationInfo, offset: int, kind: str) -> dict:
    return {
        "series_instance_uid": info.uid(f"{kind}/series"),
        "series_number": info.base_series_number(source) + offset,
        "sop_instance_uid": info.uid(f"{kind}/instance"),
        "instance_number": 1,
        "manufacturer": _MANUFACTURER,
        "manufacturer_model_name": "medhdm",
        "software_versions": _SOFTWARE,
        "device_serial_number": "none",
    }


def _check_geometry(source: DicomSource) -> None:
    oriented = source.multiframe or "ImageOrientationPatient" in source.first  # multi-frame: in its functional groups
    if not oriented or "FrameOfReferenceUID" not in source.first:
        where = source.paths[0] if source.paths and source.paths[0] is not None else "source"
        raise ValueError(
            f"{where}: no patient geometry (Image Orientation/Position, Frame of Reference); "
            "Parametric Map and SEG need it, export a Secondary Capture (format 'sc') instead"
        )


def build_parametric_map(
    source: DicomSource, saliency: np.ndarray, info: DerivationInfo | None = None
) -> list[tuple[str, Dataset]]:
    """A float32 Parametric Map of ``saliency`` (``(D, H, W)`` in [0, 1]) on the source grid."""
    _check_geometry(source)
    info = info or DerivationInfo()
    first = source.first
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="saliency",
        lut_explanation=info.describe()[:64],
        unit=codes.UCUM.NoUnits,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=codes.DCM.Saliency,
    )
    pm = hd.pm.ParametricMap(
        source_images=source.datasets,
        pixel_array=np.ascontiguousarray(saliency, dtype=np.float32),
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="SALIENCY",
        content_description=info.describe()[:64],
        **_equipment(first, info, offset=1, kind="pm"),
    )
    pm.SeriesDescription = f"medhdm {info.describe()} map"[:64]
    _copy_series_context(pm, first)
    _frame_spacing(pm, source)
    _frames_along_normal(pm)
    return [("PM.dcm", pm)]


def _frame_spacing(ds: Dataset, source: DicomSource) -> None:
    """Spacing Between Slices of a multi-frame result as its frames lie (the source's slice spacing from the
    positions), not as the source's header states it: highdicom copies the source's attribute, and viewers that
    stack the frames by it (OHIF's Parametric Map volume) misplace every frame when it disagrees."""
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    if len(source.datasets) > 1 or source.multiframe:
        measures.SpacingBetweenSlices = f"{float(source.spacing[0]):.6g}"
    elif "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices  # one frame: no neighbour to be spaced from


def _frames_along_normal(pm: Dataset) -> None:
    """The Parametric Map's frames reordered to run along the row x column normal, as the source slices do
    (frame 1 first along it; Dimension Index Values renumbered). highdicom stores them the other way for an axial
    series; OHIF's Parametric Map loader lays frame k onto the k-th slice of the source volume, which cornerstone
    sorts along that normal, so the other order draws every frame on the mirrored slice."""
    groups = pm.PerFrameFunctionalGroupsSequence
    if len(groups) < 2:
        return
    orientation = [
        float(v) for v in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    normal = np.cross(orientation[:3], orientation[3:])
    along = [float(np.dot([float(v) for v in g.PlanePositionSequence[0].ImagePositionPatient], normal)) for g in groups]
    order = np.argsort(along, kind="stable")
    if np.array_equal(order, np.arange(len(order))):
        return
    keyword = next(k for k in ("FloatPixelData", "DoubleFloatPixelData", "PixelData") if k in pm)
    frames = np.frombuffer(pm[keyword].value, dtype=np.uint8).reshape(len(groups), -1)
    pm[keyword].value = np.ascontiguousarray(frames[order]).tobytes()
    pm.PerFrameFunctionalGroupsSequence = DicomSequence([groups[i] for i in order])
    for number, group in enumerate(pm.PerFrameFunctionalGroupsSequence, 1):
        group.FrameContentSequence[0].DimensionIndexValues = number


def _saliency_segment(number: int, label: str, info: DerivationInfo, prop=None) -> hd.seg.SegmentDescription:
    """Segment ``number`` of a medhdm SEG found automatically by ``info``'s method; its segmented property
    ``prop`` (category, type) is a saliency region unless given."""
    category, kind = prop or (codes.SCT.SpatialAndRelationalConcept, codes.DCM.Saliency)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"medhdm {info.method}"[:64], family=codes.cid7162.ArtificialIntelligence, version=__version__
    )
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=label[:64],
        segmented_property_category=category,
        segmented_property_type=kind,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
    )


def _binary_segmentation(
    source: DicomSource,
    pixels: np.ndarray,
    segments: list,
    info: DerivationInfo,
    offset: int,
    kind: str,
    description: str,
) -> Dataset:
    """A binary SEG of ``pixels`` (``(D, H, W)`` or ``(D, H, W, K)``) on the source (a multi-frame one: in its
    frame order), in its study."""
    first = source.first
    seg = hd.seg.Segmentation(
        source_images=source.datasets,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        omit_empty_frames=False,
        **_equipment(first, info, offset=offset, kind=kind),
    )
    seg.SeriesDescription = description[:64]
    _copy_series_context(seg, first)
    _frame_spacing(seg, source)
    if "Laterality" in seg and not seg.Laterality:
        del seg.Laterality  # the SEG IOD's condition forbids an empty Laterality for an unpaired part
    return seg


def build_segmentation(
    source: DicomSource,
    saliency: np.ndarray,
    threshold: float = 0.5,
    info: DerivationInfo | None = None,
    region: np.ndarray | None = None,
) -> list[tuple[str, Dataset]]:
    """A binary DICOM SEG of ``saliency >= threshold`` on the source grid (segment 1) and, for a
    segmenter, the explained target ``region`` (same grid, 0/1) as segment 2."""
    _check_geometry(source)
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold: expected a value in (0, 1], got {threshold}")
    info = info or DerivationInfo()
    segments = [_saliency_segment(1, f"{info.method} salient region", info)]
    pixels = np.asarray(saliency) >= threshold
    if region is not None:
        lesion = (codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Lesion)
        segments.append(_saliency_segment(2, "explained target region", info, lesion))
        pixels = np.stack([pixels, np.asarray(region).reshape(pixels.shape) > 0], axis=-1)
    description = f"medhdm {info.describe()} >= {threshold:g}"
    seg = _binary_segmentation(source, pixels, segments, info, offset=2, kind="seg", description=description)
    return [("SEG.dcm", seg)]


def build_findings_segmentation(
    source: DicomSource,
    regions: np.ndarray,
    descriptions: Sequence[str],
    info: DerivationInfo | None = None,
) -> list[tuple[str, Dataset]]:
    """A binary DICOM SEG of an explanation's findings, one segment per finding (``SEG_findings.dcm``).

    Args:
        source: the source images (a multi-frame one through
            :func:`medhdm.export.multiframe.build_findings_segmentation`).
        regions: the findings' regions on the source grid, ``(K, D, H, W)`` booleans in the source's slice
            order (a multi-frame source's frame order; rank order: segment ``k`` is finding ``k``, labelled
            ``"finding k"``).
        descriptions: one Segment Description per finding (its stage and share of the evidence).
        info: method, class and UIDs; the series is numbered after the SR (+4), its UIDs keyed
            ``"findings-seg/series"`` and ``"findings-seg/instance"``.
    """
    _check_geometry(source)
    regions = np.asarray(regions, dtype=bool)
    if regions.ndim != 4 or regions.shape[1:] != source.pixels.shape or len(regions) != len(descriptions):
        raise ValueError(
            f"regions: expected (K, D, H, W) = ({len(descriptions)}, *{source.pixels.shape}), got {regions.shape}"
        )
    info = info or DerivationInfo()
    segments = []
    for k, text in enumerate(descriptions, start=1):
        segment = _saliency_segment(k, f"finding {k}", info)
        segment.SegmentDescription = str(text)[:64]
        segments.append(segment)
    labels = np.moveaxis(regions, 0, -1).astype(np.uint8)  # (D, H, W, K): one binary plane per segment
    description = f"medhdm {info.describe()} findings"
    seg = _binary_segmentation(source, labels, segments, info, offset=4, kind="findings-seg", description=description)
    return [("SEG_findings.dcm", seg)]
