"""Explain a study end to end: load -> preprocess -> explain -> invert -> write the map, its row, and exports.

The one path every runner takes: ``medhdm explain``, the tutorials, the archive (PACS)
runners and the cohort engines (:mod:`medhdm.cohort`, local or Ray, which add resuming,
failures and ``explanations.csv``) call :func:`explain_study` per case, or
:func:`explain_study_batch` for cases explained in one batch; the steps themselves live
below (:func:`medhdm.pipeline.explain_images`, :mod:`medhdm.export`).

Outputs per case in its own folder ``out_dir/<case>/``: ``<case>_saliency.nii.gz`` (the
map on the source grid, with the source affine), ``<case>_findings.csv`` (the explanation's
findings on the source grid, :data:`FINDINGS_COLUMNS`; not for a 2D classifier over a series),
for a segmenter ``<case>_region.nii.gz`` (the explained target region on the same grid; in the SEG
as segment 2, named in the SR), and with ``export_formats`` the DICOM objects of
:func:`medhdm.export.export` in ``<case>_dicom/``, the structured report (``sr``) among them: the
explained class and its probability, the run configuration and, against a
lesion annotation (:class:`StudyReport`), the saved map's scores
(:func:`medhdm.evaluation.score_saved_map`). A 2D classifier over a series
(``slices``) also writes ``<case>_slices.csv`` (slice, class probability, explained or not);
the case's row then holds the study-level decision (``score``, the ``slice_reduce`` over
slices) and the explained slices.

Safety: every output path lies inside ``out_dir`` (a case name that would lead out of
it is refused), ``out_dir`` may not lie inside a source series folder nor be a source
file, and each file is written atomically.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .explain.base import Explainer
from .io.atomic import atomic_write
from .io.axes import monai_to_dicom_volume
from .io.nifti import write_nifti
from .pipeline import ExplainedImage, InputSpec, SliceSelection, explain_images, finding_position_mm

if TYPE_CHECKING:  # highdicom and the exporters load only when a study is exported
    from .export import Deidentification, ReportContent

__all__ = [
    "CSV_COLUMNS",
    "FINDINGS_COLUMNS",
    "StudyCase",
    "StudyReport",
    "case_folder",
    "explain_study",
    "explain_study_batch",
    "write_explanations_csv",
    "write_findings_csv",
]

#: the columns of ``explanations.csv``, one row per explained case
CSV_COLUMNS = (
    "case",
    "image",
    "class_idx",
    "score",
    "map",
    "export",
    "slice_reduce",
    "slices",
    "slice_scores",
    "spacing",
)

#: the columns of ``<case>_findings.csv``, one row per finding, strongest first: voxel coordinates in the
#: saved map's axis order (the source array's, as ``<case>_saliency.nii.gz``), mm in its world (RAS) frame
FINDINGS_COLUMNS = (
    "rank",
    "stage",
    "centroid_voxel",
    "centroid_ras_mm",
    "peak_voxel",
    "size",
    "size_unit",
    "evidence",
    "drop",
    "alone",
    "share",
    "score",
)


def _inside(out: Path, case: str, suffix: str) -> Path:
    """``out / (case + suffix)`` after checking that the case name is one plain name that stays inside ``out``."""
    path = out / f"{case}{suffix}"
    if not case or "/" in case or os.sep in case or case.startswith(".") or out.resolve() != path.resolve().parent:
        raise ValueError(f"case name {case!r} would write outside {out}; give the case a plain name")
    return path


@dataclass(frozen=True)
class StudyCase:
    """One study to explain: its image (DICOM file, series folder or NIfTI), output name and class (None: predicted);
    for a segmenter, optionally its target region as a mask file on the image's grid (NIfTI)."""

    image: Path
    case: str
    class_idx: int | None = None
    region: Path | None = None


