"""Query -> retrieve -> explain -> export -> push: one archive study at a time, through the one explain path.

::

    archive = parse_destination("http://127.0.0.1:8042/dicom-web", credentials_from_env())
    outcomes = explain_archive_studies(archive, ["1.2.3..."], explainer, spec, work_dir, model_name="default")

Per study: the archive lists the study's instances (QIDO-RS / C-FIND); the source
image series are those that are not derived objects (SC, PM, SEG, SR, ... or medhdm's
own). For each source series the derived objects' UIDs are known before any work
(:class:`~medhdm.pacs.uids.DerivedUIDs`); when the archive already holds all of them
the series is skipped without being retrieved. Otherwise the series is retrieved into
the local cache (:class:`~medhdm.pacs.cache.StudyCache`; a complete cached series is
not fetched again), explained by :func:`medhdm.study.explain_study` with the export of
SC/PM/SEG under deterministic UIDs, reported in an SR (:mod:`medhdm.pacs.sr`), and
pushed back into the same study. :func:`explain_local_study` is the same for a study
already on disk (the receiving service, ``medhdm pacs serve``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from ..explain.base import Explainer
from ..models.identity import configuration_hash, run_configuration
from ..pipeline import InputSpec, SliceSelection, input_record
from ..study import StudyCase, explain_study
from .archive import Archive, ArchiveError, InstanceRef, is_derived_by_medhdm
from .cache import StudyCache
from .redact import process_redactor
from .uids import DerivedUIDs, check_uid

if TYPE_CHECKING:
    from ..export import Deidentification

__all__ = [
    "FORMATS",
    "StudyOutcome",
    "explain_archive_studies",
    "explain_local_study",
    "faithfulness_scores",
    "lesion_scores",
    "pacs_configuration",
    "parse_formats",
    "parse_query",
    "parse_study_uids",
]

#: what ``--push`` may name: the exports of :mod:`medhdm.export` and the structured report
FORMATS = ("sc", "pm", "seg", "sr")


@dataclass
class StudyOutcome:
    """What happened to one study.

    Attributes:
        study_uid: the study.
        status: ``"done"``, ``"skipped"`` (the destination already holds every derived
            instance of this configuration) or ``"failed"`` (``error`` says why).
        derived: the derived files written (SC, PM, SEG, SR).
        pushed: instances sent to the destination now.
        seconds: ``retrieve``, ``explain`` (with export and SR) and ``push`` wall times.
        error: why it failed.
        results: per explained series: ``{"series_uid", "class_idx", "score", "scores"}`` (``scores``: the
            localisation scores against the study's lesion annotation, ``None`` without one).
    """

    study_uid: str
    status: str = "done"
    derived: list[Path] = field(default_factory=list)
    pushed: int = 0
    seconds: dict = field(default_factory=lambda: {"retrieve": 0.0, "explain": 0.0, "push": 0.0})
    error: str | None = None
    results: list[dict] = field(default_factory=list)

    def line(self) -> str:
        """One progress line (UIDs and numbers only, never patient data)."""
        t = self.seconds
        times = f"retrieve {t['retrieve']:.2f} s, explain {t['explain']:.2f} s, push {t['push']:.2f} s"
        if self.status == "failed":
            return f"study {self.study_uid}: failed: {self.error}"
        if self.status == "skipped":
            return (
                f"study {self.study_uid}: skipped (the archive holds all derived instances; "
                f"checked in {sum(t.values()):.2f} s)"
            )
        classes = ", ".join(
            f"class {r['class_idx']} (p={r['score']:.3f})"
            + (
                f", pointing game {r['scores']['pointing_game']:g}"
                if "pointing_game" in (r.get("scores") or {})
                else ""
            )
            for r in self.results
        )
        return f"study {self.study_uid}: done: {classes}; {len(self.derived)} derived, {self.pushed} pushed; {times}"


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"sc,pm,seg,sr"`` (or a list) checked against :data:`FORMATS`."""
    items = [f.strip() for f in text.split(",")] if isinstance(text, str) else [str(f).strip() for f in text]
    items = [f for f in items if f]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items or len(set(items)) != len(items):
        raise ValueError(
            f"--push: expected some of {','.join(FORMATS)} (each once), got {','.join(items) or 'nothing'}"
        )
    return tuple(items)


def check_deidentified_formats(formats: Sequence[str], deidentify: Deidentification | None) -> None:
    """De-identified results are SC, PM and SEG only: the Basic Profile does not keep an SR's content.

    PS3.15 Table E.1-1 gives Content Sequence (0040,A730) a dummy value (``D``) in the Basic
    Profile, which leaves the report without its findings; the Clean Structured Content
    option that would keep it cleaned is not implemented.

    Raises:
        ValueError: naming ``--push`` and ``--deidentify``, when ``sr`` is asked for with de-identification.
    """
    if deidentify is not None and "sr" in formats:
        raise ValueError(
            "--push: the SR cannot be de-identified (the Basic Profile does not keep its Content Sequence, "
            "PS3.15 Table E.1-1); with --deidentify push some of sc,pm,seg"
        )


#: study-level query keys users may give, and the attribute each searches
QUERY_KEYS = {
    "Modality": "ModalitiesInStudy",
    "ModalitiesInStudy": "ModalitiesInStudy",
    "StudyDate": "StudyDate",
    "AccessionNumber": "AccessionNumber",
    "PatientID": "PatientID",
    "StudyInstanceUID": "StudyInstanceUID",
    "StudyDescription": "StudyDescription",
}


def parse_query(items: Sequence[str]) -> dict[str, str]:
    """``["Modality=CT", "StudyDate=20240101-"]`` as study-level query attributes (``Modality`` searches
    ``ModalitiesInStudy``); unknown keys and malformed items are refused."""
    query: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"--query: expected KEY=VALUE, got {item!r}")
        if key not in QUERY_KEYS:
            raise ValueError(f"--query: unknown key {key!r}; expected one of {', '.join(QUERY_KEYS)}")
        query[QUERY_KEYS[key]] = value
    return query


