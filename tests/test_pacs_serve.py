"""``medhdm pacs serve``: the Storage SCP, the spool and the service, with real components.

In-process (fast): the SCP (pynetdicom) rejects calling AE titles that are not configured and
called AE titles other than its own, refuses instances it cannot file (no or bad Study Instance
UID) and goes on; the spool and journal decide what is pending; the log filter keeps patient
names and IDs out.

As a subprocess against a real Orthanc (slower, skipped without Orthanc unless
``MEDHDM_REQUIRE_VALIDATORS=1``): a LesionBench study sent with C-STORE comes back as derived
series in the same study in Orthanc; a corrupt study is set aside and the next good one is
still explained; the service killed (SIGKILL) in the middle of a study and restarted loses
and duplicates nothing. Against a pynetdicom archive: names planted in every PN attribute reach
neither the log file nor stderr / stdout.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pydicom
import pytest
from pacs_helpers import CLIENT_AET, LoopbackArchive, leaked, plant_names, require_orthanc
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

from medhdm.io.redact import REDACTED, Redactor
from medhdm.pacs.orthanc import LocalOrthanc
from medhdm.pacs.scp import STATUS_CANNOT_UNDERSTAND, StorageSCP
from medhdm.pacs.spool import Spool, fingerprint

ROOT = Path(__file__).resolve().parents[1]


def _send(port: int, datasets, calling: str = "SCANNER", called: str = "MEDHDM"):
    """C-STORE ``datasets`` (Datasets or paths) to 127.0.0.1:port; the association and the statuses."""
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    statuses = []
    if assoc.is_established:
        statuses = [assoc.send_c_store(ds).Status for ds in datasets]
        assoc.release()
    return assoc, statuses


# --- in process: SCP and spool -------------------------------------------------------------------


@pytest.fixture
def ct() -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


@pytest.fixture
def scp(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="medhdm")
    redactor = Redactor()
    spool = Spool(tmp_path / "spool")
    with StorageSCP(spool, aet="MEDHDM", calling_aets=["SCANNER", "CT2"], port=0, redactor=redactor) as server:
        yield server


def test_scp_stores_an_instance_by_study_and_rejects_other_calling_aets(scp, ct, caplog):
    assoc, statuses = _send(scp.port, [ct])
    assert statuses == [0x0000] and assoc.is_released
    stored = scp.spool.incoming / ct.StudyInstanceUID / f"{ct.SOPInstanceUID}.dcm"
    assert pydicom.dcmread(stored).SOPInstanceUID == ct.SOPInstanceUID
    assert not [p for p in stored.parent.iterdir() if p != stored]  # no temporaries left

    rejected, _ = _send(scp.port, [ct], calling="INTRUDER")
    assert rejected.is_rejected and not rejected.is_established
    assert any("INTRUDER" in r.getMessage() and "rejected" in r.getMessage() for r in caplog.records)
    assert [p.name for p in scp.spool.incoming.iterdir()] == [ct.StudyInstanceUID]  # nothing more stored


def test_scp_answers_only_to_its_own_called_ae_title(scp, ct, caplog):
    caplog.set_level(logging.INFO, logger="pynetdicom")
    rejected, _ = _send(scp.port, [ct], called="WRONG")
    assert rejected.is_rejected and not rejected.is_established
    answer = rejected.acceptor.primitive  # the A-ASSOCIATE-RJ
    assert (answer.result_str, answer.source_str) == ("Rejected Permanent", "Service User")
    assert answer.reason_str == "Called AE title not recognised"
    assert any("WRONG" in r.getMessage() and "called AE title not recognised" in r.getMessage() for r in caplog.records)
    assert not scp.spool.incoming.exists() or not any(scp.spool.incoming.iterdir())  # nothing stored

    accepted, statuses = _send(scp.port, [ct], called="MEDHDM")
    assert statuses == [0x0000] and accepted.is_released


def test_scp_refuses_an_instance_it_cannot_file_and_goes_on(scp, ct):
    no_study = copy.deepcopy(ct)
    del no_study.StudyInstanceUID
    escaping = copy.deepcopy(ct)
    escaping.StudyInstanceUID = "../../outside"
    assoc, statuses = _send(scp.port, [no_study, escaping, ct])
    assert statuses == [STATUS_CANNOT_UNDERSTAND, STATUS_CANNOT_UNDERSTAND, 0x0000]
    assert [p.name for p in scp.spool.incoming.iterdir()] == [ct.StudyInstanceUID]
    assert not (scp.spool.root.parent / "outside").exists()


def test_scp_keeps_patient_names_and_ids_out_of_the_log(scp, ct, caplog):
    ct.PatientName = "Doe^Jane"
    _send(scp.port, [ct])
    handler_filter = scp.redactor
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed for %s (%s) in study %s", None, None)
    record.args = (str(ct.PatientName), ct.PatientID, ct.StudyInstanceUID)
    handler_filter.filter(record)
    text = record.getMessage()
    assert str(ct.PatientName) not in text and ct.PatientID not in text and REDACTED in text
    assert ct.StudyInstanceUID in text  # UIDs stay readable
    for r in caplog.records:
        assert str(ct.PatientName) not in r.getMessage() and ct.PatientID not in r.getMessage()


def test_redactor_leaves_uids_whole():
    redactor = Redactor()
    redactor.add("4242", "Doe^Jane")
    assert redactor.redact("study 1.2.4242.5 of 4242 (Doe Jane, Doe^Jane)") == (
        f"study 1.2.4242.5 of {REDACTED} ({REDACTED}, {REDACTED})"
    )


def test_spool_pending_follows_the_journal(tmp_path, ct):
    spool = Spool(tmp_path / "spool")
    study = ct.StudyInstanceUID
    spool.store(study, "1.2.3.1", b"a")
    assert spool.stable_studies(60.0) == [] and spool.stable_studies(0.0) == [study]
    assert spool.claim(study) == 1 and not (spool.incoming / study).exists()
    assert spool.pending_studies() == [study]
    spool.journal.append("done", study, fingerprint=fingerprint(spool.instance_names(study)))
    assert spool.pending_studies() == []
    with open(spool.journal.path, "ab") as f:  # a line torn by a kill
        f.write(b'{"event": "done", "stu')
    spool.store(study, "1.2.3.2", b"b")  # more of a finished study: pending again, with all instances
    assert spool.claim(study) == 2 and spool.pending_studies() == [study]
    spool.journal.append("failed", study, fingerprint=fingerprint(spool.instance_names(study)))
    assert spool.pending_studies() == [] and len(spool.journal.records()) == 2
    where = spool.set_aside(study, "ValueError: broken")
    assert (where / "reason.txt").read_text() == "ValueError: broken\n" and not (spool.studies / study).exists()


def test_service_retries_a_failed_push_and_sets_aside_a_bad_study(tmp_path, caplog):
    """The loop's decisions, with a study function that fails like a destination that is down, then recovers."""
    from medhdm.pacs.archive import ArchiveError
    from medhdm.pacs.serve import ServeSettings, Service

    caplog.set_level(logging.INFO, logger="medhdm")
    spool = Spool(tmp_path / "spool")
    spool.store("1.2.3", "1.2.3.1", b"a")
    spool.store("1.2.4", "1.2.4.1", b"b")
    calls: list[str] = []

    def process(uid: str, study_dir: Path, work_dir: Path):
        calls.append(uid)
        assert (study_dir / f"{uid}.1.dcm").is_file() and work_dir.is_dir() and not any(work_dir.iterdir())
        if uid == "1.2.4":
            raise ValueError("no image series in the study of Doe^Jane")
        if calls.count(uid) == 1:
            raise ArchiveError("DICOMweb http://127.0.0.1:9/dicom-web: connection refused")
        return None

    settings = ServeSettings(spool=spool.root, calling_aets=("SCANNER",), stable_seconds=0.0, retry_seconds=0.2)
    redactor = Redactor()
    redactor.add("Doe^Jane")
    service = Service(spool, process, settings, redact=redactor.redact)
    deadline = time.monotonic() + 10
    while spool.pending_studies() or spool.stable_studies(0.0):
        service.step() or time.sleep(0.05)
        assert time.monotonic() < deadline, calls
    assert calls == ["1.2.3", "1.2.4", "1.2.3"]
    reason = f"ValueError: no image series in the study of {REDACTED}"
    assert (spool.quarantine / "1.2.4" / "reason.txt").read_text() == reason + "\n"
    assert "Doe" not in spool.journal.path.read_text()
    assert [(r["event"], r["study"]) for r in spool.journal.records()] == [
        ("started", "1.2.3"),
        ("retry", "1.2.3"),
        ("started", "1.2.4"),
        ("failed", "1.2.4"),
        ("started", "1.2.3"),
        ("done", "1.2.3"),
    ]
    assert Service(spool, process, settings).recover() == []  # nothing is redone after a restart

    # a study that the service died on max_attempts times (killed, out of memory) is set aside untried
    spool.store("1.2.5", "1.2.5.1", b"c")
    spool.claim("1.2.5")
    for _ in range(settings.max_attempts):
        spool.journal.append("started", "1.2.5")
    Service(spool, process, settings).step()
    assert "1.2.5" not in calls and "stopped 5 times" in (spool.quarantine / "1.2.5" / "reason.txt").read_text()


