"""Exporting a saliency map next to its source study: one function per format, and ``export``.

The formats (:data:`FORMATS`): the DICOM objects (:data:`DICOM_FORMATS`: SC overlays, Parametric
Map, SEG, and the structured report of :mod:`medhdm.export.sr`), a NIfTI map and PNG overlays.

Every function checks the map against the source grid before anything is written,
applies the output-folder rule of :mod:`medhdm.io.outputs` (beside a single file: allowed; inside a
series folder: only with ``allow_inside_source``),
never replaces a source file, and writes all of its files or none of them.

Map layout: the source grid in :class:`~medhdm.io.dicom.DicomSource` order, ``(H, W)``
for one image, ``(D, H, W)`` for a series (or the frames of an enhanced multi-frame
image) sorted along the slice normal; leading singleton axes (``(1, 1, H, W)`` straight
from an explainer) are accepted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ..io.axes import dicom_to_monai
from ..io.dicom import DicomSource, read_dicom
from ..io.nifti import nifti_writer
from ..io.outputs import check_output_folder
from . import dicom, multiframe
from .deidentify import deidentify as _deidentify
from .deidentify import remap_uid
from .dicom import DerivationInfo, render_source_overlays
from .overlay import CT_PRESETS, OverlayStyle, window_for
from .sr import ReportContent, build_structured_report
from .staging import ExportFolder

__all__ = [
    "DICOM_FORMATS",
    "FORMATS",
    "Deidentification",
    "check_export_arguments",
    "check_formats",
    "export",
    "export_nifti",
    "export_parametric_map",
    "export_png",
    "export_secondary_capture",
    "export_segmentation",
    "map_on_source_grid",
]

#: what :func:`export` writes: ``sc`` (RGB Secondary Capture overlays), ``pm`` (Parametric Map), ``seg``
#: (SEG of the thresholded map), ``sr`` (the structured report, :mod:`medhdm.export.sr`), ``nifti``, ``png``
FORMATS = ("sc", "pm", "seg", "sr", "nifti", "png")
#: the formats that are DICOM objects of the source study (what an archive can take)
DICOM_FORMATS = ("sc", "pm", "seg", "sr")
_PREFIXES = {"sc": "SC_", "pm": "PM", "seg": "SEG", "sr": "SR", "nifti": "saliency", "png": "overlay_"}


def check_formats(
    formats: str | Sequence[str], allowed: Sequence[str] = FORMATS, name: str = "formats", deidentified: bool = False
) -> list[str]:
    """``formats`` as a list, checked: some of ``allowed``, each once, and no SR when ``deidentified``.

    The SR is not de-identified: the Basic Profile gives Content Sequence (0040,A730) a dummy
    value (PS3.15 Table E.1-1, ``D``), which leaves the report without its findings; the Clean
    Structured Content option that would keep it cleaned is not implemented.

    Raises:
        ValueError: starting with ``name``, for an unknown or repeated format, none at all, or the SR
            with de-identification.
    """
    formats = [formats] if isinstance(formats, str) else list(formats)
    unknown = [f for f in formats if f not in allowed]
    if unknown or not formats:
        raise ValueError(f"{name}: expected some of {', '.join(allowed)}, got {list(formats)}")
    if len(set(formats)) != len(formats):
        raise ValueError(f"{name}: {formats} names a format twice")
    if deidentified and "sr" in formats:
        others = ",".join(f for f in allowed if f in DICOM_FORMATS and f != "sr")
        raise ValueError(
            f"{name}: the SR cannot be de-identified (the Basic Profile does not keep its Content Sequence, "
            f"PS3.15 Table E.1-1); with de-identification give some of {others}"
        )
    return formats


@dataclass(frozen=True)
class Deidentification:
    """De-identify the DICOM objects an export writes (:mod:`medhdm.export.deidentify`).

    The option object that ``medhdm explain --export``, ``pacs explain`` and ``pacs serve``
    pass down to :func:`export` (as ``deidentify_salt`` and ``retain_dates``). The secret
    never appears in its ``repr`` nor in :meth:`record`, so it reaches no log, record or
    configuration hash.

    Attributes:
        salt: the secret of the salted pseudonyms and UIDs (same salt: same pseudonyms).
        retain_dates: the Retain Longitudinal Temporal Information (Full Dates) option.
    """

    salt: str = field(repr=False)
    retain_dates: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.salt, str) or not self.salt.strip():
            raise ValueError("deidentify salt: a non-empty secret is needed")

    def record(self) -> dict:
        """What de-identification changes in the outputs, for a run's configuration (never the secret)."""
        return {
            "profile": "PS3.15 E.1 Basic Application Level Confidentiality Profile",
            "retain_dates": self.retain_dates,
        }

    def uid(self, uid: str) -> str:
        """The UID that ``uid`` becomes in the de-identified objects."""
        return remap_uid(uid, self.salt)


