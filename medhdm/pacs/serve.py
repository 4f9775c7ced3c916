"""``medhdm pacs serve``: receive studies by C-STORE, explain each once it is stable, push the results back.

The service is three parts around one spool folder (:mod:`medhdm.pacs.spool`):

1. a Storage SCP (:class:`medhdm.pacs.scp.StorageSCP`, background threads) that writes each
   received instance durably under ``incoming/<StudyUID>/`` before it answers success;
2. a loop that claims a study once no new instance came for ``stable_seconds`` (moves it to
   ``studies/``), and explains it with :func:`medhdm.pacs.workflow.explain_local_study`, which
   exports the derived objects and pushes them to the configured destination;
3. a journal (``journal.jsonl``) that records each study's ``started``, ``done`` and
   ``failed`` events with the fingerprint of the instances it covered.

Failure handling: a study that fails is moved to ``quarantine/<StudyUID>/`` with
``reason.txt`` and the service goes on with the next one; a failed push (the destination is
down) is retried with a growing delay, and the study set aside only after ``max_attempts``.

Restarts: a study that was claimed but not finished (the service was killed while explaining
or pushing it) is redone at the next start; a finished one is not (the journal says so). A
redone push adds nothing twice to the archive, because the derived UIDs are a deterministic
function of the source and the run's configuration (:mod:`medhdm.pacs.uids`).

Stopping: SIGTERM or SIGINT closes the SCP, interrupts the study in progress (redone at the
next start) and returns.

Retention (``keep_seconds``, ``--keep``): by default every received instance is kept. With
``--keep done`` a study's received instances are deleted as soon as its results are pushed; with
a duration (``--keep 7d``), that long after. The journal records each deletion (``removed``) and
still holds every study's outcome, so the spool holds only the studies in progress, those that
failed (``quarantine/``) and those within their retention time.

Transfer syntaxes: the SCP accepts the compressed ones (JPEG, JPEG-LS, JPEG 2000, RLE, Deflated)
besides the uncompressed ones, and stores each instance in the syntax it came in
(:mod:`medhdm.pacs.scp`); the pixel data are decoded when the study is explained.

TLS (``tls``): the SCP accepts TLS connections only (``--tls-cert``/``--tls-key``; with ``--tls-ca``,
senders must present a certificate that CA signed).

Logs carry UIDs, AE titles and addresses, never patient names or IDs (:mod:`medhdm.io.redact`).

Run it (credentials of a DICOMweb destination as for ``medhdm pacs explain``: environment or file)::

    medhdm pacs serve --spool /var/lib/medhdm/spool --port 11112 --aet MEDHDM \\
        --calling-aet CT_SCANNER --calling-aet ORTHANC \\
        --destination https://pacs.example.org/dicom-web --push sc,pm,seg,sr \\
        --model default --method hdm --stable-seconds 30

    storescu -aet CT_SCANNER -aec MEDHDM 127.0.0.1 11112 study/*.dcm      # send a study
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..io.atomic import LockedFolder
from ..io.redact import Redactor
from ..io.redact import setup_logging as _setup_logging
from .scp import StorageSCP
from .spool import Spool, fingerprint
from .tls import TlsFiles

__all__ = ["ServeSettings", "Service", "ServiceStopped", "explain_and_push", "run_service", "setup_logging"]

logger = logging.getLogger("medhdm.pacs.serve")

#: (study UID, folder of its instances, empty work folder) -> the outcome (an object with ``status``,
#: ``derived``, ``pushed``, ``error`` like :class:`medhdm.pacs.workflow.StudyOutcome`); raises on failure
ProcessStudy = Callable[[str, Path, Path], Any]


class ServiceStopped(BaseException):  # noqa: N818 (a stop request, not an error)
    """Raised in the service loop by SIGTERM / SIGINT to interrupt the study in progress."""


@dataclass(frozen=True)
class ServeSettings:
    """What the service listens on and how it waits.

    Args:
        spool: the spool folder (created; locked while the service runs).
        aet: the service's AE title.
        calling_aets: the calling AE titles allowed to send.
        host: address to listen on (default loopback).
        port: DICOM port (0: a free one, logged).
        stable_seconds: a study is explained once no instance arrived for this long.
        poll_seconds: how often the spool is looked at.
        retry_seconds: first delay before a failed push is tried again (doubling each time).
        max_attempts: attempts at a study whose push fails before it is set aside.
        keep_seconds: how long a done study's received instances are kept (0: deleted once done;
            ``None``: kept; :func:`medhdm.pacs.spool.parse_keep` reads ``--keep``).
        tls: TLS files of the SCP (its certificate and key; the CA its senders' certificates are checked
            against), or ``None`` for plain TCP.
    """

    spool: Path
    aet: str = "MEDHDM"
    calling_aets: tuple[str, ...] = ()
    host: str = "127.0.0.1"
    port: int = 11112
    stable_seconds: float = 30.0
    poll_seconds: float = 0.5
    retry_seconds: float = 30.0
    max_attempts: int = 5
    keep_seconds: float | None = None
    tls: TlsFiles | None = None

    def __post_init__(self) -> None:
        if self.keep_seconds is not None and self.keep_seconds < 0:
            raise ValueError(f"keep: expected 0 or more seconds, got {self.keep_seconds}")
        if self.stable_seconds < 0:
            raise ValueError(f"stable_seconds: expected 0 or more, got {self.stable_seconds}")
        if self.poll_seconds <= 0:
            raise ValueError(f"poll_seconds: expected more than 0, got {self.poll_seconds}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts: expected at least 1, got {self.max_attempts}")
        if not 0 <= self.port <= 65535:  # checked before the model loads (the listener checks it again)
            raise ValueError(f"port: expected 0 to 65535, got {self.port}")


def _is_transient(error: BaseException) -> bool:
    """A failure worth trying again later: the destination refused or could not be reached (after its own retries)."""
    from .destinations import ArchiveError

    return isinstance(error, ArchiveError | ConnectionError | TimeoutError)


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


class Service:
    """The loop of ``medhdm pacs serve`` over a :class:`Spool` (the SCP runs beside it).

    Args:
        spool: the spool.
        process: explains and pushes one claimed study (:data:`ProcessStudy`).
        settings: timings (``stable_seconds``, ``poll_seconds``, ``retry_seconds``, ``max_attempts``).
        is_transient: which failures are retried instead of set aside (default: push / connection errors).
        redact: applied to a failure's reason before it is journaled or written to ``reason.txt``
            (:meth:`medhdm.io.redact.Redactor.redact`, so no patient name or ID lands there).
    """

    def __init__(
        self,
        spool: Spool,
        process: ProcessStudy,
        settings: ServeSettings,
        is_transient: Callable[[BaseException], bool] = _is_transient,
        redact: Callable[[str], str] = str,
    ) -> None:
        self.spool = spool
        self.process = process
        self.settings = settings
        self.is_transient = is_transient
        self.redact = redact
        self.stop_event = threading.Event()
        self.stop_signal: int | None = None  # the signal that asked for a stop (see on_signal)
        self.busy: str | None = None  # the study in progress
        self._retry_at: dict[str, float] = {}

    def recover(self) -> list[str]:
        """Log and return the studies a previous run claimed but did not finish (they are redone)."""
        pending = self.spool.pending_studies()
        for uid in pending:
            if "started" in self.spool.journal.since_finished(uid):
                logger.info("study %s: claimed by an earlier run but not finished; it is redone", uid)
        return pending

    def prune(self) -> int:
        """Delete the received instances of the done studies whose retention time is over; how many."""
        keep = self.settings.keep_seconds
        if keep is None:
            return 0
        removed = 0
        for uid in self.spool.expired(keep):
            n = self.spool.remove_done(uid)
            if n:
                logger.info("study %s: %d received instance(s) deleted (kept %g s after done)", uid, n, keep)
            removed += n
        return removed

    def step(self) -> bool:
        """Claim the stable studies, then work on one pending study; True if anything was done.

        Done studies past their retention time lose their received instances first (:meth:`prune`).
        """
        self.prune()
        did = False
        for uid in self.spool.stable_studies(self.settings.stable_seconds):
            n = self.spool.claim(uid)
            logger.info(
                "study %s: stable (no new instance for %.1f s); claimed, %d instance(s)",
                uid,
                self.settings.stable_seconds,
                n,
            )
            did = True
        now = time.monotonic()
        for uid in self.spool.pending_studies():
            if self._retry_at.get(uid, 0.0) <= now:
                self.handle(uid)
                return True
        return did

    def handle(self, uid: str) -> None:
        """Explain and push one claimed study; record the outcome; set it aside when it fails.

        A study that was started ``max_attempts`` times without ending (each time the service
        was killed while on it: out of memory, say) is set aside without another try.
        """
        names = self.spool.instance_names(uid)
        mark = fingerprint(names)
        history = self.spool.journal.since_finished(uid)
        crashes = history.count("started") - history.count("retry") - history.count("interrupted")
        if crashes >= self.settings.max_attempts:
            reason = f"the service stopped {crashes} times while explaining this study (killed, out of memory?)"
            self._set_aside(uid, mark, reason, history.count("started"))
            return
        attempt = history.count("started") + 1
        start = time.perf_counter()
        try:
            self.busy = uid  # from here on, SIGTERM / SIGINT interrupt the study (ServiceStopped)
            if self.stopping:  # a stop asked for while nothing was busy
                raise ServiceStopped(uid)
            self.spool.journal.append("started", uid, fingerprint=mark, instances=len(names), attempt=attempt)
            logger.info("study %s: explaining %d instance(s) (attempt %d)", uid, len(names), attempt)
            outcome = self.process(uid, self.spool.studies / uid, self.spool.work_dir(uid))
            self.busy = None
            status = str(getattr(outcome, "status", "done"))
            if status == "failed":
                raise RuntimeError(getattr(outcome, "error", None) or "the study failed")
        except ServiceStopped:
            self.busy = None
            self.spool.journal.append("interrupted", uid, fingerprint=mark, attempt=attempt)
            raise
        except Exception as err:  # noqa: BLE001 (one bad study must not stop the service)
            self.busy = None
            self._failed(uid, mark, err, attempt)
            return
        finally:
            self.busy = None
        seconds = time.perf_counter() - start
        derived, pushed = _count(getattr(outcome, "derived", None)), _count(getattr(outcome, "pushed", None))
        self.spool.journal.append(
            "done",
            uid,
            fingerprint=mark,
            instances=len(names),
            status=status,
            derived=derived,
            pushed=pushed,
            seconds=round(seconds, 2),
        )
        self.spool.clear_work(uid)
        self._retry_at.pop(uid, None)
        logger.info("study %s: %s in %.1f s; %d derived instance(s), %d pushed", uid, status, seconds, derived, pushed)
        self.prune()

    def _failed(self, uid: str, mark: str, error: BaseException, attempt: int) -> None:
        reason = self.redact(_one_line(error))
        if self.is_transient(error) and attempt < self.settings.max_attempts:
            delay = self.settings.retry_seconds * 2 ** (attempt - 1)
            self._retry_at[uid] = time.monotonic() + delay
            self.spool.journal.append("retry", uid, fingerprint=mark, attempt=attempt, reason=reason)
            logger.warning("study %s: attempt %d failed (%s); trying again in %.0f s", uid, attempt, reason, delay)
            return
        self._set_aside(uid, mark, reason, attempt)

    def _set_aside(self, uid: str, mark: str, reason: str, attempt: int) -> None:
        where = self.spool.set_aside(uid, reason)
        self.spool.journal.append("failed", uid, fingerprint=mark, attempt=attempt, reason=reason)
        self._retry_at.pop(uid, None)
        logger.error("study %s: failed (%s); set aside in %s", uid, reason, where)

    def run(self) -> None:
        """Loop until :meth:`stop` or :meth:`on_signal` (see :func:`run_service`)."""
        self.recover()
        while not self.stopping:
            if not self.step():
                self.stop_event.wait(self.settings.poll_seconds)  # a signal's stop is seen within this wait

    def stop(self) -> None:
        """Ask the loop to end after the current step (from another thread; a signal calls :meth:`on_signal`)."""
        self.stop_event.set()

    @property
    def stopping(self) -> bool:
        """Whether a stop was asked for, by :meth:`stop` or by a signal."""
        return self.stop_signal is not None or self.stop_event.is_set()

    def on_signal(self, signum: int, frame: object = None) -> None:
        """The SIGTERM / SIGINT handler: note the stop; interrupt the study in progress (:class:`ServiceStopped`).

        It takes no lock and does not log. Python runs a handler between two bytecodes of the main
        thread, which may be inside ``stop_event.wait()`` holding the event's lock: ``Event.set()``
        there never returns (a stop signal then hung the service). The loop sees ``stop_signal`` after
        the current step or within ``poll_seconds`` of an idle wait.
        """
        self.stop_signal = signum
        if self.busy is not None:
            raise ServiceStopped(self.busy)


def _count(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    try:
        return len(value)  # type: ignore[arg-type]
    except TypeError:
        return 0


def setup_logging(level: int = logging.INFO, log_file: str | Path | None = None) -> Redactor:
    """The service's logging: :func:`medhdm.io.redact.setup_logging` at ``level`` (and into ``log_file``),
    each line with its time; returns the process's redactor for the SCP to feed."""
    return _setup_logging(level, log_file, timestamps=True)