def parse_study_uids(items: Sequence[str]) -> list[str]:
    """``--study`` values checked as DICOM UIDs (each becomes a folder name), duplicates dropped."""
    return list(dict.fromkeys(check_uid(item, "--study", quote=True) for item in items))


def pacs_configuration(
    explainer: Explainer,
    spec: InputSpec,
    model_name: str,
    slices: SliceSelection | str | None = None,
    class_idx: int | None = None,
    seg_threshold: float = 0.5,
    deidentify: Deidentification | None = None,
) -> dict:
    """The run configuration (:func:`~medhdm.models.identity.run_configuration`) whose hash seeds the derived UIDs.

    It holds what changes the derived objects (model, weights, method and settings, the
    classifier's input, slices, class, SEG threshold, de-identification (never its secret),
    medhdm's version), not which formats are pushed.
    """
    extra = {
        "input": input_record(spec, slices),
        "class_idx": class_idx,
        "seg_threshold": seg_threshold,
    }
    if deidentify is not None:
        extra["deidentify"] = deidentify.record()
    return run_configuration(explainer.model, explainer, model_name=model_name, extra=extra)


_ANNOTATION_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.481.3")  # SEG, RTSTRUCT


def _is_annotation(sop_class_uid: str, series_description: str) -> bool:
    """A lesion annotation candidate: a SEG or RTSTRUCT that is not one of medhdm's saliency outputs."""
    return sop_class_uid in _ANNOTATION_SOP_CLASSES and not series_description.startswith("medhdm ")


def _annotation_series(refs: Sequence[InstanceRef]) -> dict[str, list[InstanceRef]]:
    """Annotation instances (SEG, RTSTRUCT not made by medhdm) by Series UID."""
    series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        if _is_annotation(ref.sop_class_uid, ref.series_description):
            series.setdefault(ref.series_uid, []).append(ref)
    return series


def _source_series(refs: Sequence[InstanceRef]) -> dict[str, list[InstanceRef]]:
    """Source image instances by Series UID (derived objects and medhdm's own left out)."""
    series: dict[str, list[InstanceRef]] = {}
    for ref in refs:
        if ref.is_source:
            series.setdefault(ref.series_uid, []).append(ref)
    return series


def _class_name(explainer: Explainer, class_idx: int) -> str | None:
    """The class's name from the model card of a shipped model (``model.medhdm_card["classes"]``), if any."""
    classes = (getattr(explainer.model, "medhdm_card", None) or {}).get("classes") or []
    return str(classes[class_idx]) if 0 <= class_idx < len(classes) else None


def _series_input(folder: Path, files: Sequence[Path]) -> Path:
    """What :func:`~medhdm.study.explain_study` reads: the one file of a single image, else the series folder."""
    return files[0] if len(files) == 1 else folder