def _as_source(source: str | os.PathLike | DicomSource | Dataset | Sequence[Dataset]) -> DicomSource:
    return source if isinstance(source, DicomSource) else read_dicom(source)


def map_on_source_grid(saliency, source: DicomSource, name: str = "saliency") -> np.ndarray:
    """``saliency`` as a ``(D, H, W)`` float array on the source grid, checked.

    Raises:
        ValueError: wrong shape (after dropping leading singleton axes), NaN/inf, values outside [0, 1].
    """
    if hasattr(saliency, "detach"):
        saliency = saliency.detach().cpu().numpy()
    arr = np.asarray(saliency, dtype=np.float64)
    target = source.pixels.shape
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 3 and arr.shape[0] == 1 and not source.is_series:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != target:
        raise ValueError(
            f"{name}: shape {np.shape(saliency)} does not match the source grid "
            f"{source.shape} ({'series D, H, W' if source.is_series else 'image H, W'})"
        )
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    if arr.min() < -1e-6 or arr.max() > 1 + 1e-6:
        raise ValueError(f"{name}: expected values in [0, 1], got [{arr.min():.4g}, {arr.max():.4g}]")
    return np.clip(arr, 0.0, 1.0)


def _lesion_on_grid(lesion_mask, source: DicomSource) -> np.ndarray | None:
    if lesion_mask is None:
        return None
    if hasattr(lesion_mask, "detach"):
        lesion_mask = lesion_mask.detach().cpu().numpy()
    arr = np.asarray(lesion_mask)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.shape != source.pixels.shape:
        raise ValueError(f"lesion_mask: shape {np.shape(lesion_mask)} does not match the source grid {source.shape}")
    return arr > 0


def _dicom_writer(ds: Dataset):
    return lambda path: ds.save_as(path, enforce_file_format=True)


def _nifti_writer(source: DicomSource, saliency: np.ndarray):
    return nifti_writer(dicom_to_monai(saliency.astype(np.float32)), source.affine_ras)


def _png_writer(rgb: np.ndarray):
    import matplotlib.image

    return lambda path: matplotlib.image.imsave(path, rgb, format="png")


def _build(
    source: DicomSource,
    saliency: np.ndarray,
    formats: Sequence[str],
    info: DerivationInfo,
    style: OverlayStyle,
    masks: tuple[np.ndarray | None, np.ndarray | None],
    window_preset: str | None,
    seg_threshold: float,
    deidentify_salt: str | None,
    retain_dates: bool = False,
    report: ReportContent | None = None,
    findings: tuple[np.ndarray, list[str]] | None = None,
) -> list[tuple[str, object]]:
    """The export's files; ``masks``: the lesion annotation (outlined) and a segmenter's target region (SEG
    segment 2) on the source grid, or None."""
    lesion_mask, region = masks
    window = window_for(multiframe.display_dataset(source), source.pixels, preset=window_preset)
    overlays = []
    if "sc" in formats or "png" in formats:  # rendered once for both
        overlays = render_source_overlays(source, saliency, info, style, window, lesion_mask)
    builders = multiframe if source.multiframe else dicom  # an enhanced source: the frames referenced
    datasets: list[tuple[str, Dataset]] = []
    if "sc" in formats:
        datasets += builders.build_secondary_captures(source, overlays, info, style, window)
    if "pm" in formats:
        datasets += builders.build_parametric_map(source, saliency, info)
    if "seg" in formats:
        datasets += builders.build_segmentation(source, saliency, seg_threshold, info, region)
    if "seg" in formats and findings is not None and len(findings[1]):
        datasets += builders.build_findings_segmentation(source, findings[0], findings[1], info)
    if "sr" in formats:
        made = dict(datasets)
        sr = _structured_report(source, info, report, made.get("SEG.dcm"), made.get("SEG_findings.dcm"))
        datasets.append(("SR.dcm", sr))
    if deidentify_salt is not None:
        datasets = [(name, _deidentify(ds, deidentify_salt, retain_dates=retain_dates)) for name, ds in datasets]
    for _, ds in datasets:
        ds.remove_private_tags()
    writers: list[tuple[str, object]] = [(name, _dicom_writer(ds)) for name, ds in datasets]
    if "nifti" in formats:
        writers.append(("saliency.nii.gz", _nifti_writer(source, saliency)))
    if "png" in formats:
        writers += [(f"overlay_{k + 1:04d}.png", _png_writer(rgb)) for k, rgb in enumerate(overlays)]
    return writers


