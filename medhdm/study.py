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

Safety: every output path lies inside ``out_dir`` (a case name that would lead out of
it is refused), ``out_dir`` may not lie inside a source series folder nor be a source
file, each file is written atomically, and :func:`explain_studies` rewrites
``explanations.csv`` after each case, so a run that fails (or is killed) at case ``k``
leaves cases ``1..k-1`` complete and listed, and says which case failed.
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
from .io.atomic import LockedFolder, atomic_write, remove_stale_temporaries
from .io.nifti import write_nifti
from .io.reader import is_dicom_path
from .pipeline import InputSpec, SliceSelection, explain_image

__all__ = ["StudyCase", "StudyError", "check_output_folder", "explain_studies", "explain_study"]

#: the columns of ``explanations.csv``, one row per explained case
CSV_COLUMNS = ("case", "image", "class_idx", "score", "map", "export", "slice_reduce", "slices", "slice_scores")


class StudyError(RuntimeError):
    """A case of :func:`explain_studies` failed: ``index`` (1-based) and ``case`` say which, ``done`` how many
    cases before it were written, ``error`` why."""

    def __init__(self, index: int, case: StudyCase, done: int, error: BaseException) -> None:
        self.index, self.case, self.done, self.error = index, case, done, error
        kept = f"cases 1-{done} are complete and listed in explanations.csv" if done else "no case was written"
        super().__init__(f"case {index} ({case.case}, {case.image}) failed: {error}; {kept}")


def check_output_folder(out_dir: str | os.PathLike, cases: Sequence[StudyCase]) -> Path:
    """``out_dir`` resolved, refused if it is a file, a source file, or inside a source series folder."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {out} is a file, not a folder")
    resolved = out.resolve()
    for case in cases:
        source = Path(case.image).resolve()
        if resolved == source or (source.is_dir() and (resolved == source or source in resolved.parents)):
            raise ValueError(f"--out: {out} lies inside the source {case.image}; write the outputs elsewhere")
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
) -> dict:
    """Explain one study, write its outputs into ``out_dir``; return its ``explanations.csv`` row (``score``: float).

    Args:
        case: the study.
        explainer: any medhdm explainer.
        spec: the classifier's input (:class:`~medhdm.pipeline.InputSpec`).
        out_dir: an existing folder.
        export_formats: DICOM source only: formats of :func:`medhdm.export.export` (``sc``, ``pm``, ...).
        method: the method's name in the exported series descriptions (default: the explainer's).
        overwrite: replace an export that ``<case>_dicom/`` already holds (otherwise refused).
        slices: a 2D classifier over a 3D series: the slices to explain (:class:`~medhdm.pipeline.SliceSelection`).
        uid_source: the exported objects' Series/SOP Instance UIDs from keys (deterministic UIDs,
            :class:`medhdm.pacs.uids.DerivedUIDs`); default: new random UIDs.
    """
    out = Path(out_dir)
    map_path = _inside(out, case.case, "_saliency.nii.gz")
    result = explain_image(
        case.image, explainer, spec, class_idx=case.class_idx, keep_dicom=bool(export_formats), slices=slices
    )
    volume = result.saliency if result.saliency.ndim == 3 else result.saliency[..., None]
    write_nifti(map_path, volume.astype(np.float32), result.affine)
    exported = ""
    if export_formats:
        if result.dicom is None:
            raise ValueError(f"--export: {case.image} is not DICOM; DICOM export needs a DICOM source")
        from .export import export

        export_dir = _inside(out, case.case, "_dicom")
        export(
            result.dicom,
            result.saliency_in_dicom_order(),
            export_dir,
            list(export_formats),
            method=method or explainer.name,
            class_label=result.class_idx,
            overwrite=overwrite,
            uid_source=uid_source,
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
    }
    if result.slice_scores is not None:
        slices_path = _inside(out, case.case, "_slices.csv")
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


def explain_studies(
    cases: Sequence[StudyCase],
    explainer: Explainer,
    spec: InputSpec,
    out_dir: str | os.PathLike,
    export_formats: Sequence[str] = (),
    method: str | None = None,
    log: Callable[[str], None] | None = print,
    overwrite: bool = False,
    slices: SliceSelection | str | None = None,
) -> list[dict]:
    """:func:`explain_study` for every case, with ``explanations.csv`` (one row per case done) in ``out_dir``.

    ``out_dir`` is created (and removed again if the first case fails and nothing was written)
    and locked for the run (a second run into it fails at once); temporary files that a
    killed run left in it are removed first. Maps (and exports) already there are replaced
    only with ``overwrite``; otherwise the run is refused before any work.

    Raises:
        StudyError: a case failed (its ``error`` says why); the cases before it are complete.
    """
    if not cases:
        raise ValueError("cases: nothing to explain")
    out = check_output_folder(out_dir, cases)
    if export_formats:
        not_dicom = [c for c in cases if not is_dicom_path(c.image)]
        if not_dicom:
            raise ValueError(f"--export: {not_dicom[0].image} is not DICOM; DICOM export needs DICOM sources")
    rows: list[dict] = []
    with LockedFolder(out, what="--out"):
        remove_stale_temporaries(out)
        existing = [out / f"{c.case}_saliency.nii.gz" for c in cases if (out / f"{c.case}_saliency.nii.gz").exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"--out: {existing[0]} exists ({len(existing)} of the maps do); pass --overwrite "
                "to replace them, or choose another folder"
            )
        for i, case in enumerate(cases, start=1):
            start = time.perf_counter()
            try:
                row = explain_study(case, explainer, spec, out, export_formats, method, overwrite, slices)
            except Exception as err:
                raise StudyError(i, case, len(rows), err) from err
            rows.append(row)
            _write_csv(out / "explanations.csv", rows)
            if log:
                by_slice = (
                    f" ({row['slice_reduce']} over slices; explained slices {row['slices']})" if row["slices"] else ""
                )
                log(
                    f"[{i}/{len(cases)}] {case.case}: class {row['class_idx']} (p={row['score']:.3f}){by_slice}, "
                    f"{time.perf_counter() - start:.1f} s -> {row['map']}"
                )
    return rows


def _write_csv(path: Path, rows: Sequence[dict]) -> None:
    """``explanations.csv`` of ``rows``, written atomically (scores with 4 decimals)."""

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS))
            writer.writeheader()
            writer.writerows({**row, "score": f"{row['score']:.4f}"} for row in rows)

    atomic_write(path, write)