def run_service(settings: ServeSettings, process: ProcessStudy, redactor: Redactor | None = None) -> None:
    """Run the service until SIGTERM / SIGINT: lock the spool, start the SCP, loop.

    Must be called from the main thread (it installs the signal handlers, restored on return).
    """
    spool = Spool(settings.spool)
    with LockedFolder(spool.root, what="spool"):
        removed = spool.remove_stale_temporaries()
        if removed:
            logger.info("removed %d partial file(s) left by an earlier run", removed)
        service = Service(spool, process, settings, redact=redactor.redact if redactor is not None else str)

        previous = {s: signal.signal(s, service.on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            with StorageSCP(
                spool,
                aet=settings.aet,
                calling_aets=settings.calling_aets,
                host=settings.host,
                port=settings.port,
                redactor=redactor,
                ssl_context=settings.tls.server_context() if settings.tls is not None else None,
            ):
                try:
                    service.run()
                except ServiceStopped as stopped:
                    _log_stop(service)
                    logger.info("study %s: interrupted; it is redone at the next start", stopped.args[0])
                else:
                    _log_stop(service)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    logger.info("stopped")


def _log_stop(service: Service) -> None:
    if service.stop_signal is not None:
        logger.info("stopping (%s)", signal.Signals(service.stop_signal).name)


def explain_and_push(explainer, spec, options, destination) -> ProcessStudy:
    """The service's :data:`ProcessStudy`: :func:`medhdm.pacs.workflow.explain_local_study` into the work folder,
    pushing to ``destination``; ``options``: the model's name, formats, slices, class and de-identification
    (:class:`medhdm.pacs.workflow.PacsOptions`)."""
    from .workflow import explain_local_study

    def process(uid: str, study_dir: Path, work_dir: Path):
        return explain_local_study(study_dir, explainer, spec, work_dir, options, destination=destination)

    return process