def _structured_report(
    source: DicomSource, info: DerivationInfo, report: ReportContent, seg: Dataset | None, findings_seg=None
) -> Dataset:
    """The SR of the export (:mod:`medhdm.export.sr`), numbered after the SC, PM and SEG series."""
    series_number = info.base_series_number(source.first) + 3
    if report.findings:
        report = replace(report, findings=[_with_centroid(f, source) for f in report.findings])
    return build_structured_report(
        source.datasets,
        report,
        method=info.method,
        uid=info.uid,
        series_number=series_number,
        seg=seg,
        findings_seg=findings_seg,
    )


def _with_centroid(finding: dict, source: DicomSource) -> dict:
    """A finding record (:meth:`medhdm.explain.Finding.record`, centroid in voxels ``(column, row[, slice])`` on the
    source grid) with its centroid for the SR: ``"centroid_pixel"`` (column, row; pixel centres at .5) on one
    single-frame image, else ``"centroid_lps"`` (patient mm, through the source's affine)."""
    if finding.get("centroid") is None:
        return finding
    column, row, *rest = (float(v) for v in finding["centroid"])
    if len(source.datasets) == 1 and not source.multiframe:
        return {**finding, "centroid_pixel": (column + 0.5, row + 0.5)}
    ras = np.asarray(source.affine_ras, dtype=np.float64) @ np.array([column, row, rest[0] if rest else 0.0, 1.0])
    return {**finding, "centroid_lps": (-float(ras[0]), -float(ras[1]), float(ras[2]))}


def check_export_arguments(formats, out_dir, style, window_preset, seg_threshold, deidentify_salt) -> list[str]:
    """Every argument that can be checked without reading the source, checked before any work."""
    formats = check_formats(formats, deidentified=deidentify_salt is not None)
    if style is not None and not isinstance(style, OverlayStyle):
        raise TypeError(f"style: expected an OverlayStyle, got {type(style).__name__}")
    if window_preset is not None and window_preset not in CT_PRESETS:
        raise ValueError(f"window preset: expected one of {sorted(CT_PRESETS)}, got {window_preset!r}")
    if "seg" in formats and not 0.0 < float(seg_threshold) <= 1.0:
        raise ValueError(f"seg_threshold: expected a value in (0, 1], got {seg_threshold}")
    if deidentify_salt is not None and (not isinstance(deidentify_salt, str) or not deidentify_salt.strip()):
        raise ValueError("deidentify salt: a non-empty secret is needed")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    return formats


def _region_on_grid(region, src: DicomSource) -> np.ndarray | None:
    """A segmenter's target region as booleans on the source grid; None without."""
    if region is None:
        return None
    return map_on_source_grid(np.asarray(region, dtype=np.float32), src, "region") > 0.5


def _findings_on_grid(regions, descriptions, src: DicomSource) -> tuple[np.ndarray, list[str]] | None:
    """The findings' regions ``(K, D, H, W)`` as booleans on the source grid and their descriptions; None without."""
    if regions is None or not len(regions):
        return None
    texts = list(descriptions or [f"finding {k + 1}" for k in range(len(regions))])
    if len(texts) != len(regions):
        raise ValueError(f"finding_descriptions: expected one per region ({len(regions)}), got {len(texts)}")
    grids = np.stack([map_on_source_grid(np.asarray(r, dtype=np.float64), src, "finding_regions") for r in regions])
    return grids > 0.5, texts


