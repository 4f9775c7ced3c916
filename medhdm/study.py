"""Explain a study end to end: load -> preprocess -> explain -> invert -> write the map, its row, and exports.

The one path every runner takes: ``medhdm explain``, the tutorials, the archive (PACS)
runners and the cohort engines (:mod:`medhdm.cohort`, local or Ray, which add resuming,
failures and ``explanations.csv``) call :func:`explain_study` per case, or
:func:`explain_study_batch` for cases explained in one batch; the steps themselves live
below (:func:`medhdm.pipeline.explain_images`, :mod:`medhdm.export`).

Outputs per case in its own folder ``out_dir/<case>/``: ``<case>_saliency.nii.gz`` (the
map on the source grid, with the source affine), and with ``export_formats`` the DICOM
objects of :func:`medhdm.export.export` in ``<case>_dicom/``. A 2D classifier over a series
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .explain.base import Explainer
from .io.atomic import atomic_write
from .io.nifti import write_nifti
from .pipeline import ExplainedImage, InputSpec, SliceSelection, explain_images

if TYPE_CHECKING:  # highdicom and the exporters load only when a study is exported
    from .export import Deidentification

__all__ = [
    "CSV_COLUMNS",
    "StudyCase",
    "case_folder",
    "check_output_folder",
    "explain_study",
    "explain_study_batch",
    "write_explanations_csv",
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


def check_output_folder(out_dir: str | os.PathLike, cases: Sequence[StudyCase]) -> Path:
    """``out_dir`` resolved, refused if it is a file, a source file, or inside a source series folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir: {out} is a file, not a folder")
    resolved = out.resolve()
    for case in cases:
        source = Path(case.image).resolve()
        if resolved == source or (source.is_dir() and (resolved == source or source in resolved.parents)):
            raise ValueError(f"out_dir: {out} lies inside the source {case.image}; write the outputs elsewhere")
    return out


def _inside(out: Path, case: str, suffix: str) -> Path:
    """``out / (case + suffix)`` after checking that the case name is one plain name that stays inside ``out``."""
    path = out / f"{case}{suffix}"
    if not case or "/" in case or os.sep in case or case.startswith(".") or out.resolve() != path.resolve().parent:
        raise ValueError(f"case name {case!r} would write outside {out}; give the case a plain name")
    return path


@dataclass(frozen=True)
class StudyCase:
    """One study to explain: its image (DICOM file, series folder or NIfTI), output name and class (None: predicted)."""

    image: Path
    case: str
    class_idx: int | None = None


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
) -> dict:
    """Explain one study, write its outputs into ``out_dir/<case>/``; return its ``explanations.csv`` row.

    Args:
        case: the study.
        explainer: any medhdm explainer.
        spec: the classifier's input (:class:`~medhdm.pipeline.InputSpec`).
        out_dir: an existing folder; the case's folder is made in it.
        export_formats: DICOM source only: formats of :func:`medhdm.export.export` (``sc``, ``pm``, ...).
        method: the method's name in the exported series descriptions (default: the explainer's).
        overwrite: replace an export that ``<case>/<case>_dicom/`` already holds (otherwise refused).
        slices: a 2D classifier over a 3D series: the slices to explain (:class:`~medhdm.pipeline.SliceSelection`).
        uid_source: the exported objects' Series/SOP Instance UIDs from keys (deterministic UIDs,
            :class:`medhdm.pacs.uids.DerivedUIDs`); default: new random UIDs.
        deidentify: de-identify the exported DICOM objects (:class:`medhdm.export.Deidentification`).
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
    )[0]


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
) -> list[dict]:
    """:func:`explain_study` of several studies, explained together (:func:`~medhdm.pipeline.explain_images`:
    one batch per classifier input shape), each written as :func:`explain_study` does. An error in any raises.
    ``uid_sources``: one ``uid_source`` of :func:`explain_study` per case (default: random UIDs for all);
    ``deidentify`` as for :func:`explain_study`."""
    uid_sources = list(uid_sources) if uid_sources is not None else [None] * len(cases)
    if len(uid_sources) != len(cases):
        raise ValueError(f"uid_sources: expected one per case ({len(cases)}), got {len(uid_sources)}")
    out = Path(out_dir)
    folders = [case_folder(out, c.case) for c in cases]  # every name checked before any work
    results = explain_images(
        [c.image for c in cases],
        explainer,
        spec,
        [c.class_idx for c in cases],
        keep_dicom=bool(export_formats),
        slices=slices,
    )
    return [
        _write_study(case, result, folder, explainer, export_formats, method, overwrite, uids, deidentify)
        for case, result, folder, uids in zip(cases, results, folders, uid_sources)
    ]


def _write_study(
    case: StudyCase,
    result: ExplainedImage,
    folder: Path,
    explainer: Explainer,
    export_formats: Sequence[str],
    method: str | None,
    overwrite: bool,
    uid_source: Callable[[str], str] | None = None,
    deidentify: Deidentification | None = None,
) -> dict:
    """Write one explained study's map (and slices table, exports) into ``folder``; return its row."""
    folder.mkdir(exist_ok=True)
    map_path = _inside(folder, case.case, "_saliency.nii.gz")
    volume = result.saliency if result.saliency.ndim == 3 else result.saliency[..., None]
    write_nifti(map_path, volume.astype(np.float32), result.affine)
    exported = ""
    if export_formats:
        if result.dicom is None:
            raise ValueError(f"export_formats: {case.image} is not DICOM; DICOM export needs a DICOM source")
        from .export import export

        export_dir = _inside(folder, case.case, "_dicom")
        export(
            result.dicom,
            result.saliency_in_dicom_order(),
            export_dir,
            list(export_formats),
            method=method or explainer.name,
            class_label=result.class_idx,
            overwrite=overwrite,
            uid_source=uid_source,
            deidentify_salt=deidentify.salt if deidentify is not None else None,
            retain_dates=deidentify.retain_dates if deidentify is not None else False,
        )
        exported = str(export_dir)
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
    if result.slice_scores is not None:
        slices_path = _inside(folder, case.case, "_slices.csv")
        explained = set(result.explained_slices)

        def write_slices(tmp: str) -> None:
            with open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["slice", f"p_class{result.class_idx}", "explained"])
                writer.writerows([k, f"{p:.4f}", int(k in explained)] for k, p in enumerate(result.slice_scores))

        atomic_write(slices_path, write_slices)
        row.update(
            slice_reduce=result.slice_reduce,
            slices=" ".join(str(k) for k in result.explained_slices),
            slice_scores=str(slices_path),
        )
    return row


def write_explanations_csv(path: str | os.PathLike, rows: Sequence[dict]) -> None:
    """``explanations.csv`` of ``rows`` (:data:`CSV_COLUMNS`), written atomically (scores with 4 decimals)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({**row, "score": f"{float(row['score']):.4f}"} for row in rows)

    atomic_write(Path(path), write)
