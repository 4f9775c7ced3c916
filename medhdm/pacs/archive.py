"""What every archive connection does (DICOMweb, DIMSE): search, list, retrieve, store, and push with retries.

An :class:`Archive` is both where studies come from and where derived objects go
(a :data:`Destination` is an archive used for pushing). Subclasses implement one
attempt of each operation; this module owns the retries with exponential backoff
(on transient failures only: no connection, time-outs, HTTP 5xx/408/429) and the
per-instance bookkeeping of a push (:class:`PushReport`, :class:`PushError`).
Messages carry the server and UIDs only: never credentials, patient names or IDs.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import pydicom

__all__ = [
    "Archive",
    "ArchiveError",
    "InstanceRef",
    "PushError",
    "PushReport",
    "RetryPolicy",
    "TransientError",
    "is_derived_by_medhdm",
]

T = TypeVar("T")

#: SOP classes that are never a source image to explain (SC, PM, SEG, SR, PR, KO, RT structures, encapsulated docs)
NON_SOURCE_SOP_CLASS_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture (single- and multi-frame)
    "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    "1.2.840.10008.5.1.4.1.1.66",  # SEG, registrations, surfaces
    "1.2.840.10008.5.1.4.1.1.88",  # SR, Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11",  # Presentation States
    "1.2.840.10008.5.1.4.1.1.481",  # RT objects
    "1.2.840.10008.5.1.4.1.1.104",  # encapsulated documents
)


class ArchiveError(RuntimeError):
    """An archive could not be used (unreachable after the retries, credentials refused, bad answer)."""


class TransientError(ArchiveError):
    """A failure worth retrying: no connection, a time-out, HTTP 408/429/5xx, a DIMSE association refused."""


@dataclass(frozen=True)
class InstanceRef:
    """One instance an archive holds (from QIDO-RS or C-FIND at the instance level)."""

    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str = ""
    modality: str = ""
    manufacturer: str = ""
    series_description: str = ""
    frames: int = 1

    @property
    def is_source(self) -> bool:
        """An image one may explain: not a derived or non-image object, and not medhdm's own."""
        return not is_derived_by_medhdm(self.manufacturer, self.sop_class_uid)


def is_derived_by_medhdm(manufacturer: str, sop_class_uid: str) -> bool:
    """True for objects that are not source images: medhdm's own, or SC/PM/SEG/SR/PR/KO/RT/documents."""
    if str(manufacturer).strip().lower() == "medhdm":
        return True
    return any(str(sop_class_uid).startswith(p) for p in NON_SOURCE_SOP_CLASS_PREFIXES)


@dataclass(frozen=True)
class RetryPolicy:
    """``attempts`` tries of a transient operation, waiting ``delay * 2**k`` seconds (at most ``max_delay``)."""

    attempts: int = 4
    delay: float = 1.0
    max_delay: float = 30.0

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"retries: expected at least 1 attempt, got {self.attempts}")
        if self.delay < 0:
            raise ValueError(f"retry delay: expected 0 or more seconds, got {self.delay}")

    def wait(self, k: int) -> float:
        return min(self.delay * 2**k, self.max_delay)

    def run(self, what: str, call: Callable[[], T], log: Callable[[str], None] | None = None) -> T:
        """``call()``, retried on :class:`TransientError`; the last error re-raised as :class:`ArchiveError`."""
        for k in range(self.attempts):
            try:
                return call()
            except TransientError as err:
                if k + 1 == self.attempts:
                    raise ArchiveError(f"{what}: failed after {self.attempts} attempts: {err}") from None
                if log:
                    log(f"{what}: {err}; retry {k + 1}/{self.attempts - 1} in {self.wait(k):g} s")
                time.sleep(self.wait(k))
        raise AssertionError("unreachable")


@dataclass
class PushReport:
    """What a push did, per SOP Instance UID: sent now, already in the archive, or failed (with the reason)."""

    server: str
    sent: list[str] = field(default_factory=list)
    already_present: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        text = f"{len(self.sent)} sent, {len(self.already_present)} already present"
        return text + (f", {len(self.failed)} failed" if self.failed else "")


class PushError(ArchiveError):
    """Instances stayed unsent after the retries; ``report`` holds them (``report.failed``: UID -> reason)."""

    def __init__(self, report: PushReport) -> None:
        self.report = report
        unsent = "; ".join(f"{uid} ({why})" for uid, why in report.failed.items())
        super().__init__(
            f"{report.server}: {len(report.failed)} instance(s) stayed unsent after the retries: {unsent} "
            f"({report.summary()})"
        )


