"""Explain a study end to end: load -> preprocess -> explain -> invert -> write the map, its row, and exports.

The one path every runner takes: ``medhdm explain``, the tutorials, and the coming
archive (PACS) and cohort runners call :func:`explain_study` per case (or
:func:`explain_studies` for a list of cases with its ``explanations.csv``); the steps
themselves live below (:func:`medhdm.pipeline.explain_image`, :mod:`medhdm.export`).

Outputs in ``out_dir`` per case: ``<case>_saliency.nii.gz`` (the map on the source grid,
with the source affine), and with ``export_formats`` the DICOM objects of
:func:`medhdm.export.export` in ``<case>_dicom/``. A 2D classifier over a series
(``slices``) also writes ``<case>_slices.csv`` (slice, class probability, explained or not);
the case's row then holds the study-level decision (``score``, the ``slice_reduce`` over
slices) and the explained slices.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .explain.base import Explainer
from .io.atomic import atomic_write
from .io.nifti import write_nifti
from .pipeline import InputSpec, SliceSelection, explain_image

__all__ = ["StudyCase", "explain_studies", "explain_study"]

#: the columns of ``explanations.csv``, one row per explained case
CSV_COLUMNS = ("case", "image", "class_idx", "score", "map", "export", "slice_reduce", "slices", "slice_scores")


@dataclass(frozen=True)
class StudyCase:
    """One study to explain: its image (DICOM file, series folder or NIfTI), output name and class (None: predicted)."""

    image: Path
    case: str
    class_idx: int | None = None


def explain_study(
    case: StudyCase,
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    slices: SliceSelection | str | None = None,
) -> dict:
    """Explain one study and write its outputs into ``out_dir``; return its ``explanations.csv`` row (``score`` a float).

    Args:
        case: the study.
        explainer: any medhdm explainer.
        spec: the classifier's input (:class:`~medhdm.pipeline.InputSpec`).
        out_dir: an existing folder.
        export_formats: DICOM source only: formats of :func:`medhdm.export.export` (``sc``, ``pm``, ...).
        method: the method's name in the exported series descriptions (default: the explainer's).
        slices: a 2D classifier over a 3D series: the slices to explain (:class:`~medhdm.pipeline.SliceSelection`).
    """
    out = Path(out_dir)
    result = explain_image(case.image, explainer, spec, class_idx=case.class_idx, keep_dicom=bool(export_formats),
                           slices=slices)
    map_path = out / f"{case.case}_saliency.nii.gz"
    volume = result.saliency if result.saliency.ndim == 3 else result.saliency[..., None]
    write_nifti(map_path, volume.astype(np.float32), result.affine)
    exported = ""
    if export_formats:
        if result.dicom is None:
            raise ValueError(f"--export: {case.image} is not DICOM; DICOM export needs a DICOM source")
        from .export import export

        export(result.dicom, result.saliency_in_dicom_order(), out / f"{case.case}_dicom", list(export_formats),
               method=method or explainer.name, class_label=result.class_idx)
        exported = str(out / f"{case.case}_dicom")
    row = {"case": case.case, "image": str(case.image), "class_idx": result.class_idx,
           "score": result.score, "map": str(map_path), "export": exported, "slice_reduce": "", "slices": "",
           "slice_scores": ""}
    if result.slice_scores is not None:
        slices_path = out / f"{case.case}_slices.csv"
        explained = set(result.explained_slices)

        def write_slices(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["slice", f"p_class{result.class_idx}", "explained"])
                writer.writerows([k, f"{p:.4f}", int(k in explained)] for k, p in enumerate(result.slice_scores))

        atomic_write(slices_path, write_slices)
        row.update(slice_reduce=result.slice_reduce, slices=" ".join(str(k) for k in result.explained_slices),
                   slice_scores=str(slices_path))
    return row


def explain_studies(
    cases: Sequence[StudyCase],
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    log: Callable[[str], None] | None = print,
    slices: SliceSelection | str | None = None,
) -> list[dict]:
    """:func:`explain_study` for every case, then ``explanations.csv`` (one row per case) in ``out_dir`` (created)."""
    if not cases:
        raise ValueError("cases: nothing to explain")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases, start=1):
        start = time.perf_counter()
        row = explain_study(case, explainer, spec, out, export_formats, method, slices=slices)
        rows.append(row)
        if log:
            by_slice = (f" ({row['slice_reduce']} over slices; explained slices {row['slices']})"
                        if row["slices"] else "")
            log(f"[{i}/{len(cases)}] {case.case}: class {row['class_idx']} (p={row['score']:.3f}){by_slice}, "
                f"{time.perf_counter() - start:.1f} s -> {row['map']}")

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({**row, "score": f"{row['score']:.4f}"} for row in rows)

    atomic_write(out / "explanations.csv", write_csv)
    return rows