def export(
    source: str | os.PathLike | DicomSource | Dataset | Sequence[Dataset],
    saliency,
    out_dir: str | os.PathLike,
    formats: Sequence[str] = ("sc", "pm", "seg", "nifti", "png"),
    *,
    method: str = "HDM",
    class_label: str | int | None = None,
    style: OverlayStyle | None = None,
    lesion_mask=None,
    window_preset: str | None = None,
    seg_threshold: float = 0.5,
    series_number: int | None = None,
    deidentify_salt: str | None = None,
    allow_inside_source: bool = False,
    overwrite: bool = False,
    retain_dates: bool = False,
    uid_source: Callable[[str], str] | None = None,
    report: ReportContent | None = None,
    region=None,
    finding_regions=None,
    finding_descriptions: Sequence[str] | None = None,
) -> dict[str, list[Path]]:
    """Write ``saliency`` in the given formats next to (not into) the source study.

    Args:
        source: a DICOM file, a series folder, datasets, or a :class:`DicomSource`.
        saliency: the map on the source grid (see the module docstring), values in [0, 1].
        out_dir: output folder; created if missing; not the source, and not inside a source series
            folder unless ``allow_inside_source`` (:mod:`medhdm.io.outputs`).
        formats: any of ``"sc"`` (one RGB Secondary Capture per slice), ``"pm"`` (float Parametric Map),
            ``"seg"`` (binary SEG of ``saliency >= seg_threshold``), ``"sr"`` (``SR.dcm``, the structured report
            of ``report``, referencing the source images and the SEG when there is one; not with
            de-identification), ``"nifti"`` (``saliency.nii.gz``, source affine), ``"png"`` (one per slice).
        method, class_label: named in series descriptions, derivation text and legend.
        style: overlay colours, threshold and opacity (SC and PNG); default :class:`OverlayStyle`.
        lesion_mask: optional annotation on the source grid, outlined in SC and PNG.
        window_preset: a CT preset name instead of the source's window.
        series_number: Series Number of the SC series (PM, SEG, SR: +1, +2, +3).
        deidentify_salt: if given, the DICOM objects are de-identified (see
            :mod:`medhdm.export.deidentify`) with this secret.
        allow_inside_source: allow an output folder inside the source series folder.
        overwrite: replace an export that ``out_dir`` already holds (otherwise that is an
            error, :class:`~medhdm.export.staging.OutputExistsError`).
        retain_dates: with ``deidentify_salt``, the profile's Retain Longitudinal Temporal
            Information (Full Dates) option: dates and times are kept.
        uid_source: derived Series/SOP Instance UIDs from keys (:class:`~medhdm.export.dicom.DerivationInfo`).
        region: a segmenter's target region on the source grid (as ``saliency``, 0/1): the SEG's segment 2.
        report: what the SR says (:class:`~medhdm.export.sr.ReportContent`: the explained class, its
            probability, the run configuration, scores); needed with ``"sr"``, ignored without.
        finding_regions, finding_descriptions: findings' regions ``(K, *S)`` (as ``saliency``) and texts: with
            ``"seg"``, ``SEG_findings.dcm`` (:func:`~medhdm.export.dicom.build_findings_segmentation`).

    The files are published all or nothing (:mod:`medhdm.export.staging`): the folder is locked while this
    runs (a second run fails with :class:`~medhdm.export.staging.OutputBusyError`), and an interrupted run
    leaves no dangling link and never files of two sets: the complete old or new set, or (killed while
    names are added or removed) a part of one without the manifest, which the next run completes.

    Returns:
        the written paths by format.
    """
    formats = check_export_arguments(formats, out_dir, style, window_preset, seg_threshold, deidentify_salt)
    if "sr" in formats and report is None:
        raise ValueError("report: the SR (format 'sr') needs the explained class: give report=ReportContent(...)")
    style = style or OverlayStyle()
    src = _as_source(source)
    check_output_folder(out_dir, [src.series_folder] if src.series_folder else src.paths, allow_inside_source)
    sal = map_on_source_grid(saliency, src)
    masks = (_lesion_on_grid(lesion_mask, src), _region_on_grid(region, src))
    info = DerivationInfo(str(method), class_label, series_number, uid_source)
    findings = _findings_on_grid(finding_regions, finding_descriptions, src)
    with ExportFolder(out_dir, overwrite=overwrite) as folder:  # locked; an existing export refused here
        options = (window_preset, seg_threshold, deidentify_salt, retain_dates, report, findings)
        writers = _build(src, sal, formats, info, style, masks, *options)
        paths = folder.publish(
            writers,
            protected=src.paths,
            note={"formats": formats, "method": str(method), "deidentified": deidentify_salt is not None},
        )
    return {fmt: [path for path in paths if path.name.startswith(_PREFIXES[fmt])] for fmt in formats}


def export_secondary_capture(source, saliency, out_dir, **options) -> list[Path]:
    """RGB Secondary Capture overlays, one per source slice (see :func:`export`)."""
    return export(source, saliency, out_dir, ["sc"], **options)["sc"]


def export_parametric_map(source, saliency, out_dir, **options) -> Path:
    """A float Parametric Map on the source grid (see :func:`export`)."""
    return export(source, saliency, out_dir, ["pm"], **options)["pm"][0]


def export_segmentation(source, saliency, out_dir, **options) -> Path:
    """A binary DICOM SEG of the thresholded map (see :func:`export`)."""
    return export(source, saliency, out_dir, ["seg"], **options)["seg"][0]


def export_nifti(source, saliency, out_dir, **options) -> Path:
    """``saliency.nii.gz`` with the source's affine (see :func:`export`)."""
    return export(source, saliency, out_dir, ["nifti"], **options)["nifti"][0]


def export_png(source, saliency, out_dir, **options) -> list[Path]:
    """PNG overlays, one per source slice (see :func:`export`)."""
    return export(source, saliency, out_dir, ["png"], **options)["png"]