@dataclass(frozen=True)
class StudyReport:
    """What the structured report (``"sr"`` among the export formats) says beyond the explanation itself.

    The explained class and its probability come from the explanation, the class's name from the
    model card of a shipped model (``model.medhdm_card["classes"]``).

    Attributes:
        config: the run configuration (:func:`medhdm.models.identity.run_configuration`): the SR's
            algorithm parameters and model name (``None``: left out).
        annotations: the study's lesion annotations (SEG, RTSTRUCT): the saved map is scored against the
            first that lies on the source's grid and holds a lesion, for localisation and faithfulness
            (:func:`medhdm.evaluation.score_saved_map`, curves on 41 log-spaced shares and on
            ``curve_steps`` equal ones); none that fits: the SR holds no scores.
        curve_steps: the equal shares of the classic deletion / insertion AUC.
    """

    config: dict | None = field(default=None, repr=False)
    annotations: tuple[Path, ...] = ()
    curve_steps: int = 32


def case_folder(out_dir: str | os.PathLike, case: str) -> Path:
    """``out_dir / case``: the folder of one case's outputs, after checking the name stays inside ``out_dir``."""
    return _inside(Path(out_dir), case, "")


def explain_study(
    case: StudyCase,
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    overwrite: bool = False,
    slices: SliceSelection | str | None = None,
    uid_source: Callable[[str], str] | None = None,
    deidentify: Deidentification | None = None,
    report: StudyReport | None = None,
    region: str | None = None,
    seg_threshold: float = 0.5,
) -> dict:
    """Explain one study, write its outputs into ``out_dir/<case>/``; return its ``explanations.csv`` row.

    Args:
        case: the study.
        explainer: any medhdm explainer.
        spec: the classifier's input (:class:`~medhdm.pipeline.InputSpec`).
        out_dir: an existing folder; the case's folder is made in it.
        export_formats: DICOM source only: formats of :func:`medhdm.export.export` (``sc``, ``pm``, ``seg``,
            ``sr``, ...), written as one set.
        method: the method's name in the exported series descriptions (default: the explainer's).
        overwrite: replace an export that ``<case>/<case>_dicom/`` already holds (otherwise refused).
        slices: a 2D classifier over a 3D series: the slices to explain (:class:`~medhdm.pipeline.SliceSelection`).
        uid_source: the exported objects' Series/SOP Instance UIDs from keys (deterministic UIDs,
            :class:`medhdm.pacs.uids.DerivedUIDs`); default: new random UIDs.
        deidentify: de-identify the exported DICOM objects (:class:`medhdm.export.Deidentification`).
        report: what the SR (``"sr"``) says beyond the explanation (:class:`StudyReport`; default: no
            configuration, no scores). With it, the row also holds ``scores``: the SR's scores, or ``None``.
        region: a segmenter's target region, ``"predicted"`` (None) or ``"component:k"``, unless the case
            gives a mask (:attr:`StudyCase.region`); see :mod:`medhdm.explain.targets`.
        seg_threshold: the thresholded map's SEG (``"seg"``) holds the map >= this, in (0, 1].
    """
    return explain_study_batch(
        [case],
        explainer,
        spec,
        out_dir,
        export_formats,
        method,
        overwrite,
        slices,
        uid_sources=[uid_source],
        deidentify=deidentify,
        report=report,
        region=region,
        seg_threshold=seg_threshold,
    )[0]


@dataclass(frozen=True)
class _Outputs:
    """What each case of one :func:`explain_study_batch` call writes besides its map (the call's options)."""

    explainer: Explainer
    spec: InputSpec
    export_formats: tuple[str, ...]
    method: str | None
    overwrite: bool
    slices: SliceSelection | str | None
    deidentify: Deidentification | None
    report: StudyReport | None
    seg_threshold: float


