"""The receiving service's spool: instances by study, claimed studies, quarantine, and a journal.

Layout under the spool folder (every name below the folders is a UID, so paths carry no patient data)::

    incoming/<StudyUID>/<SOPInstanceUID>.dcm   instances as received (the Storage SCP writes here)
    studies/<StudyUID>/<SOPInstanceUID>.dcm    claimed studies: every instance received for the study so far
    work/<StudyUID>/                           the derived objects of the attempt in progress
    quarantine/<StudyUID>[.N]/                 studies that failed, with reason.txt
    journal.jsonl                              one JSON line per event: started, done, failed, removed, ...

Durability: :meth:`Spool.store` writes a temporary file, fsyncs it, renames it into place and
fsyncs the folder before it returns, so an instance the SCP acknowledges survives a crash or a
power cut. Claiming moves files by rename (each file is in ``incoming`` or in ``studies``, never
nowhere), and journal lines are fsynced.

State: a study in ``studies/`` is *pending* until the journal holds a ``done`` (or ``failed``)
line for exactly its current set of instances (:func:`fingerprint`). A study claimed but not
finished when the service died is therefore redone at the next start, a finished one is not,
and instances that arrive for a finished study make it pending again (explained with all its
instances).

Retention (:meth:`Spool.remove_done`, :meth:`Spool.expired`): the received instances of a study
that is done may be deleted, at once or some time after; the journal keeps the record (a
``removed`` line with the fingerprint and the number of instances). Quarantined studies are kept.
Instances that arrive for a study after its instances were removed make it pending again, and
it is explained with those instances only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from ..io.atomic import TMP_PREFIX, atomic_write, fsync, remove_stale_temporaries
from .uids import check_uid

__all__ = ["Journal", "Spool", "check_uid", "fingerprint", "parse_keep"]

SUFFIX = ".dcm"


def fingerprint(names: Iterable[str]) -> str:
    """A short hash of a set of instance names (SOP Instance UIDs): equal sets give equal fingerprints."""
    digest = hashlib.sha256("\n".join(sorted(set(names))).encode()).hexdigest()
    return digest[:16]


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_keep(text: str) -> float | None:
    """How long received instances are kept once their study is done, in seconds.

    ``"done"``: 0 (deleted once the results are pushed); ``"7d"``, ``"12h"``, ``"30m"``, ``"90s"``;
    ``"forever"``: ``None`` (never deleted).

    Raises:
        ValueError: naming ``keep`` and the text.
    """
    value = str(text).strip().lower()
    if value == "done":
        return 0.0
    if value == "forever":
        return None
    number, unit = value[:-1], value[-1:]
    try:
        amount = float(number)
    except ValueError:
        amount = -1.0
    if unit not in _UNITS or not amount >= 0 or amount == float("inf"):
        raise ValueError(f"keep: expected done, forever or a duration like 7d, 12h, 30m, 90s; got {text!r}")
    return amount * _UNITS[unit]


def _epoch(record: dict) -> float:
    """The wall-clock time of a journal record (its ``time``), 0 when unreadable."""
    try:
        return datetime.strptime(str(record.get("time", "")), "%Y-%m-%dT%H:%M:%S%z").timestamp()
    except ValueError:
        return 0.0


def _mkdir_durable(path: Path) -> None:
    """Create ``path`` (one level) if missing, and make its entry in the parent durable."""
    if not path.is_dir():
        path.mkdir(exist_ok=True)
        fsync(path.parent)


def _instances(folder: Path) -> list[Path]:
    """The published instances in ``folder`` (not temporaries)."""
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.suffix == SUFFIX and not p.name.startswith(TMP_PREFIX)]


class Journal:
    """An append-only JSON-lines journal, each line fsynced; a torn last line (a killed writer) is ignored.

    Args:
        path: the journal file (created on the first append).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._finished: dict[str, str] | None = None  # read once, then kept up to date by append
        self._since: dict[str, list[str]] = {}  # study -> its events since it last finished (same)
        self._done_at: dict[str, float] = {}  # study -> when it was last done (when its last finish was done)

    def append(self, event: str, study: str, **fields: object) -> dict:
        """Append ``{"time", "event", "study", **fields}`` and return it."""
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": event, "study": study, **fields}
        line = (json.dumps(record, sort_keys=False) + "\n").encode()
        with self._lock:
            created = not self.path.exists()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                # a line torn by a kill is completed by the newline here, so it stays one bad line
                if os.fstat(fd).st_size and not self._ends_with_newline():
                    os.write(fd, b"\n")
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
            if created:
                fsync(self.path.parent)
            if self._finished is not None:
                self._note(record)
        return record

    def _note(self, record: dict) -> None:
        """Keep the caches of :meth:`finished` and :meth:`since_finished` current."""
        if record["event"] in ("done", "failed"):
            self._finished[record["study"]] = str(record.get("fingerprint", ""))
            self._since.pop(record["study"], None)
            if record["event"] == "done":
                self._done_at[record["study"]] = _epoch(record)
            else:
                self._done_at.pop(record["study"], None)
        elif record["event"] == "removed":
            self._done_at.pop(record["study"], None)
        else:
            self._since.setdefault(record["study"], []).append(record["event"])

    def _load(self) -> None:
        if self._finished is None:
            self._finished, self._since, self._done_at = {}, {}, {}
            for record in self.records():
                self._note(record)

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"

    def records(self) -> list[dict]:
        """Every complete record, oldest first."""
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and "event" in record and "study" in record:
                out.append(record)
        return out

    def finished(self) -> dict[str, str]:
        """Study UID -> the fingerprint of its instances when it last finished (``done`` or ``failed``).

        The journal is read once; later :meth:`append` calls keep the answer current (the spool's lock
        guarantees that no other process writes the journal)."""
        with self._lock:
            self._load()
            return dict(self._finished)

    def done_at(self) -> dict[str, float]:
        """Study UID -> when (epoch seconds) it was done, for the studies whose last finish was ``done`` and
        whose instances were not removed since."""
        with self._lock:
            self._load()
            return dict(self._done_at)

    def since_finished(self, study: str) -> list[str]:
        """The study's events (``started``, ``retry``, ``interrupted``) since it last finished, oldest first."""
        with self._lock:
            self._load()
            return list(self._since.get(study, []))


