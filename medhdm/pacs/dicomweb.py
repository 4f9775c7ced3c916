"""A DICOMweb archive: QIDO-RS search, WADO-RS retrieve, STOW-RS store (with dicomweb-client).

Failures are sorted for :class:`~medhdm.pacs.archive.Archive`'s retries: no connection,
time-outs and HTTP 408/429/5xx are transient (retried with backoff); HTTP 401/403 end
the run at once with a message naming the server and how the credentials were given
(never the secret). A STOW-RS answer's Failed SOP Sequence names the instances the
server refused; only those are sent again.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient

from .archive import Archive, ArchiveError, InstanceRef, RetryPolicy, TransientError
from .secrets import Credentials
from .tls import TlsFiles, describe_tls_failure

__all__ = ["DicomwebArchive"]

_TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}
_PAGE = 500  # QIDO-RS results per request


def _value(item: dict, tag: str) -> str:
    """The first value of ``tag`` (8 hex digits) in a DICOM JSON object, or ``""``."""
    values = item.get(tag, {}).get("Value") or [""]
    return str(values[0])


class _TlsSession(requests.Session):
    """A session that verifies servers against the given CA bundle even when ``REQUESTS_CA_BUNDLE`` or
    ``CURL_CA_BUNDLE`` is set (requests lets those override a session's ``verify``)."""

    def __init__(self, tls: TlsFiles) -> None:
        super().__init__()
        self.verify, self.cert = tls.verify, tls.client_cert

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:  # not given for this request: the session's, never the environment's
            settings["verify"] = self.verify
        return settings


def _ssl_cause(error: BaseException) -> BaseException:
    """The :class:`ssl.SSLError` under a requests/urllib3 error (or the error itself)."""
    seen = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError):
            return seen
        inner = seen.args[0] if seen.args and isinstance(seen.args[0], BaseException) else None
        seen = getattr(seen, "reason", None) if isinstance(getattr(seen, "reason", None), BaseException) else inner
    return error


