"""A DICOM Storage SCP (pynetdicom) that writes every received instance durably into a spool.

Rules:

- Only the configured calling AE titles may associate (pynetdicom's ``require_calling_aet``),
  and only to this SCP's own AE title as the called AE title (``require_called_aet``); any other
  association is rejected (A-ASSOCIATE-RJ "calling AE title not recognised" or "called AE title
  not recognised") and logged.
- An instance is answered *Success* only after :meth:`medhdm.pacs.spool.Spool.store` wrote it
  (fsync of the file and its folder), so an acknowledged instance is never lost.
- An instance that cannot be decoded, or lacks valid Study/SOP Instance UIDs, is answered with a
  failure status (``0xC210`` cannot understand) and not stored; a disk that refuses the write
  gives ``0xA700`` (out of resources). The SCP goes on either way.
- Logs carry AE titles, addresses and UIDs only, never patient names or IDs; the names and IDs
  (every element of VR PN, and the IDs) of received instances are handed to a
  :class:`medhdm.io.redact.Redactor` as they arrive, which removes
  them from any log line that might quote them (an error message, a library's warning).

Transfer syntaxes: every storage SOP class is accepted in every transfer syntax pynetdicom knows
(:data:`ACCEPTED_TRANSFER_SYNTAXES`: the uncompressed ones, Deflated, Explicit VR Big Endian, RLE,
JPEG Baseline / Extended / Lossless, JPEG-LS, JPEG 2000, and the video and HTJ2K ones). Where a
sender offers several syntaxes in one presentation context, the SCP takes the sender's first
choice (pynetdicom would take its own first: the supported contexts of each association are set
in the order the sender proposed), so the sender sends its data as it holds them and converts
nothing. An instance is stored as it was received, in the syntax it came in; it is decoded only
when the study is explained (by pydicom with the pylibjpeg plugins).

With TLS (``ssl_context``), the SCP accepts TLS connections only; a client whose certificate
does not verify (when the context asks for one) is refused at the handshake.

Verification (C-ECHO) is answered too, so ``echoscu`` can check that the service is up.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from ..io.redact import Redactor, identifying_texts
from .spool import Spool, check_uid

__all__ = [
    "ACCEPTED_TRANSFER_SYNTAXES",
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "StorageSCP",
    "follow_the_sender",
]

logger = logging.getLogger("medhdm.pacs.scp")

#: C-STORE failure statuses (PS3.4 Table B.2-1)
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC210

#: the transfer syntaxes the SCP accepts (for each SOP class the sender's first choice is taken)
ACCEPTED_TRANSFER_SYNTAXES = tuple(ALL_TRANSFER_SYNTAXES)

_STORAGE = frozenset(cx.abstract_syntax for cx in AllStoragePresentationContexts)


def follow_the_sender(event) -> None:
    """An ``EVT_REQUESTED`` handler: this association's supported storage contexts list each SOP class's
    transfer syntaxes (of :data:`ACCEPTED_TRANSFER_SYNTAXES`) in the order the sender proposed them, so the
    sender's first choice is accepted (pynetdicom accepts the first of the acceptor's list it was offered)."""
    order: dict[str, list[str]] = {}
    for context in event.assoc.requestor.primitive.presentation_context_definition_list:
        if context.abstract_syntax in _STORAGE:
            wanted = order.setdefault(context.abstract_syntax, [])
            accepted = [ts for ts in context.transfer_syntax if ts in ACCEPTED_TRANSFER_SYNTAXES]
            wanted += [ts for ts in accepted if ts not in wanted]
    contexts = [build_context(uid, syntaxes) for uid, syntaxes in order.items() if syntaxes]
    event.assoc.acceptor.supported_contexts = [*contexts, build_context(Verification)]


class StorageSCP:
    """The service's Storage SCP: a pynetdicom server in background threads, writing into a :class:`Spool`.

    Use as a context manager (or :meth:`start` / :meth:`stop`).

    Args:
        spool: where instances go.
        aet: this SCP's AE title: the only called AE title it answers to.
        calling_aets: the calling AE titles allowed to send (at least one).
        host: the address to listen on (default loopback only).
        port: the TCP port; 0 picks a free one (:attr:`port` tells which after :meth:`start`).
        redactor: receives the patient names and IDs of received instances (optional).
        ssl_context: listen for TLS connections only, with this server context (optional).
    """

    def __init__(
        self,
        spool: Spool,
        *,
        aet: str,
        calling_aets: Sequence[str],
        host: str = "127.0.0.1",
        port: int = 11112,
        redactor: Redactor | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        titles = [t.strip() for t in calling_aets if t and t.strip()]
        if not titles:
            raise ValueError("calling_aets: give at least one calling AE title allowed to send studies")
        for title in [aet, *titles]:
            if len(title) > 16 or not title.isascii() or "\\" in title:
                raise ValueError(f"AE title {title!r}: expected at most 16 ASCII characters without a backslash")
        if not 0 <= port <= 65535:
            raise ValueError(f"port: expected 0 to 65535, got {port}")
        self.spool = spool
        self.aet = aet
        self.calling_aets = titles
        self.host = host
        self.port = port
        self.redactor = redactor
        self.ssl_context = ssl_context
        self._server = None
        self._counts: dict[int, dict[str, int]] = {}  # association id -> study UID -> instances stored
        self._counts_lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------------------------

    def start(self) -> StorageSCP:
        """Start listening (background threads); :attr:`port` is then the port actually bound."""
        ae = AE(ae_title=self.aet)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, list(ACCEPTED_TRANSFER_SYNTAXES))
        ae.add_supported_context(Verification)
        ae.require_calling_aet = self.calling_aets
        ae.require_called_aet = True  # an association addressed to another AE title is not for us
        ae.maximum_associations = 16
        handlers = [
            (evt.EVT_REQUESTED, follow_the_sender),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: 0x0000),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
        ]
        try:
            self._server = ae.start_server(
                (self.host, self.port), block=False, evt_handlers=handlers, ssl_context=self.ssl_context
            )
        except OSError as err:
            raise ValueError(f"port: cannot listen on {self.host}:{self.port} ({err.strerror or err})") from None
        self.port = self._server.server_address[1]
        logger.info(
            "storage SCP %s (the called AE title it answers to)%s listening on %s:%d; calling AE titles allowed: %s",
            self.aet,
            " over TLS" if self.ssl_context is not None else "",
            self.host,
            self.port,
            ", ".join(self.calling_aets),
        )
        return self

    def stop(self) -> None:
        """Stop listening and close open associations (their unacknowledged instances are the sender's to resend)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
            logger.info("storage SCP %s stopped", self.aet)

    def __enter__(self) -> StorageSCP:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- handlers ---------------------------------------------------------------------------------

    @staticmethod
    def _peer(event) -> str:
        requestor = event.assoc.requestor
        return f"{requestor.ae_title} ({requestor.address})"

    def _on_store(self, event) -> int:
        """Decode enough to know the study, store durably, then answer (Success or a failure status)."""
        sop = str(event.request.AffectedSOPInstanceUID or "")
        try:
            sop = check_uid(sop, "SOP Instance UID")
            dataset = event.dataset
            if self.redactor is not None:  # first, as raw bytes: a warning on a bad value would quote it
                self.redactor.add(*identifying_texts(dataset))
            study = check_uid(dataset.get("StudyInstanceUID"), "Study Instance UID")
        except Exception as err:  # noqa: BLE001 (any decoding error: answered, logged, the SCP goes on)
            reason = str(err) if isinstance(err, ValueError) and "UID" in str(err) else type(err).__name__
            logger.warning(
                "C-STORE of instance %s from %s refused: the data set cannot be read (%s)",
                sop or "(no UID)",
                self._peer(event),
                reason,
            )
            return STATUS_CANNOT_UNDERSTAND
        try:
            self.spool.store(study, sop, event.encoded_dataset())
        except OSError as err:
            logger.error("C-STORE of instance %s of study %s: not stored (%s)", sop, study, err.strerror or err)
            return STATUS_OUT_OF_RESOURCES
        with self._counts_lock:
            per_study = self._counts.setdefault(id(event.assoc), {})
            per_study[study] = per_study.get(study, 0) + 1
        logger.debug("stored instance %s of study %s", sop, study)
        return 0x0000

    def _on_rejected(self, event) -> None:
        requested = event.assoc.requestor.primitive
        called = str(getattr(requested, "called_ae_title", "") or "").strip()
        title = str(event.assoc.requestor.ae_title).strip()
        if title not in self.calling_aets:
            why = "calling AE title not in the allowed list"
        elif called != self.aet.strip():
            why = f"called AE title not recognised (this SCP is {self.aet})"
        else:
            why = "too many associations"
        logger.warning("association from %s to %s rejected: %s", self._peer(event), called or self.aet, why)

    def _on_closed(self, event) -> None:
        with self._counts_lock:
            per_study = self._counts.pop(id(event.assoc), {})
        how = "released" if event.event is evt.EVT_RELEASED else "aborted"
        for study, n in per_study.items():
            logger.info(
                "received %d instance(s) of study %s from %s (association %s)", n, study, self._peer(event), how
            )