def _local_series(study_dir: Path) -> tuple[str, dict[str, list[tuple[Path, pydicom.Dataset]]], list[Path]]:
    """The study's Study UID, its source series ``{Series UID: [(path, header), ...]}`` and its annotation files
    (SEG/RTSTRUCT not made by medhdm) found under ``study_dir``."""
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
        if _is_annotation(sop_class, str(ds.get("SeriesDescription", ""))):
            annotations.append(path)
        elif not is_derived_by_medhdm(str(ds.get("Manufacturer", "")), sop_class):
            found.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if len(studies) != 1:
        raise ValueError(f"{study_dir}: expected the files of one study, found {len(studies)} Study Instance UIDs")
    if not found:
        raise ValueError(f"{study_dir}: no source image series (only derived objects or non-images)")
    return studies.pop(), found, annotations


def lesion_scores(source: Path, map_path: Path, annotations: Sequence[Path]) -> dict[str, float] | None:
    """Localisation scores of the saved map against the first annotation that lies on the source's grid.

    Args:
        source: the explained DICOM image or series folder.
        map_path: the map :func:`~medhdm.study.explain_study` wrote (NIfTI, MONAI order on the source grid).
        annotations: candidate SEG / RTSTRUCT files (those of other series or frames are passed over).

    Returns:
        ``{"pointing_game", "auroc", "lesion_hit_rate", "energy_in_lesion"}`` (undefined ones left out), or
        ``None`` when no annotation with a lesion fits the source.
    """
    if not annotations:
        return None
    import math

    import nibabel as nib
    import numpy as np

    from ..io.annotations import ImageGrid, load_annotation
    from ..io.dicom import read_dicom
    from ..metrics.localisation import score

    grid = ImageGrid.from_dicom(read_dicom(source))
    saliency = np.asarray(nib.load(map_path).dataobj, dtype=np.float64).reshape(grid.shape)
    for path in annotations:
        try:
            labels = load_annotation(path, grid)
        except ValueError:  # another series' annotation
            continue
        if labels.any():
            scores = score(saliency, labels.reshape(grid.shape) > 0)
            keep = ("pointing_game", "auroc", "lesion_hit_rate", "energy_in_lesion")
            return {k: float(scores[k]) for k in keep if not math.isnan(float(scores[k]))}
    return None


def _series_folder(work: Path, series_uid: str, items: Sequence[tuple[Path, pydicom.Dataset]]) -> Path:
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


def faithfulness_scores(
    source: Path,
    map_path: Path,
    explainer: Explainer,
    spec: InputSpec,
    class_idx: int,
    slices: SliceSelection | str | None = None,
    n_steps: int = 32,
) -> dict[str, float]:
    """Deletion and insertion of the saved map for ``class_idx`` on the model's view, read as ``medhdm
    evaluate`` reads them: ``deletion_half`` / ``insertion_half`` and ``deletion_auc_log`` /
    ``insertion_auc_log`` on 41 log-spaced shares from 0.01 % (:func:`medhdm.metrics.faithfulness_scores`),
    and the classic ``deletion_auc`` / ``insertion_auc`` over ``n_steps`` equal shares (the SR's
    codes before 2026-11-27; as ``medhdm evaluate --curve-steps N``).

    The map (NIfTI on the source grid) is brought to the classifier's grid by the image's
    own layout and resize steps (:func:`~medhdm.pipeline.map_to_classifier_grid`); with
    ``slices``, the mean over the explained slices (NaN shares, where a slice has no evidence above
    the reference, left out; NaN when none has).
    """
    import nibabel as nib
    import numpy as np

    from ..metrics.faithfulness import faithfulness_scores as curve_scores
    from ..pipeline import classify_image, load_image, map_to_classifier_grid

    image = load_image(source)
    x, cls, _, chosen = classify_image(image, explainer.model, spec, class_idx, slices)
    saliency = np.asarray(nib.load(map_path).dataobj, dtype=np.float32).reshape(tuple(image.shape[1:]))
    on_grid = map_to_classifier_grid(saliency, image, spec, by_slice=slices is not None)
    on_grid = (on_grid[list(chosen)] if chosen is not None else on_grid).to(x.device)
    reference = getattr(explainer, "reference", "blur")
    out: dict[str, float] = {}
    for steps in (None, n_steps):
        scores, _ = curve_scores(explainer.model, x, on_grid, cls, steps=steps, reference=reference)
        for name, values in scores.items():
            if steps is None or name.endswith("_auc"):
                finite = [v for v in values if np.isfinite(v)]
                out[name] = float(np.mean(finite)) if finite else float("nan")
    return out