class Spool:
    """The spool folder of :mod:`medhdm.pacs.serve` (layout in the module docstring).

    The Storage SCP calls :meth:`store` from its threads while the service calls :meth:`claim`;
    one lock keeps a claim from moving a study's folder while an instance is written into it.

    Args:
        root: the spool folder (created).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.incoming = self.root / "incoming"
        self.studies = self.root / "studies"
        self.work = self.root / "work"
        self.quarantine = self.root / "quarantine"
        self.journal = Journal(self.root / "journal.jsonl")
        self._lock = threading.Lock()
        self._last_arrival: dict[str, float] = {}
        self._fingerprints: dict[str, tuple[int, str]] = {}  # study -> (folder mtime, fingerprint of its instances)
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in (self.incoming, self.studies, self.work, self.quarantine):
            _mkdir_durable(folder)

    def remove_stale_temporaries(self) -> int:
        """Remove the temporaries a killed process left in the study folders; call before the SCP starts."""
        removed = 0
        for parent in (self.incoming, self.studies):
            for folder in parent.iterdir():
                if folder.is_dir():
                    removed += len(remove_stale_temporaries(folder))
        return removed

    # --- receiving -------------------------------------------------------------------------------

    def store(self, study_uid: str, sop_uid: str, data: bytes) -> Path:
        """Write one received instance (DICOM file bytes) durably; return its path.

        When this returns, the file and its name are on disk (fsync of the file and its folder),
        so the sender may be told that the instance is stored. A second copy of the same instance
        replaces the first.

        Raises:
            ValueError: a UID is not a valid DICOM UID.
            OSError: the disk refused (full, read-only): nothing is published.
        """
        study_uid = check_uid(study_uid, "Study Instance UID")
        sop_uid = check_uid(sop_uid, "SOP Instance UID")
        with self._lock:
            folder = self.incoming / study_uid
            _mkdir_durable(folder)
            path = folder / f"{sop_uid}{SUFFIX}"
            atomic_write(path, data)
            fsync(folder)
            self._last_arrival[study_uid] = time.monotonic()
        return path

    def stable_studies(self, stable_seconds: float) -> list[str]:
        """Study UIDs in ``incoming`` without a new instance for ``stable_seconds`` (oldest first).

        The time of the last instance is this process's clock for instances it received, and the
        files' modification time for those found at start (received before a restart).
        """
        now_wall, now = time.time(), time.monotonic()
        ready = []
        for folder in self.incoming.iterdir():
            files = _instances(folder)
            if not files:
                continue
            if folder.name in self._last_arrival:
                age = now - self._last_arrival[folder.name]
            else:
                age = now_wall - max(p.stat().st_mtime for p in files)
            if age >= stable_seconds:
                ready.append((age, folder.name))
        return [uid for _, uid in sorted(ready, reverse=True)]

    # --- claiming and finishing -------------------------------------------------------------------

    def claim(self, study_uid: str) -> int:
        """Move the study's received instances from ``incoming`` into ``studies`` (merging with what
        an earlier claim moved there); return how many instances the study now has."""
        source, target = self.incoming / study_uid, self.studies / study_uid
        with self._lock:
            _mkdir_durable(target)
            for path in _instances(source):
                os.replace(path, target / path.name)
            fsync(target)
            # (no temporaries here: store() writes under the same lock; a killed run's were removed at start)
            if source.is_dir() and not any(source.iterdir()):
                source.rmdir()
                fsync(self.incoming)
            self._last_arrival.pop(study_uid, None)
        return len(_instances(target))

    def instance_names(self, study_uid: str) -> list[str]:
        """The SOP Instance UIDs of a claimed study."""
        return sorted(p.stem for p in _instances(self.studies / study_uid))

    def pending_studies(self) -> list[str]:
        """Claimed studies whose current instances have not finished (oldest claim first)."""
        finished = self.journal.finished()
        pending = []
        for folder in self.studies.iterdir():
            changed = folder.stat().st_mtime_ns  # a claim that adds instances renames files into the folder
            known = self._fingerprints.get(folder.name)
            if known is None or known[0] != changed:
                names = [p.stem for p in _instances(folder)]
                known = (changed, fingerprint(names) if names else "")
                self._fingerprints[folder.name] = known
            if known[1] and finished.get(folder.name) != known[1]:
                pending.append((changed, folder.name))
        return [uid for _, uid in sorted(pending)]

    def work_dir(self, study_uid: str) -> Path:
        """An empty work folder for an attempt at the study (what an earlier attempt left is removed)."""
        path = self.work / study_uid
        if path.exists():
            shutil.rmtree(path)
        path.mkdir()
        return path

    def clear_work(self, study_uid: str) -> None:
        """Remove the study's work folder."""
        shutil.rmtree(self.work / study_uid, ignore_errors=True)

    def remove_done(self, study_uid: str) -> int:
        """Delete the received instances of a study that is done (its current instances; the journal says so)
        and journal ``removed``; return how many were deleted (0: the study is not done, or pending again)."""
        folder = self.studies / study_uid
        with self._lock:
            names = [p.stem for p in _instances(folder)]
            mark = fingerprint(names)
            if not names or self.journal.finished().get(study_uid) != mark or study_uid not in self.journal.done_at():
                return 0
            shutil.rmtree(folder)
            fsync(self.studies)
            self._fingerprints.pop(study_uid, None)
        self.journal.append("removed", study_uid, fingerprint=mark, instances=len(names))
        return len(names)

    def expired(self, keep_seconds: float, now: float | None = None) -> list[str]:
        """The done studies whose received instances are older than ``keep_seconds`` past their ``done``."""
        now = time.time() if now is None else now
        return [uid for uid, when in self.journal.done_at().items() if now - when >= keep_seconds]

    def set_aside(self, study_uid: str, reason: str) -> Path:
        """Move a claimed study into ``quarantine`` with ``reason.txt`` (and its work folder as ``work/``)."""
        source = self.studies / study_uid
        atomic_write(source / "reason.txt", (reason.rstrip() + "\n").encode())
        if (self.work / study_uid).is_dir():
            os.replace(self.work / study_uid, source / "work")
        target = self.quarantine / study_uid
        n = 1
        while target.exists():
            n += 1
            target = self.quarantine / f"{study_uid}.{n}"
        os.replace(source, target)
        fsync(self.quarantine)
        fsync(self.studies)
        return target
