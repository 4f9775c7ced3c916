"""A DIMSE archive: C-FIND (study root), C-GET to retrieve, C-STORE to push (with pynetdicom).

The archive must know our AE title (``calling_aet``) for C-FIND and C-GET (Orthanc:
``DicomModalities``). C-GET needs no port of ours: the archive sends the instances back
over the same association, which proposes the storage SOP classes with the SCP role.
A connection that cannot be made or is lost, and an association aborted before the answer
came, are transient (retried); an association the archive rejects (unknown AE title, ...) and
a query or retrieval it refuses with a failure status are not: they end in an
:class:`~medhdm.pacs.archive.ArchiveError` that names the archive and the status.

pynetdicom answers an aborted or timed-out operation with an empty status data set (no
``Status``): :func:`_status_code` tells it from a real answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
)
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    STORAGE_SERVICE_CLASS_STATUS,
)

from .archive import Archive, ArchiveError, InstanceRef, RetryPolicy, TransientError
from .uids import check_uid

__all__ = ["DimseArchive"]

_SUCCESS_OR_WARNING = {0x0000, 0x0001, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116}


def _status_code(status: Dataset | None) -> int | None:
    """The status of a DIMSE answer; ``None`` when there was none (an empty data set: aborted, timed out, lost)."""
    if status is None or "Status" not in status:
        return None
    return int(status.Status)


def _describe_status(code: int, table: dict) -> str:
    """``0xA700 (Refused: Out of Resources)``, with the meaning PS3.4 gives the code for the service."""
    meaning = table.get(code, ("", ""))[1]
    return f"0x{code:04X}" + (f" ({meaning})" if meaning else "")


def _no_answer(assoc, what: str) -> TransientError:
    """Why an operation got no answer: the association was aborted, or the connection was lost or timed out.

    pynetdicom's association thread notes an abort shortly after the empty answer: it is given a second.
    """
    deadline = time.monotonic() + 1.0
    while not assoc.is_aborted and assoc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    if assoc.is_aborted:
        return TransientError(f"{what}: the association was aborted (by the archive or the network) before it answered")
    return TransientError(f"{what}: no answer (connection lost or timed out)")


def _text(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value)


class DimseArchive(Archive):
    """The DICOM node ``aet`` at ``host:port``.

    Args:
        aet, host, port: the archive's AE title and address.
        calling_aet: our AE title.
        retry: attempts and backoff of transient failures.
        timeout: seconds for the association and each DIMSE message.
        log: where retries are reported.
    """

    def __init__(
        self,
        aet: str,
        host: str,
        port: int,
        *,
        calling_aet: str = "MEDHDM",
        retry: RetryPolicy | None = None,
        timeout: float = 30.0,
        log: Callable[[str], None] | None = None,
    ) -> None:
        if not calling_aet or len(calling_aet) > 16:
            raise ValueError(f"--calling-aet: expected 1-16 characters, got {calling_aet!r}")
        self.aet, self.host, self.port = aet, host, int(port)
        self.calling_aet = calling_aet
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.log = log
        self._sop_classes: dict[str, set[str]] = {}  # series UID -> SOP classes seen by C-FIND

    def describe(self) -> str:
        return f"DIMSE {self.aet}@{self.host}:{self.port}"

    # ---- associations ------------------------------------------------------------------------------------------
    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _associate(self, ae: AE, what: str, **kwargs):
        assoc = ae.associate(self.host, self.port, ae_title=self.aet, **kwargs)
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            answer = assoc.acceptor.primitive
            reason = getattr(answer, "reason_str", "") if answer is not None else ""
            raise ArchiveError(
                f"{self.describe()}: {what}: the archive rejected the association"
                + (f" ({reason})" if reason else "")
                + f"; is {self.calling_aet} a calling AE title it knows, and {self.aet} its AE title?"
            )
        raise TransientError(f"{what}: cannot connect (no association)")

    def _find(self, identifier: Dataset, what: str) -> list[Dataset]:
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        assoc = self._associate(ae, what)
        answers = []
        try:
            for status, found in assoc.send_c_find(identifier, StudyRootQueryRetrieveInformationModelFind):
                code = _status_code(status)
                if code is None:
                    raise _no_answer(assoc, what)
                if code in (0xFF00, 0xFF01) and found is not None:
                    answers.append(found)
                elif code != 0x0000:
                    raise ArchiveError(
                        f"{self.describe()}: {what}: the archive refused the query "
                        f"(status {_describe_status(code, QR_FIND_SERVICE_CLASS_STATUS)})"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return answers

    # ---- one attempt of each operation -------------------------------------------------------------------------
    def _search_studies(self, query: dict[str, str]) -> list[str]:
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        for key, value in query.items():
            setattr(identifier, key, value)
        return [_text(ds, "StudyInstanceUID") for ds in self._find(identifier, "C-FIND studies")]

    def _instances(self, study_uid: str) -> list[InstanceRef]:
        series = Dataset()
        series.QueryRetrieveLevel = "SERIES"
        series.StudyInstanceUID = study_uid
        series.SeriesInstanceUID = ""
        series.Modality = ""
        series.SeriesDescription = ""
        refs = []
        for found in self._find(series, f"C-FIND series of study {study_uid}"):
            image = Dataset()
            image.QueryRetrieveLevel = "IMAGE"
            image.StudyInstanceUID = study_uid
            image.SeriesInstanceUID = _text(found, "SeriesInstanceUID")
            image.SOPInstanceUID = ""
            image.SOPClassUID = ""
            image.NumberOfFrames = None
            for item in self._find(image, f"C-FIND instances of series {image.SeriesInstanceUID}"):
                ref = InstanceRef(
                    study_uid=study_uid,
                    series_uid=image.SeriesInstanceUID,
                    sop_uid=_text(item, "SOPInstanceUID"),
                    sop_class_uid=_text(item, "SOPClassUID"),
                    modality=_text(found, "Modality"),
                    series_description=_text(found, "SeriesDescription"),
                    frames=int(_text(item, "NumberOfFrames") or 1),
                )
                self._sop_classes.setdefault(ref.series_uid, set()).add(ref.sop_class_uid)
                refs.append(ref)
        return refs

    def _retrieve(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        classes = sorted(c for c in self._sop_classes.get(series_uid, set()) if c)
        if not classes:
            self._instances(study_uid)
            classes = sorted(c for c in self._sop_classes.get(series_uid, set()) if c)
        if not classes:
            raise ArchiveError(f"{self.describe()}: series {series_uid}: C-FIND gave no SOP Class UID to ask for")
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        for uid in classes:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        roles = [build_role(uid, scp_role=True) for uid in classes]
        received: list[Path] = []

        def on_store(event) -> int:
            ds = event.dataset
            ds.file_meta = event.file_meta
            try:
                sop_uid = check_uid(ds.get("SOPInstanceUID"), "SOP Instance UID")  # it names the file
            except ValueError:
                return 0xC210  # cannot understand: not filed
            path = folder / f"{sop_uid}.dcm"
            ds.save_as(path, enforce_file_format=True)
            received.append(path)
            return 0x0000

        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        what = f"C-GET series {series_uid}"
        assoc = self._associate(ae, what, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_store)])
        try:
            for status, _ in assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet):
                code = _status_code(status)
                if code is None:
                    raise _no_answer(assoc, what)
                if code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                    raise ArchiveError(
                        f"{self.describe()}: {what}: the archive refused the retrieval "
                        f"(status {_describe_status(code, QR_GET_SERVICE_CLASS_STATUS)})"
                    )
        finally:
            if assoc.is_established:
                assoc.release()
        return received

    def _store(self, study_uid: str, items: list[tuple[Path, pydicom.Dataset]]) -> dict[str, str]:
        ae = self._ae()
        contexts = sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for _, ds in items})
        for sop_class, syntax in contexts:
            ae.add_requested_context(sop_class, [syntax])
        assoc = self._associate(ae, f"C-STORE into study {study_uid}")
        failed = {}
        try:
            for path, header in items:
                uid = str(header.SOPInstanceUID)
                status = assoc.send_c_store(pydicom.dcmread(path)) if assoc.is_established else None
                code = _status_code(status)
                if code is None:
                    failed[uid] = str(_no_answer(assoc, "C-STORE"))
                elif code not in _SUCCESS_OR_WARNING:
                    failed[uid] = f"refused, status {_describe_status(code, STORAGE_SERVICE_CLASS_STATUS)}"
        finally:
            if assoc.is_established:
                assoc.release()
        return failed
