"""Explain a study end to end: load -> preprocess -> explain -> invert -> write the map, its row, and exports.

The one path every runner takes: ``medhdm explain``, the tutorials, and the coming
archive (PACS) and cohort runners call :func:`explain_study` per case (or
:func:`explain_studies` for a list of cases with its ``explanations.csv``); the steps
themselves live below (:func:`medhdm.pipeline.explain_image`, :mod:`medhdm.export`).

Outputs in ``out_dir`` per case: ``<case>_saliency.nii.gz`` (the map on the source grid,
with the source affine), and with ``export_formats`` the DICOM objects of
:func:`medhdm.export.export` in ``<case>_dicom/``.
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
from .pipeline import InputSpec, explain_image

__all__ = ["StudyCase", "explain_studies", "explain_study"]

#: the columns of ``explanations.csv``, one row per explained case
CSV_COLUMNS = ("case", "image", "class_idx", "score", "map", "export")


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
    overwrite: bool = False,
) -> dict:
    """Explain one study and write its outputs into ``out_dir``; return its ``explanations.csv`` row (``score`` a float).

    Args:
        case: the study.
        explainer: any medhdm explainer.
        spec: the classifier's input (:class:`~medhdm.pipeline.InputSpec`).
        out_dir: an existing folder.
        export_formats: DICOM source only: formats of :func:`medhdm.export.export` (``sc``, ``pm``, ...).
        method: the method's name in the exported series descriptions (default: the explainer's).
        overwrite: replace an export that ``<case>_dicom/`` already holds (otherwise refused).
    """
    out = Path(out_dir)
    result = explain_image(case.image, explainer, spec, class_idx=case.class_idx, keep_dicom=bool(export_formats))
    map_path = out / f"{case.case}_saliency.nii.gz"
    volume = result.saliency if result.saliency.ndim == 3 else result.saliency[..., None]
    write_nifti(map_path, volume.astype(np.float32), result.affine)
    exported = ""
    if export_formats:
        if result.dicom is None:
            raise ValueError(f"--export: {case.image} is not DICOM; DICOM export needs a DICOM source")
        from .export import export

        export(result.dicom, result.saliency_in_dicom_order(), out / f"{case.case}_dicom", list(export_formats),
               method=method or explainer.name, class_label=result.class_idx, overwrite=overwrite)
        exported = str(out / f"{case.case}_dicom")
    return {"case": case.case, "image": str(case.image), "class_idx": result.class_idx,
            "score": result.score, "map": str(map_path), "export": exported}


def explain_studies(
    cases: Sequence[StudyCase],
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
) -> list[dict]:
    """:func:`explain_study` for every case, then ``explanations.csv`` (one row per case) in ``out_dir`` (created)."""
    if not cases:
        raise ValueError("cases: nothing to explain")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, case in enumerate(cases, start=1):
        start = time.perf_counter()
        row = explain_study(case, explainer, spec, out, export_formats, method, overwrite)
        rows.append(row)
        if log:
            log(f"[{i}/{len(cases)}] {case.case}: class {row['class_idx']} (p={row['score']:.3f}), "
                f"{time.perf_counter() - start:.1f} s -> {row['map']}")

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({**row, "score": f"{row['score']:.4f}"} for row in rows)

    atomic_write(out / "explanations.csv", write_csv)
    return rows
