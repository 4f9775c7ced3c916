"""A private Orthanc for tests and tutorials: started on free loopback ports, stopped at the end.

::

    with LocalOrthanc(tmp_path) as pacs:         # Orthanc + its DICOMweb plugin
        pacs.upload(paths)                         # REST POST /instances
        pacs.dicomweb_url                          # http://127.0.0.1:<port>/dicom-web
        pacs.series_of(study_uid)                  # what the archive now holds

The server keeps its storage and index under ``folder``, accepts only local
connections (``RemoteAccessAllowed`` false), serves DICOMweb at ``/dicom-web/`` and
DICOM on its own port with AE title ``aet``. Debian packages it as ``orthanc`` and
``orthanc-dicomweb`` (binary ``/usr/sbin/Orthanc``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import requests

__all__ = ["ORTHANC", "ORTHANC_DICOMWEB_PLUGIN", "LocalOrthanc", "OrthancError", "free_port", "orthanc_available"]

ORTHANC = os.environ.get("MEDHDM_ORTHANC", "/usr/sbin/Orthanc")
ORTHANC_DICOMWEB_PLUGIN = os.environ.get("MEDHDM_ORTHANC_DICOMWEB", "/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class OrthancError(RuntimeError):
    """Orthanc did not start, or refused a request."""


def orthanc_available() -> str | None:
    """``None`` when Orthanc and its DICOMweb plugin are installed, else why not (for a skip reason)."""
    binary = ORTHANC if os.path.isabs(ORTHANC) else shutil.which(ORTHANC)
    if not binary or not os.access(binary, os.X_OK):
        return f"Orthanc not installed ({ORTHANC}; apt-get install orthanc orthanc-dicomweb)"
    if not Path(ORTHANC_DICOMWEB_PLUGIN).is_file():
        return f"Orthanc's DICOMweb plugin not installed ({ORTHANC_DICOMWEB_PLUGIN}; apt-get install orthanc-dicomweb)"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalOrthanc:
    """Orthanc with the DICOMweb plugin, as a context manager.

    Args:
        folder: where the configuration, storage, index and log go (created).
        users: HTTP basic-auth users ``{name: password}``; ``None``: no authentication.
        modalities: DICOM peers Orthanc may talk to, ``{name: [AET, host, port]}`` (C-GET, C-FIND and
            C-MOVE are allowed to these calling AE titles), or ``{name: {"AET", "Host", "Port", ...}}``
            with Orthanc's other settings of a modality (``AllowGet``, ``UseDicomTls``, ...).
        aet: Orthanc's own AE title.
        timeout: seconds to wait for the server to answer after start.
        http_port: a fixed HTTP port (default: a free one).
        extra_config: configuration entries added to (or replacing) :meth:`config`'s, e.g. HTTPS
            (``SslEnabled``, ``SslCertificate``) or DICOM TLS (``DicomTlsEnabled``, ...).
        ca_bundle: the CA file our REST requests verify an HTTPS Orthanc against.

    Attributes (once started): ``http_url``, ``dicomweb_url``, ``http_port``, ``dicom_port``, ``aet``.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        users: dict[str, str] | None = None,
        modalities: dict | None = None,
        aet: str = "ORTHANC",
        timeout: float = 60.0,
        http_port: int | None = None,
        extra_config: dict | None = None,
        ca_bundle: str | os.PathLike | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.extra_config = dict(extra_config or {})
        self.users = dict(users or {})
        self.modalities = {k: dict(v) if isinstance(v, dict) else list(v) for k, v in (modalities or {}).items()}
        self.aet = aet
        self.timeout = timeout
        self._fixed_http_port = http_port
        self.http_port = 0
        self.dicom_port = 0
        self._process: subprocess.Popen | None = None
        self._session = requests.Session()
        if self.users:
            self._session.auth = next(iter(self.users.items()))
        if ca_bundle is not None:
            self._session.verify = str(ca_bundle)

    # ---- life cycle -------------------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        scheme = "https" if self.extra_config.get("SslEnabled") else "http"
        return f"{scheme}://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.http_url}/dicom-web"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def config(self) -> dict:
        """The Orthanc configuration this instance runs with."""
        return {
            "Name": f"medhdm-{self.aet}",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(self.users),
            "RegisteredUsers": self.users,
            "DicomModalities": self.modalities,
            "DicomCheckCalledAet": False,
            "Plugins": [ORTHANC_DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "StudiesMetadata": "Full", "SeriesMetadata": "Full"},
            "SaveJobs": False,
            "StorageCompression": False,
            "HttpThreadsCount": 8,
            "ConcurrentJobs": 1,
            "StableAge": 1,
            **self.extra_config,
        }

    def start(self) -> LocalOrthanc:
        why = orthanc_available()
        if why:
            raise OrthancError(why)
        self.folder.mkdir(parents=True, exist_ok=True)
        for _attempt in range(3):  # a port taken between free_port() and Orthanc's bind: try new ports
            self.http_port, self.dicom_port = self._fixed_http_port or free_port(), free_port()
            path = self.folder / "orthanc.json"
            path.write_text(json.dumps(self.config(), indent=2))
            log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the server's life)
            self._process = subprocess.Popen(
                [ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
            log.close()
            if self._wait():
                return self
            self.stop()
        raise OrthancError(f"Orthanc did not start; see {self.log_path}:\n{self._log_tail()}")

    def _wait(self) -> bool:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                return False
            try:
                if self._session.get(f"{self.http_url}/system", timeout=2).status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(0.2)
        return False

    def _log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 20 s)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> LocalOrthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self._session.close()

    # ---- REST helpers -----------------------------------------------------------------------------------------
    def rest(self, method: str, path: str, **kwargs) -> requests.Response:
        """An authenticated REST request to ``http_url + path``; raises :class:`OrthancError` on HTTP errors."""
        response = self._session.request(method, f"{self.http_url}{path}", timeout=60, **kwargs)
        if response.status_code >= 400:
            raise OrthancError(f"Orthanc {method} {path}: HTTP {response.status_code} {response.text[:200]}")
        return response

    def upload(self, paths: Sequence[str | os.PathLike]) -> list[str]:
        """Store DICOM files through REST ``POST /instances``; returns Orthanc's instance ids."""
        ids = []
        for path in paths:
            answer = self.rest("POST", "/instances", data=Path(path).read_bytes()).json()
            ids.append(answer["ID"])
        return ids

    def find_study(self, study_uid: str) -> str | None:
        """Orthanc's id of the study with this Study Instance UID, or ``None``."""
        found = self.rest("POST", "/tools/lookup", data=study_uid).json()
        return next((item["ID"] for item in found if item["Type"] == "Study"), None)

    def series_of(self, study_uid: str) -> list[dict]:
        """The study's series: ``{"series_uid", "modality", "description", "instances", "id"}``, by Series Number."""
        study = self.find_study(study_uid)
        if study is None:
            return []
        out = []
        for series in self.rest("GET", f"/studies/{study}/series").json():
            tags = series.get("MainDicomTags", {})
            out.append(
                {
                    "series_uid": tags.get("SeriesInstanceUID", ""),
                    "modality": tags.get("Modality", ""),
                    "description": tags.get("SeriesDescription", ""),
                    "number": int(tags.get("SeriesNumber", 0) or 0),
                    "instances": len(series.get("Instances", [])),
                    "id": series["ID"],
                }
            )
        return sorted(out, key=lambda s: (s["number"], s["series_uid"]))

    def instances_of_series(self, series_id: str) -> list[str]:
        """Orthanc's instance ids of a series (``id`` of :meth:`series_of`)."""
        return [item["ID"] for item in self.rest("GET", f"/series/{series_id}/instances").json()]

    def instances_count(self) -> int:
        """How many instances the server holds."""
        return int(self.rest("GET", "/statistics").json()["CountInstances"])
