"""Query -> retrieve -> explain -> export -> push: one archive study at a time, through the one explain path.

::

    archive = parse_destination("http://127.0.0.1:8042/dicom-web", credentials_from_env())
    options = PacsOptions(model_name="default")
    outcomes = explain_archive_studies(archive, ["1.2.3..."], explainer, spec, work_dir, options)

Per study: the archive lists the study's instances (QIDO-RS / C-FIND); the source image
series are those that are not derived objects (:mod:`medhdm.pacs.discovery`). For each
source series the derived objects' UIDs are known before any work
(:class:`~medhdm.pacs.uids.DerivedUIDs`); when the archive already holds all of them the
series is skipped without being retrieved. Otherwise the series is retrieved into the
local cache (:class:`~medhdm.pacs.cache.StudyCache`; a complete cached series is not
fetched again), explained by :func:`medhdm.study.explain_study`, which exports SC, PM,
SEG and the structured report (:mod:`medhdm.export.sr`; with the map's scores against the
study's lesion annotation) as one set under deterministic UIDs, and pushed back into the
same study. :func:`explain_local_study` is the same for a study already on disk (the
receiving service, ``medhdm pacs serve``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from ..explain.base import Explainer
from ..io.redact import process_redactor
from ..models.identity import configuration_hash, run_configuration
from ..pipeline import InputSpec, SliceSelection, input_record
from ..study import StudyCase, StudyReport, explain_study
from .archive import Archive, ArchiveError, InstanceRef
from .cache import StudyCache
from .discovery import annotation_series, find_local_study, series_folder, series_input, source_series
from .query import parse_formats
from .uids import DerivedUIDs, check_uid

if TYPE_CHECKING:
    from ..export import Deidentification

__all__ = [
    "PacsOptions",
    "StudyOutcome",
    "explain_archive_studies",
    "explain_local_study",
    "pacs_configuration",
]


@dataclass(frozen=True)
class PacsOptions:
    """How every study of a ``pacs`` run (or of the service) is explained and what is made of it.

    Attributes:
        model_name: the model's name in the configuration and the SR.
        formats: what to make and push: some of ``sc``, ``pm``, ``seg``, ``sr`` (checked, as ``--push``).
        slices, class_idx: as for ``medhdm explain``.
        seg_threshold: the thresholded map's SEG holds the map >= this (in (0, 1]); recorded in the configuration.
        deidentify: de-identify the derived objects (:class:`medhdm.export.Deidentification`; not with
            ``sr``); they then go to the de-identified study (its UIDs remapped by the secret).

    Raises:
        ValueError: naming ``--push``, for formats that are not some of ``sc,pm,seg,sr`` or ``sr`` with
            de-identification; naming ``seg_threshold`` outside (0, 1].
    """

    model_name: str
    formats: tuple[str, ...] = ("sc", "pm", "seg", "sr")
    slices: SliceSelection | str | None = None
    class_idx: int | None = None
    seg_threshold: float = 0.5
    deidentify: Deidentification | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "formats", parse_formats(self.formats, deidentified=self.deidentify is not None))
        if not 0.0 < float(self.seg_threshold) <= 1.0:
            raise ValueError(f"seg_threshold: expected a value in (0, 1], got {self.seg_threshold}")


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
            map's localisation and faithfulness scores against the study's lesion annotation, as the SR
            holds them; ``None`` without one).
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


def pacs_configuration(explainer: Explainer, spec: InputSpec, options: PacsOptions) -> dict:
    """The run configuration (:func:`~medhdm.models.identity.run_configuration`) whose hash seeds the derived UIDs.

    It holds what changes the derived objects (model, weights, method and settings, the
    classifier's input, slices, class, SEG threshold, de-identification (never its secret),
    medhdm's version), not which formats are pushed.
    """
    extra = {
        "input": input_record(spec, options.slices),
        "class_idx": options.class_idx,
        "seg_threshold": options.seg_threshold,
    }
    if options.deidentify is not None:
        extra["deidentify"] = options.deidentify.record()
    return run_configuration(explainer.model, explainer, model_name=options.model_name, extra=extra)


def _explain_series(
    work: Path,
    series_uid: str,
    items: Sequence[tuple[Path, pydicom.Dataset]],
    uids: DerivedUIDs,
    explainer: Explainer,
    spec: InputSpec,
    options: PacsOptions,
    report: StudyReport,
) -> tuple[list[Path], dict]:
    """Explain one source series through :func:`~medhdm.study.explain_study`, which exports it with its SR.

    Returns:
        the derived files, and ``{"series_uid", "class_idx", "score", "scores"}``.
    """
    source = series_input(series_folder(work, series_uid, items), [p for p, _ in items])
    row = explain_study(
        StudyCase(source, series_uid, options.class_idx),
        explainer,
        spec,
        work,
        export_formats=options.formats,
        method=explainer.name,
        overwrite=True,
        slices=options.slices,
        uid_source=uids,
        deidentify=options.deidentify,
        report=report,
        seg_threshold=options.seg_threshold,
    )
    derived = sorted(Path(row["export"]).glob("*.dcm"))
    result = {"series_uid": series_uid, "class_idx": int(row["class_idx"]), "score": row["score"]}
    return derived, {**result, "scores": row["scores"]}


def explain_local_study(
    study_dir: Path,
    explainer: Explainer,
    spec: InputSpec,
    work_dir: Path,
    options: PacsOptions,
    *,
    destination: Archive | None = None,
) -> StudyOutcome:
    """Explain every source series of the study in ``study_dir`` and push the derived objects to ``destination``.

    Args:
        study_dir: the files of one study (any layout; derived and non-DICOM files ignored).
        explainer, spec: the method on its model, and the classifier's input.
        work_dir: where maps, exports and the SR are written (``<work_dir>/<Series UID>/<Series UID>_dicom/``).
        options: the model's name, formats, slices, class, de-identification (:class:`PacsOptions`).
        destination: where to push (``None``: only write the files).

    Returns:
        the outcome; ``"skipped"`` when the destination already holds every derived instance.
        Errors are raised (the caller decides whether a study's failure ends the run).
    """
    study = find_local_study(Path(study_dir))
    outcome = StudyOutcome(study_uid=study.study_uid)
    config = pacs_configuration(explainer, spec, options)
    report = StudyReport(config=config, annotations=study.annotations)
    key = configuration_hash(config)
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    to_push: list[Path] = []
    skipped = 0
    for series_uid, items in study.series.items():
        frames = {str(ds.SOPInstanceUID): int(ds.get("NumberOfFrames", 1) or 1) for _, ds in items}
        uids = DerivedUIDs(key, study.study_uid, series_uid, list(frames), frames)
        expected = [uid for group in uids.expected(options.formats).values() for uid in group]
        if destination is not None:
            start = time.perf_counter()
            held = _present(destination, study.study_uid, expected, options.deidentify)
            outcome.seconds["push"] += time.perf_counter() - start
            if len(held) == len(expected):
                skipped += 1
                continue
        start = time.perf_counter()
        derived, result = _explain_series(work, series_uid, items, uids, explainer, spec, options, report)
        outcome.seconds["explain"] += time.perf_counter() - start
        outcome.derived += derived
        outcome.results.append(result)
        to_push += derived
    if skipped == len(study.series):
        outcome.status = "skipped"
        return outcome
    if destination is not None and to_push:
        start = time.perf_counter()
        outcome.pushed = len(destination.push(to_push).sent)
        outcome.seconds["push"] += time.perf_counter() - start
    return outcome


def _retrieve_and_explain(
    archive: Archive,
    study_uid: str,
    explainer: Explainer,
    spec: InputSpec,
    work: Path,
    options: PacsOptions,
    cache: StudyCache,
    target: Archive | None,
    key: str,
) -> StudyOutcome:
    """One archive study: skipped when ``target`` holds all its derived instances of the configuration ``key``,
    else retrieved and explained."""
    outcome = StudyOutcome(study_uid=study_uid)
    check_uid(study_uid, "Study Instance UID")  # it becomes a folder (an archive's answer may be anything)
    start = time.perf_counter()
    refs = archive.instances(study_uid)
    series = source_series(refs)
    if not series:
        raise ArchiveError(f"{archive.describe()}: study {study_uid}: no source image series found")
    if target is not None and _all_present(target, study_uid, series, key, options):
        outcome.status = "skipped"
        outcome.seconds["retrieve"] = time.perf_counter() - start
        return outcome
    for series_uid, items in {**series, **annotation_series(refs)}.items():
        cache.fetch(
            study_uid,
            series_uid,
            [r.sop_uid for r in items],
            lambda folder, s=series_uid: archive.retrieve_series(study_uid, s, folder),
        )
    retrieve = time.perf_counter() - start
    outcome = explain_local_study(
        cache.study_folder(study_uid), explainer, spec, work / study_uid, options, destination=target
    )
    outcome.seconds["retrieve"] = retrieve
    return outcome


def explain_archive_studies(
    archive: Archive,
    study_uids: Sequence[str],
    explainer: Explainer,
    spec: InputSpec,
    work_dir: Path,
    options: PacsOptions,
    *,
    destination: Archive | None = None,
    cache: StudyCache | None = None,
    push: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[StudyOutcome]:
    """Retrieve, explain and push back each study of ``archive``; one progress line per study to ``log``.

    A study that fails is reported (``status="failed"``) and the next one goes on (a Study
    Instance UID that is not a valid UID fails before it becomes a folder name). The
    derived objects go to ``destination`` (default: ``archive`` itself, into the source study;
    with ``options.deidentify``, into the de-identified study, as :func:`explain_local_study` says);
    without ``push`` they are only written under ``work_dir``.
    """
    work = Path(work_dir)
    cache = cache or StudyCache(work / "cache")
    target = (destination or archive) if push else None
    key = configuration_hash(pacs_configuration(explainer, spec, options))
    outcomes = []
    for i, study_uid in enumerate(study_uids, start=1):
        try:
            outcome = _retrieve_and_explain(archive, study_uid, explainer, spec, work, options, cache, target, key)
        except Exception as err:  # noqa: BLE001 (a study's failure is reported; the run goes on)
            error = process_redactor().redact(" ".join(str(err).split()))
            outcome = StudyOutcome(study_uid=study_uid, status="failed", error=error)
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
    target: Archive, study_uid: str, series: dict[str, list[InstanceRef]], key: str, options: PacsOptions
) -> bool:
    """The target already holds every derived instance of every source series (so nothing needs retrieving)."""
    expected = []
    for series_uid, refs in series.items():
        uids = DerivedUIDs(key, study_uid, series_uid, [r.sop_uid for r in refs], {r.sop_uid: r.frames for r in refs})
        expected += [uid for group in uids.expected(options.formats).values() for uid in group]
    return len(_present(target, study_uid, expected, options.deidentify)) == len(expected)