def _explain_series(
    work: Path,
    series_uid: str,
    items: Sequence[tuple[Path, pydicom.Dataset]],
    annotations: Sequence[Path],
    uids: DerivedUIDs,
    explainer: Explainer,
    spec: InputSpec,
    config: dict,
    formats: Sequence[str],
    slices: SliceSelection | str | None,
    class_idx: int | None,
    deidentify: Deidentification | None = None,
) -> tuple[list[Path], dict]:
    """Explain one source series through :func:`~medhdm.study.explain_study`, export it, write its SR.

    Returns:
        the derived files, and ``{"series_uid", "class_idx", "score", "scores"}``.
    """
    source = _series_input(_series_folder(work, series_uid, items), [p for p, _ in items])
    exports = [f for f in formats if f != "sr"]
    row = explain_study(
        StudyCase(source, series_uid, class_idx),
        explainer,
        spec,
        work,
        export_formats=exports,
        method=explainer.name,
        overwrite=True,
        slices=slices,
        uid_source=uids,
        deidentify=deidentify,
    )
    export_dir = Path(row["export"]) if exports else work / f"{series_uid}_dicom"
    derived = sorted(export_dir.glob("*.dcm")) if exports else []
    scores = lesion_scores(source, Path(row["map"]), annotations)
    if scores is not None:  # an annotated study: the map's faithfulness to the model beside its localisation
        scores.update(faithfulness_scores(source, Path(row["map"]), explainer, spec, int(row["class_idx"]), slices))
    if "sr" in formats:
        from .sr import write_structured_report

        export_dir.mkdir(exist_ok=True)
        sr = write_structured_report(
            export_dir / "SR.dcm",
            [p for p, _ in items],
            config=config,
            class_idx=int(row["class_idx"]),
            probability=float(row["score"]),
            uids=uids,
            seg_path=export_dir / "SEG.dcm" if "seg" in exports else None,
            class_name=_class_name(explainer, int(row["class_idx"])),
            scores=scores,
        )
        derived.append(sr)
    result = {"series_uid": series_uid, "class_idx": int(row["class_idx"]), "score": row["score"], "scores": scores}
    return derived, result


def explain_local_study(
    study_dir: Path,
    explainer: Explainer,
    spec: InputSpec,
    work_dir: Path,
    *,
    model_name: str,
    formats: Sequence[str] = ("sc", "pm", "seg", "sr"),
    destination: Archive | None = None,
    log: Callable[[str], None] | None = print,
    slices: SliceSelection | str | None = None,
    class_idx: int | None = None,
    seg_threshold: float = 0.5,
    deidentify: Deidentification | None = None,
) -> StudyOutcome:
    """Explain every source series of the study in ``study_dir`` and push the derived objects to ``destination``.

    Args:
        study_dir: the files of one study (any layout; derived and non-DICOM files ignored).
        explainer, spec: the method on its model, and the classifier's input.
        work_dir: where maps, exports and the SR are written (``<work_dir>/<Series UID>_dicom/``).
        model_name: the model's name in the configuration and the SR.
        formats: what to make and push: any of ``sc``, ``pm``, ``seg``, ``sr``.
        destination: where to push (``None``: only write the files).
        log: progress lines (``None``: silent).
        slices, class_idx, seg_threshold: as for ``medhdm explain``.
        deidentify: de-identify the derived objects (:class:`medhdm.export.Deidentification`; not
            with ``sr``); they then go to the de-identified study (its UIDs remapped by the secret).

    Returns:
        the outcome; ``"skipped"`` when the destination already holds every derived instance.
        Errors are raised (the caller decides whether a study's failure ends the run).
    """
    formats = parse_formats(formats)
    check_deidentified_formats(formats, deidentify)
    outcome = StudyOutcome(study_uid="")
    study_uid, series, annotations = _local_series(Path(study_dir))
    outcome.study_uid = study_uid
    config = pacs_configuration(explainer, spec, model_name, slices, class_idx, seg_threshold, deidentify)
    key = configuration_hash(config)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    to_push: list[Path] = []
    skipped = 0
    for series_uid, items in series.items():
        frames = {str(ds.SOPInstanceUID): int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items}
        uids = DerivedUIDs(key, study_uid, series_uid, list(frames), frames)
        expected = [uid for group in uids.expected(formats).values() for uid in group]
        if destination is not None:
            start = time.perf_counter()
            held = _present(destination, study_uid, expected, deidentify)
            outcome.seconds["push"] += time.perf_counter() - start
            if len(held) == len(expected):
                skipped += 1
                continue
        start = time.perf_counter()
        derived, result = _explain_series(
            work, series_uid, items, annotations, uids, explainer, spec, config, formats, slices, class_idx, deidentify
        )
        outcome.seconds["explain"] += time.perf_counter() - start
        outcome.derived += derived
        outcome.results.append(result)
        to_push += derived
    if skipped == len(series):
        outcome.status = "skipped"
        return outcome
    if destination is not None and to_push:
        start = time.perf_counter()
        report = destination.push(to_push)
        outcome.pushed = len(report.sent)
        outcome.seconds["push"] += time.perf_counter() - start
    return outcome