def test_service_interrupted_mid_study_leaves_it_to_redo(tmp_path):
    """SIGTERM in the middle of a study (its handler raises ServiceStopped there): journaled, still pending."""
    from medhdm.pacs.serve import ServeSettings, Service, ServiceStopped

    spool = Spool(tmp_path / "spool")
    spool.store("1.2.3", "1.2.3.1", b"a")
    settings = ServeSettings(spool=spool.root, calling_aets=("SCANNER",), stable_seconds=0.0)

    def process(uid: str, study_dir: Path, work_dir: Path):
        (work_dir / "half-written.dcm").write_bytes(b"x")
        raise ServiceStopped(uid)

    service = Service(spool, process, settings)
    with pytest.raises(ServiceStopped):
        service.step()
    assert service.busy is None and spool.pending_studies() == ["1.2.3"]
    assert spool.journal.since_finished("1.2.3") == ["started", "interrupted"]
    calls = []
    Service(spool, lambda uid, study, work: calls.append(sorted(work.iterdir())), settings).step()
    assert calls == [[]] and spool.pending_studies() == []  # redone from an empty work folder


def test_a_stop_signal_in_the_idle_wait_takes_no_lock_and_ends_the_loop(tmp_path):
    """The handler runs between two bytecodes of the main thread, which may be inside
    ``stop_event.wait()`` holding the event's lock; a handler calling ``Event.set()`` then never
    returned (a SIGTERM hung ``medhdm pacs serve`` in CI). Here a thread holds that lock while it runs
    the handler, as the main thread would."""
    from medhdm.pacs.serve import ServeSettings, Service, ServiceStopped

    spool = Spool(tmp_path / "spool")
    settings = ServeSettings(spool=spool.root, calling_aets=("SCANNER",), stable_seconds=0.0, poll_seconds=0.05)
    service = Service(spool, lambda uid, study, work: None, settings)

    def handler_inside_the_wait() -> None:
        with service.stop_event._cond:  # what Event.wait() holds around its Condition.wait()
            service.on_signal(signal.SIGTERM)

    worker = threading.Thread(target=handler_inside_the_wait, daemon=True)
    worker.start()
    worker.join(timeout=5)
    assert not worker.is_alive(), "the signal handler blocked on the stop event's lock"
    assert service.stopping and service.stop_signal == signal.SIGTERM
    loop = threading.Thread(target=service.run, daemon=True)
    loop.start()
    loop.join(timeout=5)
    assert not loop.is_alive(), "the loop did not end after the signal"

    spool.store("1.2.3", "1.2.3.1", b"a")  # a signal while a study is explained interrupts it
    busy = Service(spool, lambda uid, study, work: busy.on_signal(signal.SIGINT), settings)
    with pytest.raises(ServiceStopped):
        busy.step()
    assert busy.stop_signal == signal.SIGINT and spool.journal.since_finished("1.2.3") == ["started", "interrupted"]