class DicomwebArchive(Archive):
    """A DICOMweb server at ``url`` (its root: ``http(s)://host[:port]/dicom-web``).

    Args:
        url: the DICOMweb root; credentials may not be written into it.
        credentials: bearer token or basic authentication (:mod:`medhdm.pacs.secrets`), or ``None``.
        retry: attempts and backoff of transient failures.
        timeout: seconds per HTTP request.
        log: where retries are reported (``None``: silent).
        tls: for an ``https://`` URL, the CA bundle the server's certificate is verified against
            (and our client certificate, if the server asks for one); default: the system's CAs.
    """

    def __init__(
        self,
        url: str,
        credentials: Credentials | None = None,
        *,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        log: Callable[[str], None] | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url: expected an http(s)://host/... URL, got {url!r}")
        if parts.username or parts.password:
            raise ValueError(
                "url: credentials in the URL are refused (they show in the process list); "
                "set MEDHDM_PACS_TOKEN or MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD, "
                "or give token_file= or basic_auth_file="
            )
        self.url = url.rstrip("/")
        self.credentials = credentials
        self.retry = retry or RetryPolicy()
        self.log = log
        if tls is not None:
            tls.client_context()  # the files are read now: a bad one is refused before any request
        session = _TlsSession(tls) if tls is not None else requests.Session()
        if credentials is not None:
            credentials.apply(session)
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout)
        self._client.set_http_retry_params(retry=False)  # retries are ours (RetryPolicy), also for lost connections

    def describe(self) -> str:
        return f"DICOMweb {self.url}"

    # ---- errors -----------------------------------------------------------------------------------------------
    def _call(self, what: str, call: Callable):
        """``call()`` with its failures turned into :class:`TransientError` / :class:`ArchiveError`."""
        try:
            return call()
        except requests.exceptions.SSLError as err:  # a certificate that does not verify: not retried
            raise ArchiveError(
                f"{self.url}: {what}: {describe_tls_failure(_ssl_cause(err))}; is tls_ca= the CA that signed "
                "the server's certificate?"
            ) from None
        except (requests.ConnectionError, requests.Timeout) as err:
            reason = type(err).__name__ if isinstance(err, requests.Timeout) else "connection refused or lost"
            raise TransientError(f"{what}: cannot reach the server ({reason})") from None
        except requests.HTTPError as err:
            raise self._http_error(what, err.response) from None

    def _http_error(self, what: str, response: requests.Response | None) -> ArchiveError:
        status = response.status_code if response is not None else 0
        reason = f"HTTP {status} {response.reason if response is not None else ''}".strip()
        if status in (401, 403):
            how = (
                f"the server refused the credentials ({self.credentials.describe()})"
                if self.credentials
                else "the server needs credentials: set MEDHDM_PACS_TOKEN or MEDHDM_PACS_USER/MEDHDM_PACS_PASSWORD, "
                "or give token_file= or basic_auth_file="
            )
            return ArchiveError(f"{self.url}: {what}: {reason}: {how}")
        if status in _TRANSIENT_STATUS:
            return TransientError(f"{what}: {reason}")
        return ArchiveError(f"{self.url}: {what}: {reason}")

    # ---- one attempt of each operation -------------------------------------------------------------------------
    def _pages(self, what: str, search: Callable[..., list[dict]], key: str) -> list[dict]:
        """Every result of a QIDO-RS search, page by page (``limit``/``offset``), each ``key`` once.

        Stops at a short page, or at a page that brings nothing new: some servers ignore
        ``offset`` for some filters (Orthanc 1.10 with ``ModalitiesInStudy``), and
        dicomweb-client's ``get_remaining`` then never ends.
        """
        results: dict[str, dict] = {}
        while True:
            page = self._call(what, lambda: search(limit=_PAGE, offset=len(results)))
            new = {_value(item, key): item for item in page if _value(item, key) not in results}
            results.update(new)
            if len(page) < _PAGE or not new:
                return list(results.values())

    def _search_studies(self, query: dict[str, str]) -> list[str]:
        found = self._pages(
            "QIDO-RS study search",
            lambda **page: self._client.search_for_studies(search_filters=dict(query), **page),
            "0020000D",
        )
        return [_value(item, "0020000D") for item in found]

    def _instances(self, study_uid: str) -> list[InstanceRef]:
        try:
            found = self._pages(
                f"QIDO-RS instances of study {study_uid}",
                lambda **page: self._client.search_for_instances(
                    study_instance_uid=study_uid,
                    fields=["SOPClassUID", "Modality", "Manufacturer", "SeriesDescription", "NumberOfFrames"],
                    **page,
                ),
                "00080018",
            )
        except ArchiveError as err:
            if "HTTP 404" in str(err):
                return []
            raise
        return [
            InstanceRef(
                study_uid=study_uid,
                series_uid=_value(item, "0020000E"),
                sop_uid=_value(item, "00080018"),
                sop_class_uid=_value(item, "00080016"),
                modality=_value(item, "00080060"),
                manufacturer=_value(item, "00080070"),
                series_description=_value(item, "0008103E"),
                frames=int(_value(item, "00280008") or 1),
            )
            for item in found
        ]

    def _retrieve(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        datasets = self._call(
            f"WADO-RS series {series_uid}",
            lambda: self._client.retrieve_series(study_uid, series_uid),
        )
        paths = []
        for ds in datasets:
            path = folder / f"{ds.SOPInstanceUID}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def _store(self, study_uid: str, items: list[tuple[Path, pydicom.Dataset]]) -> dict[str, str]:
        datasets = [pydicom.dcmread(path) for path, _ in items]
        what = f"STOW-RS of {len(datasets)} instance(s) into study {study_uid}"

        def store() -> pydicom.Dataset:
            try:
                return self._client.store_instances(datasets, study_instance_uid=study_uid)
            except requests.HTTPError as err:  # 409 (or 400): the answer names the refused instances
                if err.response is None or err.response.status_code not in (400, 409):
                    raise
                try:
                    return pydicom.Dataset.from_json(err.response.json())
                except ValueError:
                    raise err from None

        answer = self._call(what, store)
        failed = {}
        for item in answer.get("FailedSOPSequence", []):
            uid = str(item.get("ReferencedSOPInstanceUID", ""))
            reason = item.get("FailureReason", None)
            failed[uid] = f"refused, failure reason 0x{int(reason):04X}" if reason is not None else "refused"
        acknowledged = answer.get("ReferencedSOPSequence")
        stored = {str(item.get("ReferencedSOPInstanceUID", "")) for item in acknowledged or []}
        for ds in datasets:  # an instance the answer names nowhere counts as not stored
            uid = str(ds.SOPInstanceUID)
            if acknowledged is not None and uid not in stored and uid not in failed:
                failed[uid] = "not acknowledged by the server"
        return failed