def explain_study_batch(
    cases: Sequence[StudyCase],
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    overwrite: bool = False,
    slices: SliceSelection | str | None = None,
    uid_sources: Sequence[Callable[[str], str] | None] | None = None,
    deidentify: Deidentification | None = None,
    report: StudyReport | None = None,
    region: str | None = None,
    seg_threshold: float = 0.5,
) -> list[dict]:
    """:func:`explain_study` of several studies, explained together (:func:`~medhdm.pipeline.explain_images`:
    one batch per classifier input shape), each written as :func:`explain_study` does. An error in any raises.
    ``uid_sources``: one ``uid_source`` of :func:`explain_study` per case (default: random UIDs for all);
    ``deidentify`` and ``report`` as for :func:`explain_study`. ``region`` (segmenters): ``"predicted"`` (None)
    or ``"component:k"`` for every case, unless the cases give their own masks (:attr:`StudyCase.region`:
    all of them or none); ``seg_threshold`` as for :func:`explain_study`."""
    uid_sources = list(uid_sources) if uid_sources is not None else [None] * len(cases)
    if len(uid_sources) != len(cases):
        raise ValueError(f"uid_sources: expected one per case ({len(cases)}), got {len(uid_sources)}")
    out = Path(out_dir)
    folders = [case_folder(out, c.case) for c in cases]  # every name checked before any work
    masks = [c.region for c in cases if c.region is not None]
    if masks and len(masks) != len(cases):
        raise ValueError("region: give a mask for every case or for none")
    results = explain_images(
        [c.image for c in cases],
        explainer,
        spec,
        [c.class_idx for c in cases],
        keep_dicom=bool(export_formats),
        slices=slices,
        region=masks or region,
    )
    outputs = _Outputs(
        explainer, spec, tuple(export_formats), method, overwrite, slices, deidentify, report, float(seg_threshold)
    )
    return [
        _write_study(case, result, folder, outputs, uids)
        for case, result, folder, uids in zip(cases, results, folders, uid_sources)
    ]


def _class_name(explainer: Explainer, class_idx: int) -> str | None:
    """The class's name from the model card of a shipped model (``model.medhdm_card["classes"]``), if any."""
    classes = (getattr(explainer.model, "medhdm_card", None) or {}).get("classes") or []
    return str(classes[class_idx]) if 0 <= class_idx < len(classes) else None


def _report_content(
    case: StudyCase, result: ExplainedImage, map_path: Path, outputs: _Outputs
) -> tuple[ReportContent, dict[str, float] | None]:
    """What the study's SR says: the explanation's class and probability, the configuration, and the saved
    map's scores against the first lesion annotation that fits (``None``: none does)."""
    from .evaluation import score_saved_map
    from .export import ReportContent
    from .export.sr import report_scores

    report = outputs.report or StudyReport()
    explainer, class_idx = outputs.explainer, int(result.class_idx)
    scores = None
    if report.annotations:
        scores = score_saved_map(
            case.image,
            map_path,
            report.annotations,
            model=explainer.model,
            spec=outputs.spec,
            class_idx=class_idx,
            slices=outputs.slices,
            reference=getattr(explainer, "reference", "blur"),
            curve_steps=(None, report.curve_steps),
        )
    scores = report_scores(scores)
    findings = [f.record() for f in result.findings] if "seg" in outputs.export_formats else None
    name = _class_name(explainer, class_idx)
    content = ReportContent(
        class_idx, float(result.score), name, report.config, scores, region=result.region_spec, findings=findings
    )
    return content, scores


def _export_study(
    case: StudyCase, result: ExplainedImage, folder: Path, map_path: Path, outputs: _Outputs, uid_source
) -> tuple[str, dict[str, float] | None]:
    """Export one explained study into ``folder/<case>_dicom/`` (one set); its folder and the SR's scores."""
    if result.dicom is None:
        raise ValueError(f"export_formats: {case.image} is not DICOM; DICOM export needs a DICOM source")
    from .export import export

    content, scores = None, None
    if "sr" in outputs.export_formats:
        content, scores = _report_content(case, result, map_path, outputs)
    export_dir = _inside(folder, case.case, "_dicom")
    deidentify = outputs.deidentify
    export(
        result.dicom,
        result.saliency_in_dicom_order(),
        export_dir,
        list(outputs.export_formats),
        method=outputs.method or outputs.explainer.name,
        class_label=result.class_idx,
        overwrite=outputs.overwrite,
        uid_source=uid_source,
        deidentify_salt=deidentify.salt if deidentify is not None else None,
        retain_dates=deidentify.retain_dates if deidentify is not None else False,
        seg_threshold=outputs.seg_threshold,
        report=content,
        region=result.region_in_dicom_order(),
        finding_regions=[monai_to_dicom_volume(f.region) for f in result.findings],
        finding_descriptions=[_finding_description(f) for f in result.findings],
    )
    return str(export_dir), scores