# --- as a subprocess, against a real Orthanc -------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> list[Path]:
    """Three 2D LesionBench studies (one DICOM file each)."""
    from medhdm.data.bench_files import write_lesionbench

    root = tmp_path_factory.mktemp("serve-bench")
    manifest = write_lesionbench(root / "lb", n_cases=3, spatial_dims=2, seed=17)
    return [manifest.parent / f"case{i:03d}" / "image.dcm" for i in range(3)]


class Service:
    """``python -m medhdm pacs serve`` as a subprocess; its log lines arrive in a queue."""

    def __init__(self, spool: Path, destination: str, stable: float = 2.0, extra: tuple[str, ...] = ()) -> None:
        self.argv = [
            sys.executable,
            "-m",
            "medhdm.cli",
            "pacs",
            "serve",
            "--spool",
            str(spool),
            "--port",
            "0",
            "--calling-aet",
            "SCANNER",
            "--destination",
            destination,
            "--stable-seconds",
            str(stable),
            "--method",
            "gradientinput",
            "--intensity-range=-1000,0",
            "--aet",
            CLIENT_AET,
            *extra,
        ]
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        env = {**os.environ, "MEDHDM_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
        env["PYTHONFAULTHANDLER"] = "1"  # SIGABRT (see stop) prints every thread's stack to the log
        self.proc = subprocess.Popen(self.argv, env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        line = self.wait_for("listening on", timeout=120)
        self.port = int(line.split("listening on ")[1].split(";")[0].rsplit(":", 1)[1])

    def _read(self) -> None:
        for line in self.proc.stderr:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)  # end of output

    def wait_for(self, text: str, timeout: float = 90.0) -> str:
        """The first line (from now on) holding ``text``; fails with the log when it does not come."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:  # the service exited
                break
            self.lines.append(line)
            if text in line:
                return line
        self.stop()
        pytest.fail(f"no log line with {text!r} within {timeout} s; log:\n" + "\n".join(self.lines))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit; a service that does not exit fails with its threads' stacks."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)  # faulthandler dumps the stacks, then the process dies
            self.proc.wait(timeout=30)
            self._drain()
            pytest.fail(f"the service did not exit within 60 s of {signal.Signals(sig).name}; log:\n{self.log}")
        self._drain()
        return rc

    def _drain(self) -> None:
        self._reader.join(timeout=10)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.lines.append(line)

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def stdout(self) -> str:
        """Everything the service wrote to stdout (once it has exited)."""
        return self.proc.stdout.read() if self.proc.poll() is not None else ""


def _instances_in(pacs, study_uid: str) -> int:
    """How many instances Orthanc holds for the study (all its series)."""
    return sum(series["instances"] for series in pacs.series_of(study_uid))


def _journal(spool: Path) -> list[dict]:
    return [json.loads(line) for line in (spool / "journal.jsonl").read_text().splitlines() if line.endswith("}")]


def _corrupt_copy(path: Path, out: Path) -> Path:
    """``path`` with new UIDs and its pixel data cut in half: it is filed by the SCP, but cannot be explained."""
    ds = pydicom.dcmread(path)
    ds.StudyInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["corrupt-study"])
    ds.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["corrupt-series"])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["corrupt"])
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]
    ds.save_as(out, enforce_file_format=True)
    return out


def test_serve_explains_received_studies_and_sets_aside_a_corrupt_one(bench, tmp_path):
    require_orthanc()
    good, other = pydicom.dcmread(bench[0]), pydicom.dcmread(bench[1])
    corrupt = _corrupt_copy(bench[2], tmp_path / "corrupt.dcm")
    with LocalOrthanc(tmp_path / "orthanc") as pacs:
        pacs.upload([bench[0]])  # the modality sent the source to the archive too
        before = pacs.instances_count()
        service = Service(tmp_path / "spool", pacs.dicomweb_url)
        try:
            rejected, _ = _send(service.port, [good], calling="INTRUDER")
            assert rejected.is_rejected
            service.wait_for("rejected")

            _, statuses = _send(service.port, [pydicom.dcmread(corrupt)])
            assert statuses == [0x0000]  # filed: it is bad only when read for explaining
            service.wait_for("failed")

            _, statuses = _send(service.port, [good])
            sent = time.monotonic()
            assert statuses == [0x0000]
            line = service.wait_for(f"study {good.StudyInstanceUID}: done")
            latency = time.monotonic() - sent
            _, statuses = _send(service.port, [other])
            service.wait_for(f"study {other.StudyInstanceUID}: done")
        finally:
            rc = service.stop()
        assert rc == 0, service.log

        series = pacs.series_of(good.StudyInstanceUID)  # the source and the derived series, in one study
        assert good.SeriesInstanceUID in [s["series_uid"] for s in series]
        assert {"SEG", "SR"} <= {s["modality"] for s in series} and len(series) >= 4, series
        derived = _instances_in(pacs, good.StudyInstanceUID) - 1  # all but the source image
        assert derived >= 4 and _instances_in(pacs, other.StudyInstanceUID) == derived  # other: results only
        assert pacs.instances_count() == before + 2 * derived
        assert pacs.find_study(pydicom.dcmread(corrupt).StudyInstanceUID) is None
        print(f"last instance -> results in Orthanc: {latency:.1f} s ({line})")

    spool = tmp_path / "spool"
    bad_uid = pydicom.dcmread(corrupt).StudyInstanceUID
    reason = (spool / "quarantine" / bad_uid / "reason.txt").read_text()
    assert reason.strip(), reason
    journal = _journal(spool)
    assert [r["event"] for r in journal if r["study"] == bad_uid] == ["started", "failed"]
    assert [r["event"] for r in journal if r["study"] == good.StudyInstanceUID] == ["started", "done"]
    for ds in (good, other, pydicom.dcmread(corrupt)):
        assert str(ds.PatientName) not in service.log and ds.PatientID not in service.log
    assert good.StudyInstanceUID in service.log


def test_serve_killed_in_the_middle_of_a_study_loses_and_duplicates_nothing(bench, tmp_path):
    """Pushing by C-STORE this time (the service calls Orthanc as CLIENT_AET, which Orthanc knows for C-FIND)."""
    require_orthanc()
    first, second, third = (pydicom.dcmread(p) for p in bench)
    spool = tmp_path / "spool"
    with LocalOrthanc(tmp_path / "orthanc", modalities={CLIENT_AET: [CLIENT_AET, "127.0.0.1", 11112]}) as pacs:
        destination = f"{pacs.aet}@127.0.0.1:{pacs.dicom_port}"
        service = Service(spool, destination)
        try:
            _send(service.port, [first])
            service.wait_for(f"study {first.StudyInstanceUID}: done")
            after_first = pacs.instances_count()
            _send(service.port, [second])
            _send(service.port, [third])  # acknowledged; stable only after the kill
            service.wait_for(f"study {second.StudyInstanceUID}: explaining")
        finally:
            service.stop(signal.SIGKILL)
        finished = [r["study"] for r in _journal(spool) if r["event"] == "done"]
        assert finished == [first.StudyInstanceUID], f"killed too late: {finished} finished"

        service = Service(spool, destination)  # stopped cleanly (SIGTERM) as it takes up the study again
        service.wait_for(f"study {second.StudyInstanceUID}: claimed by an earlier run but not finished")
        assert service.stop(signal.SIGTERM) == 0, service.log
        assert "stopping (SIGTERM)" in service.log and service.lines[-1].endswith("stopped"), service.log
        finished = [r["study"] for r in _journal(spool) if r["event"] == "done"]
        assert finished == [first.StudyInstanceUID], service.log  # interrupted, or never taken up: still to do

        service = Service(spool, destination)
        try:
            service.wait_for(f"study {second.StudyInstanceUID}: done")
            service.wait_for(f"study {third.StudyInstanceUID}: done")
        finally:
            assert service.stop() == 0, service.log
        assert f"study {first.StudyInstanceUID}" not in service.log  # finished before: not redone

        counts = [_instances_in(pacs, ds.StudyInstanceUID) for ds in (first, second, third)]
        assert counts == [after_first] * 3 and pacs.instances_count() == 3 * after_first, counts
    done = [r["study"] for r in _journal(spool) if r["event"] == "done"]
    assert sorted(done) == sorted([first.StudyInstanceUID, second.StudyInstanceUID, third.StudyInstanceUID])


def test_serve_keeps_planted_names_out_of_its_log_file_and_streams(bench, tmp_path):
    """A name in every PN attribute (ReferringPhysicianName of one component: highdicom warns quoting it)
    and planted IDs, received over DIMSE, explained and pushed (to a pynetdicom archive): not one of them
    in stderr, stdout, ``--log-file`` or the journal."""
    source = tmp_path / "planted.dcm"
    planted = plant_names(bench[0], source)
    ds = pydicom.dcmread(source)
    log_file = tmp_path / "serve.log"
    with LoopbackArchive() as archive:
        service = Service(tmp_path / "spool", archive.address, stable=0.5, extra=("--log-file", str(log_file)))
        try:
            _, statuses = _send(service.port, [ds])
            assert statuses == [0x0000]
            service.wait_for(f"study {ds.StudyInstanceUID}: done")
        finally:
            rc = service.stop()
        assert rc == 0, service.log
        assert len(archive.stored) >= 4  # SC, PM, SEG, SR pushed
    log = log_file.read_text()
    journal = (tmp_path / "spool" / "journal.jsonl").read_text()
    assert leaked(planted, stderr=service.log, stdout=service.stdout, log_file=log, journal=journal) == {}
    assert f'The string "{REDACTED}" is unlikely to represent' in log  # highdicom's warning, without the name