def explain_archive_studies(
    archive: Archive,
    study_uids: Sequence[str],
    explainer: Explainer,
    spec: InputSpec,
    work_dir: Path,
    *,
    model_name: str,
    formats: Sequence[str] = ("sc", "pm", "seg", "sr"),
    destination: Archive | None = None,
    cache: StudyCache | None = None,
    push: bool = True,
    log: Callable[[str], None] | None = print,
    slices: SliceSelection | str | None = None,
    class_idx: int | None = None,
    seg_threshold: float = 0.5,
    deidentify: Deidentification | None = None,
) -> list[StudyOutcome]:
    """Retrieve, explain and push back each study of ``archive``; one progress line per study.

    A study that fails is reported (``status="failed"``) and the next one goes on (a Study
    Instance UID that is not a valid UID fails before it becomes a folder name). The
    derived objects go to ``destination`` (default: ``archive`` itself, into the source study;
    with ``deidentify``, into the de-identified study, as :func:`explain_local_study` says).
    """
    formats = parse_formats(formats)
    check_deidentified_formats(formats, deidentify)
    work = Path(work_dir)
    cache = cache or StudyCache(work / "cache")
    target = (destination or archive) if push else None
    config = pacs_configuration(explainer, spec, model_name, slices, class_idx, seg_threshold, deidentify)
    key = configuration_hash(config)
    outcomes = []
    for i, study_uid in enumerate(study_uids, start=1):
        outcome = StudyOutcome(study_uid=study_uid)
        try:
            check_uid(study_uid, "Study Instance UID")  # it becomes a folder (an archive's answer may be anything)
            start = time.perf_counter()
            refs = archive.instances(study_uid)
            series = _source_series(refs)
            if not series:
                raise ArchiveError(f"{archive.describe()}: study {study_uid}: no source image series found")
            if target is not None and _all_present(target, study_uid, series, key, formats, deidentify):
                outcome.status = "skipped"
                outcome.seconds["retrieve"] = time.perf_counter() - start
            else:
                for series_uid, items in {**series, **_annotation_series(refs)}.items():
                    cache.fetch(
                        study_uid,
                        series_uid,
                        [r.sop_uid for r in items],
                        lambda folder, s=series_uid, st=study_uid: archive.retrieve_series(st, s, folder),
                    )
                retrieve = time.perf_counter() - start
                outcome = explain_local_study(
                    cache.study_folder(study_uid),
                    explainer,
                    spec,
                    work / study_uid,
                    model_name=model_name,
                    formats=formats,
                    destination=target,
                    log=log,
                    slices=slices,
                    class_idx=class_idx,
                    seg_threshold=seg_threshold,
                    deidentify=deidentify,
                )
                outcome.seconds["retrieve"] = retrieve
        except Exception as err:  # noqa: BLE001 (a study's failure is reported; the run goes on)
            outcome.status, outcome.error = "failed", process_redactor().redact(" ".join(str(err).split()))
        outcomes.append(outcome)
        if log:
            log(f"[{i}/{len(study_uids)}] {outcome.line()}")
    return outcomes


def _present(target: Archive, study_uid: str, expected: Sequence[str], deidentify: Deidentification | None) -> set[str]:
    """Which of the derived instances ``expected`` the target holds: in the source study, or, de-identified,
    under the UIDs the de-identification gives the study and the instances."""
    if deidentify is None:
        return target.present(study_uid, expected)
    return target.present(deidentify.uid(study_uid), [deidentify.uid(uid) for uid in expected])


def _all_present(
    target: Archive,
    study_uid: str,
    series: dict,
    key: str,
    formats: Sequence[str],
    deidentify: Deidentification | None = None,
) -> bool:
    """The target already holds every derived instance of every source series (so nothing needs retrieving)."""
    expected = []
    for series_uid, refs in series.items():
        uids = DerivedUIDs(key, study_uid, series_uid, [r.sop_uid for r in refs], {r.sop_uid: r.frames for r in refs})
        expected += [uid for group in uids.expected(formats).values() for uid in group]
    return len(_present(target, study_uid, expected, deidentify)) == len(expected)
