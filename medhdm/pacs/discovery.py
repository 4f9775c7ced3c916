"""What a study holds: its source image series and its lesion annotations, in an archive's listing or a folder.

A *source* series is one of images that are not derived objects (SC, PM, SEG, SR, ... or
medhdm's own); an *annotation* is a SEG or RTSTRUCT that medhdm did not make (a lesion the
maps are scored against). :func:`source_series` and :func:`annotation_series` sort an archive's
listing (:class:`~medhdm.pacs.archive.InstanceRef`); :func:`find_local_study` reads the headers
of a study on disk (the retrieved cache, or a study the service received).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom

from .archive import InstanceRef, is_derived_by_medhdm
from .uids import check_uid

__all__ = [
    "LocalStudy",
    "annotation_series",
    "find_local_study",
    "is_annotation",
    "series_folder",
    "series_input",
    "source_series",
]

_ANNOTATION_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3")  # SEG, RTSTRUCT


def is_annotation(sop_class_uid: str, series_description: str) -> bool:
    """A lesion annotation candidate: a SEG or RTSTRUCT that is not one of medhdm's saliency outputs."""
    return sop_class_uid in _ANNOTATION_SOP_CLASSES and not series_description.startswith("medhdm ")


def annotation_series(refs: Sequence[InstanceRef]) -> dict[str, list[InstanceRef]]:
    """Annotation instances (SEG, RTSTRUCT not made by medhdm) by Series UID."""
    series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        if is_annotation(ref.sop_class_uid, ref.series_description):
            series.setdefault(ref.series_uid, []).append(ref)
    return series


def source_series(refs: Sequence[InstanceRef]) -> dict[str, list[InstanceRef]]:
    """Source image instances by Series UID (derived objects and medhdm's own left out)."""
    series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        if ref.is_source:
            series.setdefault(ref.series_uid, []).append(ref)
    return series


@dataclass(frozen=True)
class LocalStudy:
    """A study on disk.

    Attributes:
        study_uid: its Study Instance UID.
        series: its source image series, ``{Series UID: [(path, header), ...]}``.
        annotations: its annotation files (SEG, RTSTRUCT not made by medhdm).
    """

    study_uid: str
    series: dict[str, list[tuple[Path, pydicom.Dataset]]]
    annotations: tuple[Path, ...]


def find_local_study(study_dir: Path) -> LocalStudy:
    """The study in ``study_dir`` (any layout; derived objects, hidden and non-DICOM files passed over).

    Raises:
        ValueError: naming the folder, when it holds the files of no study or of several, or no source
            image series; naming the file, when a Study, Series or SOP Instance UID (each names a folder
            or file) is not a DICOM UID.
    """
    found: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    annotations: list[Path] = []
    studies = set()
    for path in sorted(p for p in Path(study_dir).rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            sop_class, study_uid = str(ds.SOPClassUID), str(ds.StudyInstanceUID)
        except Exception:  # noqa: BLE001, S112 (not DICOM: markers, notes; not part of the study)
            continue
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"):  # each names a file or folder
            try:
                check_uid(ds.get(keyword), keyword)
            except ValueError as err:
                raise ValueError(f"{path}: {err}") from None
        studies.add(study_uid)
        if is_annotation(sop_class, str(ds.get("SeriesDescription", ""))):
            annotations.append(path)
        elif not is_derived_by_medhdm(str(ds.get("Manufacturer", "")), sop_class):
            found.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if len(studies) != 1:
        raise ValueError(f"{study_dir}: expected the files of one study, found {len(studies)} Study Instance UIDs")
    if not found:
        raise ValueError(f"{study_dir}: no source image series (only derived objects or non-images)")
    return LocalStudy(studies.pop(), found, tuple(annotations))


def series_folder(work: Path, series_uid: str, items: Sequence[tuple[Path, pydicom.Dataset]]) -> Path:
    """A folder that holds exactly the series' files (links into ``work`` when they share a folder with others)."""
    folders = {p.parent for p, _ in items}
    if len(folders) == 1:
        folder = folders.pop()
        if len([p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")]) == len(items):
            return folder
    folder = work / "series" / series_uid
    folder.mkdir(parents=True, exist_ok=True)
    for path, ds in items:
        link = folder / f"{ds.SOPInstanceUID}.dcm"
        if not link.exists():
            link.symlink_to(Path(path).resolve())
    return folder


def series_input(folder: Path, files: Sequence[Path]) -> Path:
    """What :func:`~medhdm.study.explain_study` reads: the one file of a single image, else the series folder."""
    return files[0] if len(files) == 1 else folder
