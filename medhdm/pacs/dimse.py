"""A DIMSE archive: C-FIND (study root), C-GET or C-MOVE to retrieve, C-STORE to push (with pynetdicom).

The archive must know our AE title (``calling_aet``) for C-FIND and C-GET (Orthanc:
``DicomModalities``). C-GET needs no port of ours: the archive sends the instances back
over the same association, which proposes the storage SOP classes with the SCP role.
With a :class:`MoveTarget`, a series is retrieved by C-MOVE instead: a Storage SCP of ours
listens on the target's port for the time of each move, accepts only the archive's AE title
calling the target's AE title, and writes each instance as it was received (its transfer
syntax kept, compressed or not); the archive must know the target AE title with our address
and port (Orthanc: ``DicomModalities``).
With :class:`~medhdm.pacs.tls.TlsFiles`, every association (and the C-MOVE listener) runs over
TLS; a handshake that fails (a certificate that does not verify) is an
:class:`~medhdm.pacs.archive.ArchiveError` that says so, never retried in plain text.
A connection that cannot be made or is lost, and an association aborted before the answer
came, are transient (retried); an association the archive rejects (unknown AE title, ...) and
a query or retrieval it refuses with a failure status are not: they end in an
:class:`~medhdm.pacs.archive.ArchiveError` that names the archive and the status.

pynetdicom answers an aborted or timed-out operation with an empty status data set (no
``Status``): :func:`_status_code` tells it from a real answer.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)
from pynetdicom.status import (
    QR_FIND_SERVICE_CLASS_STATUS,
    QR_GET_SERVICE_CLASS_STATUS,
    QR_MOVE_SERVICE_CLASS_STATUS,
    STORAGE_SERVICE_CLASS_STATUS,
)

from ..io.atomic import atomic_write
from .archive import Archive, ArchiveError, InstanceRef, RetryPolicy, TransientError
from .scp import follow_the_sender
from .tls import TlsFiles, describe_tls_failure
from .uids import check_uid

__all__ = ["DimseArchive", "MoveTarget"]

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


@dataclass(frozen=True)
class MoveTarget:
    """Where a C-MOVE sends the instances: our Storage SCP, ``aet`` listening on ``host:port`` for each move.

    Args:
        aet: the move destination's AE title (the archive maps it to our address and ``port``).
        port: the port our Storage SCP listens on (1-65535: the archive is configured with it).
        host: the address it listens on (``0.0.0.0``: all; the archive must reach it).
    """

    aet: str
    port: int
    host: str = "0.0.0.0"  # noqa: S104 (the archive connects from elsewhere; only its AE title is accepted)

    def __post_init__(self) -> None:
        if not self.aet or len(self.aet) > 16 or not self.aet.isascii() or "\\" in self.aet:
            raise ValueError(f"move_to: expected an AE title of 1-16 ASCII characters, got {self.aet!r}")
        if not 0 < int(self.port) < 65536:
            raise ValueError(f"move_port: expected a port from 1 to 65535 (the archive knows it), got {self.port}")


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
        move: retrieve by C-MOVE to this target (default: C-GET).
        tls: run every association over TLS with these files (default: plain TCP).
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
        move: MoveTarget | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        if not calling_aet or len(calling_aet) > 16:
            raise ValueError(f"calling_aet: expected 1-16 characters, got {calling_aet!r}")
        self.aet, self.host, self.port = aet, host, int(port)
        self.calling_aet = calling_aet
        self.retry = retry or RetryPolicy()
        self.timeout = timeout
        self.log = log
        self.move = move
        self.tls = tls
        self._client_tls = tls.client_context() if tls is not None else None  # bad files fail here, named
        self._server_tls = tls.server_context() if tls is not None and move is not None else None
        self._sop_classes: dict[str, set[str]] = {}  # series UID -> SOP classes seen by C-FIND

    def describe(self) -> str:
        return f"DIMSE {self.aet}@{self.host}:{self.port}" + (" (TLS)" if self.tls is not None else "")

    # ---- associations ------------------------------------------------------------------------------------------
    def _ae(self) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    def _associate(self, ae: AE, what: str, **kwargs):
        if self._client_tls is not None:
            kwargs["tls_args"] = (self._client_tls, self.host)
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
        if self._client_tls is not None:
            self._check_handshake(what)
        raise TransientError(f"{what}: cannot connect (no association)")

    def _check_handshake(self, what: str) -> None:
        """After a failed TLS association: an :class:`ArchiveError` when the handshake itself fails (not retried).

        pynetdicom logs a handshake error and answers with no association, like a refused connection;
        one handshake of our own tells the two apart.
        """
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
                with self._client_tls.wrap_socket(raw, server_hostname=self.host) as tls:
                    tls.settimeout(1.0)  # TLS 1.3: a server that refuses our certificate says so after the handshake
                    tls.recv(1)
        except ssl.SSLError as err:
            raise ArchiveError(
                f"{self.describe()}: {what}: {describe_tls_failure(err)}; is tls_ca= the CA that signed the "
                "archive's certificate, and does the archive trust our tls_cert=?"
            ) from None
        except OSError:
            return  # not a TLS failure (or none seen within a second): the caller's transient error

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
        if self.move is not None:
            return self._move_series(study_uid, series_uid, folder)
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

    def _receiver(self, folder: Path, received: list[Path]):
        """Our Storage SCP for one C-MOVE: every storage SOP class in every transfer syntax, written as received."""
        ae = self._ae()
        ae.ae_title = self.move.aet
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.require_calling_aet = [self.aet]  # only the archive sends
        ae.require_called_aet = True

        def on_store(event) -> int:
            try:
                sop_uid = check_uid(event.request.AffectedSOPInstanceUID, "SOP Instance UID")  # it names the file
            except ValueError:
                return 0xC210  # cannot understand: not filed
            path = folder / f"{sop_uid}.dcm"
            atomic_write(path, event.encoded_dataset())  # the transfer syntax as received
            received.append(path)
            return 0x0000

        try:
            return ae.start_server(
                (self.move.host, self.move.port),
                block=False,
                evt_handlers=[(evt.EVT_REQUESTED, follow_the_sender), (evt.EVT_C_STORE, on_store)],
                ssl_context=self._server_tls,
            )
        except OSError as err:
            raise ArchiveError(
                f"move_port: cannot listen on {self.move.host}:{self.move.port} for C-MOVE ({err.strerror or err})"
            ) from None

    def _move_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """One C-MOVE of the series to :attr:`move`, received by our Storage SCP into ``folder``."""
        received: list[Path] = []
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "SERIES"
        identifier.StudyInstanceUID = study_uid
        identifier.SeriesInstanceUID = series_uid
        what = f"C-MOVE series {series_uid} to {self.move.aet}"
        server = self._receiver(folder, received)
        try:
            ae = self._ae()
            ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
            assoc = self._associate(ae, what)
            try:
                for status, _ in assoc.send_c_move(
                    identifier, self.move.aet, StudyRootQueryRetrieveInformationModelMove
                ):
                    code = _status_code(status)
                    if code is None:
                        raise _no_answer(assoc, what)
                    if code not in (0x0000, 0xFF00, 0xFF01, 0xB000):
                        failed = int(status.get("NumberOfFailedSuboperations", 0) or 0)
                        raise ArchiveError(
                            f"{self.describe()}: {what}: the archive refused or failed the move "
                            f"(status {_describe_status(code, QR_MOVE_SERVICE_CLASS_STATUS)}"
                            + (f", {failed} instance(s) not sent" if failed else "")
                            + f"); does it know {self.move.aet} with our address and port {self.move.port}?"
                        )
            finally:
                if assoc.is_established:
                    assoc.release()
        finally:
            server.shutdown()
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
