"""Where results go (and studies come from): a DICOMweb URL or a DIMSE ``AET@HOST:PORT``.

::

    destination = parse_destination("http://127.0.0.1:8042/dicom-web", credentials_from_env())
    report = destination.push(paths)     # PushReport: sent, already present, failed per instance
    destination.describe()               # "DICOMweb http://127.0.0.1:8042/dicom-web" (never a secret)

:meth:`Destination.push` raises :class:`PushError` (naming the server and every unsent
SOP Instance UID) when anything stays unsent after the retries.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from .archive import Archive, ArchiveError, PushError, PushReport, RetryPolicy
from .secrets import Credentials

if TYPE_CHECKING:
    from .dimse import MoveTarget
    from .tls import TlsFiles

__all__ = ["Destination", "PushError", "PushReport", "parse_destination", "parse_dimse_address"]

#: an archive results are pushed to (every :class:`~medhdm.pacs.archive.Archive` can be one)
Destination = Archive

_DIMSE = re.compile(r"^(?P<aet>[^@\s\\]{1,16})@(?P<host>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<port>\d{1,5})$")


def parse_dimse_address(text: str) -> tuple[str, str, int]:
    """``AET@HOST:PORT`` as ``(aet, host, port)``; ``ValueError`` naming the text otherwise."""
    match = _DIMSE.match(text.strip())
    if not match or not 0 < int(match["port"]) < 65536:
        raise ValueError(f"DIMSE address: expected AET@HOST:PORT (AE title of 1-16 characters), got {text!r}")
    return match["aet"], match["host"].strip("[]"), int(match["port"])


def parse_destination(
    text: str,
    credentials: Credentials | None = None,
    *,
    retry: RetryPolicy | None = None,
    calling_aet: str = "MEDHDM",
    log: Callable[[str], None] | None = None,
    tls: TlsFiles | None = None,
    move: MoveTarget | None = None,
) -> Destination:
    """A :class:`~medhdm.pacs.dicomweb.DicomwebArchive` for an ``http(s)://`` URL, else a DIMSE archive.

    Args:
        text: a DICOMweb root URL, or ``AET@HOST:PORT`` of a DICOM node.
        credentials: for DICOMweb (DIMSE has none; giving them for it is refused).
        retry: attempts and backoff of transient failures.
        calling_aet: our AE title towards a DIMSE node.
        log: where retries are reported.
        tls: TLS files: for DICOMweb, an ``https://`` URL is verified against ``tls.ca`` (a plain
            ``http://`` URL with them is refused); for DIMSE, every association runs over TLS.
        move: for DIMSE, retrieve by C-MOVE to this target (not for DICOMweb).
    """
    text = str(text).strip()
    if text.lower().startswith(("http://", "https://")):
        from .dicomweb import DicomwebArchive

        if move is not None:
            raise ValueError(f"{text}: C-MOVE (move_to) is for a DIMSE node, not DICOMweb")
        if tls is not None and not text.lower().startswith("https://"):
            raise ValueError(f"{text}: TLS files were given for a plain http:// URL; use https://")
        return DicomwebArchive(text, credentials, retry=retry, log=log, tls=tls)
    aet, host, port = parse_dimse_address(text)
    if credentials is not None:
        raise ValueError(f"{text}: DIMSE has no credentials; DICOMweb credentials were given ({credentials})")
    from .dimse import DimseArchive

    return DimseArchive(aet, host, port, calling_aet=calling_aet, retry=retry, log=log, tls=tls, move=move)


__all__ += ["ArchiveError"]