def read_headers(paths: Sequence[Path]) -> list[tuple[Path, pydicom.Dataset]]:
    """``(path, header)`` of each DICOM file (pixel data not read)."""
    out = []
    for path in paths:
        try:
            out.append((Path(path), pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as err:  # noqa: BLE001 (any unreadable file is bad input, named)
            raise ValueError(f"{path}: not a readable DICOM file ({err})") from None
    return out


class Archive(ABC):
    """A DICOM archive: :meth:`describe`, search, list, retrieve, and :meth:`push` (with retries)."""

    retry: RetryPolicy
    log: Callable[[str], None] | None

    @abstractmethod
    def describe(self) -> str:
        """The server, without secrets (``"DICOMweb http://host/dicom-web"``, ``"DIMSE ORTHANC@host:4242"``)."""

    @abstractmethod
    def _search_studies(self, query: dict[str, str]) -> list[str]:
        """One attempt: the Study Instance UIDs matching ``query`` (DICOM keywords -> values)."""

    @abstractmethod
    def _instances(self, study_uid: str) -> list[InstanceRef]:
        """One attempt: every instance of the study."""

    @abstractmethod
    def _retrieve(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """One attempt: write the series' instances into ``folder`` (``<SOP Instance UID>.dcm``)."""

    @abstractmethod
    def _store(self, study_uid: str, items: list[tuple[Path, pydicom.Dataset]]) -> dict[str, str]:
        """One attempt to store the files; returns the failed ones ``{SOP Instance UID: reason}``."""

    # ---- retried operations ------------------------------------------------------------------------------------
    def search_studies(self, query: dict[str, str]) -> list[str]:
        """The Study Instance UIDs matching ``query`` (e.g. ``{"Modality": "CT", "StudyDate": "20240101-"}``)."""
        return self.retry.run(f"{self.describe()}: search", lambda: self._search_studies(query), self.log)

    def instances(self, study_uid: str) -> list[InstanceRef]:
        """Every instance of the study (empty if the archive does not hold it)."""
        return self.retry.run(
            f"{self.describe()}: list study {study_uid}", lambda: self._instances(study_uid), self.log
        )

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """The series' instances written into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        return self.retry.run(
            f"{self.describe()}: retrieve series {series_uid}",
            lambda: self._retrieve(study_uid, series_uid, folder),
            self.log,
        )

    def present(self, study_uid: str, sop_uids: Sequence[str]) -> set[str]:
        """Which of ``sop_uids`` the archive already holds in the study."""
        held = {ref.sop_uid for ref in self.instances(study_uid)}
        return held & set(sop_uids)

    def push(self, paths: Sequence[Path]) -> PushReport:
        """Store the files into the archive; those it already holds are not sent again.

        Instances the archive refuses (or that a transient failure kept from it) are
        retried per :attr:`retry`; raises :class:`PushError` naming every instance
        that stays unsent, :class:`ArchiveError` when the archive refuses the
        credentials or cannot be reached.
        """
        report = PushReport(self.describe())
        by_study: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
        for path, ds in read_headers(paths):
            by_study.setdefault(str(ds.StudyInstanceUID), []).append((path, ds))
        for study_uid, items in by_study.items():
            held = self.present(study_uid, [str(ds.SOPInstanceUID) for _, ds in items])
            report.already_present += [str(ds.SOPInstanceUID) for _, ds in items if str(ds.SOPInstanceUID) in held]
            todo = [(p, ds) for p, ds in items if str(ds.SOPInstanceUID) not in held]
            for k in range(self.retry.attempts):
                if not todo:
                    break
                try:
                    failed = self._store(study_uid, todo)
                except TransientError as err:
                    failed = {str(ds.SOPInstanceUID): str(err) for _, ds in todo}
                report.sent += [str(ds.SOPInstanceUID) for _, ds in todo if str(ds.SOPInstanceUID) not in failed]
                todo = [(p, ds) for p, ds in todo if str(ds.SOPInstanceUID) in failed]
                report.failed = {**{u: r for u, r in report.failed.items() if u not in report.sent}, **failed}
                if todo and k + 1 < self.retry.attempts:
                    if self.log:
                        names = ", ".join(f"{uid} ({why})" for uid, why in failed.items())
                        self.log(
                            f"{self.describe()}: {len(todo)} instance(s) not stored: {names}; "
                            f"retry {k + 1}/{self.retry.attempts - 1} in {self.retry.wait(k):g} s"
                        )
                    time.sleep(self.retry.wait(k))
            report.failed = {u: r for u, r in report.failed.items() if u not in report.sent}
        if report.failed:
            raise PushError(report)
        return report