def _finding_description(finding) -> str:
    """A finding's SEG Segment Description: its HDM stage and share of the evidence."""
    stage = f"stage {finding.stage}, " if finding.stage is not None else ""
    return f"{stage}evidence share {finding.share:.2f} ({finding.evidence:.2f} log-odds)"


def _write_study(
    case: StudyCase,
    result: ExplainedImage,
    folder: Path,
    outputs: _Outputs,
    uid_source: Callable[[str], str] | None = None,
) -> dict:
    """Write one explained study's map (and exports, slices table) into ``folder``; return its row."""
    folder.mkdir(exist_ok=True)
    map_path = _inside(folder, case.case, "_saliency.nii.gz")
    volume = result.saliency if result.saliency.ndim == 3 else result.saliency[..., None]
    write_nifti(map_path, volume.astype(np.float32), result.affine)
    if result.region is not None:
        region = result.region if result.region.ndim == 3 else result.region[..., None]
        write_nifti(_inside(folder, case.case, "_region.nii.gz"), region.astype(np.uint8), result.affine)
    exported, scores = "", None
    if outputs.export_formats:
        exported, scores = _export_study(case, result, folder, map_path, outputs, uid_source)
    row = {
        "case": case.case,
        "image": str(case.image),
        "class_idx": result.class_idx,
        "score": result.score,
        "map": str(map_path),
        "export": exported,
        "slice_reduce": "",
        "slices": "",
        "slice_scores": "",
        # the classifier input's voxel size (mm) the explainer sized its grids and Gaussians by; "" in voxels
        "spacing": "" if result.spacing is None else " ".join(f"{v:.6g}" for v in result.spacing),
    }
    if outputs.report is not None:
        row["scores"] = scores
    if result.slice_scores is not None:
        row.update(_write_slices(case, result, folder))
    else:
        write_findings_csv(_inside(folder, case.case, "_findings.csv"), result)
    return row


def _numbers(values, digits: int = 2) -> str:
    return " ".join(f"{float(v):.{digits}f}" for v in values)


def write_findings_csv(path: str | os.PathLike, result: ExplainedImage) -> None:
    """``<case>_findings.csv`` of an explained image's findings (:data:`FINDINGS_COLUMNS`), written atomically."""
    rows = [
        {
            "rank": rank,
            "stage": "" if f.stage is None else f.stage,
            "centroid_voxel": _numbers(f.centroid),
            "centroid_ras_mm": _numbers(finding_position_mm(f, result.affine)),
            "peak_voxel": " ".join(str(int(v)) for v in f.peak),
            "size": f"{f.size_mm:.1f}",
            "size_unit": f.size_unit,
            "evidence": f"{f.evidence:.4f}",
            "drop": f"{f.drop:.4f}",
            "alone": f"{f.alone:.4f}",
            "share": f"{f.share:.4f}",
            "score": f"{f.score:.4f}",
        }
        for rank, f in enumerate(result.findings, start=1)
    ]

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(FINDINGS_COLUMNS))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(Path(path), write)


def _write_slices(case: StudyCase, result: ExplainedImage, folder: Path) -> dict:
    """``<case>_slices.csv`` (slice, class probability, explained); the row's slice columns."""
    slices_path = _inside(folder, case.case, "_slices.csv")
    explained = set(result.explained_slices)

    def write_slices(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["slice", f"p_class{result.class_idx}", "explained"])
            writer.writerows([k, f"{p:.4f}", int(k in explained)] for k, p in enumerate(result.slice_scores))

    atomic_write(slices_path, write_slices)
    return {
        "slice_reduce": result.slice_reduce,
        "slices": " ".join(str(k) for k in result.explained_slices),
        "slice_scores": str(slices_path),
    }


def write_explanations_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """``explanations.csv`` of ``rows`` (:data:`CSV_COLUMNS`), written atomically (scores with 4 decimals)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({**row, "score": f"{float(row['score']):.4f}"} for row in rows)

    atomic_write(Path(path), write)
