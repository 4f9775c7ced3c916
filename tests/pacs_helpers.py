"""What the PACS tests share: a private Orthanc (or the reason there is none), LesionBench studies, Orthanc's files."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest

from medhdm.pacs.orthanc import LocalOrthanc, orthanc_available

REQUIRE_VALIDATORS = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"

#: the AE title the tests call Orthanc from (registered in its DicomModalities for C-FIND/C-GET)
CLIENT_AET = "MEDHDM"


def require_orthanc() -> None:
    """Skip (fail in CI, ``MEDHDM_REQUIRE_VALIDATORS=1``) when Orthanc or its DICOMweb plugin is missing."""
    why = orthanc_available()
    if why:
        if REQUIRE_VALIDATORS:
            pytest.fail(f"{why}; required (MEDHDM_REQUIRE_VALIDATORS=1)")
        pytest.skip(why)


def start_orthanc(folder: Path, **kwargs) -> LocalOrthanc:
    require_orthanc()
    kwargs.setdefault("modalities", {CLIENT_AET: [CLIENT_AET, "127.0.0.1", 11112]})
    return LocalOrthanc(folder, **kwargs).start()


def bench_study(root: Path, dims: int, seed: int = 7) -> dict:
    """A LesionBench case with a lesion: ``{"files", "study_uid", "image", "lesion" (NIfTI), "annotation" (SEG)}``."""
    import json

    from medhdm.data.bench_files import write_lesionbench

    manifest = json.loads(write_lesionbench(root, n_cases=4, spatial_dims=dims, seed=seed).read_text())
    for entry in manifest["testing"]:
        case = root / Path(entry["image"]).parent.name
        if (case / "lesion_seg.dcm").exists():
            image = root / entry["image"]
            files = sorted(image.glob("*.dcm")) if image.is_dir() else [image]
            return {
                "files": files,
                "study_uid": str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID),
                "image": image,
                "lesion": root / entry["lesion"],
                "annotation": case / "lesion_seg.dcm",
            }
    raise AssertionError("no LesionBench case with a lesion")


def instance_file(orthanc: LocalOrthanc, instance_id: str) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(orthanc.rest("GET", f"/instances/{instance_id}/file").content))


def derived_series(orthanc: LocalOrthanc, study_uid: str) -> dict[str, dict]:
    """The study's medhdm series by kind (``sc``, ``pm``, ``seg``, ``seg_findings``: the SEG of the findings,
    ``sr``), each with its datasets."""
    kinds = {}
    for series in orthanc.series_of(study_uid):
        if not series["description"].startswith("medhdm"):
            continue
        datasets = [instance_file(orthanc, i) for i in orthanc.instances_of_series(series["id"])]
        sop = str(datasets[0].SOPClassUID)
        kind = {
            "1.2.840.10008.5.1.4.1.1.7": "sc",
            "1.2.840.10008.5.1.4.1.1.30": "pm",
            "1.2.840.10008.5.1.4.1.1.66.4": "seg",
            "1.2.840.10008.5.1.4.1.1.88.34": "sr",
        }[sop]
        kind = "seg_findings" if kind == "seg" and series["description"].endswith(" findings") else kind
        assert kind not in kinds, f"two {kind} series in the study"
        kinds[kind] = {**series, "datasets": datasets}
    return kinds


def png_pixels(data: bytes) -> np.ndarray:
    import matplotlib.image

    return np.asarray(matplotlib.image.imread(io.BytesIO(data), format="png"))


def enhanced_study(root: Path, seed: int = 13) -> dict:
    """A LesionBench 3D series as one Legacy Converted Enhanced CT (multi-frame) instance, in a new study."""
    import highdicom as hd

    from medhdm.io import read_dicom

    study = bench_study(root / "bench", 3, seed=seed)
    series = read_dicom(study["image"])
    mf = hd.legacy.LegacyConvertedEnhancedCTImage(
        series.datasets,
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=9,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    path = root / "enhanced.dcm"
    mf.save_as(path)
    return {"files": [path], "study_uid": str(mf.StudyInstanceUID), "frames": len(series.datasets)}


#: the one-component ReferringPhysicianName planted by :func:`plant_names` (highdicom warns quoting it)
ONE_COMPONENT_NAME = "Zqreferrersolo"


def plant_names(source: Path, out: Path) -> list[str]:
    """``source`` written to ``out`` with a distinctive name in every attribute of VR PN of the data
    dictionary (``Zqf<n><keyword>^Zqg<n><keyword>``; ReferringPhysicianName of one component:
    :data:`ONE_COMPONENT_NAME`), one in a sequence item, and distinctive IDs (PatientID,
    OtherPatientIDs, AccessionNumber, OtherPatientIDsSequence). Returns every planted string
    (name components and IDs), each of which must appear in no log line or output stream."""
    from pydicom.datadict import DicomDictionary

    ds = pydicom.dcmread(source)
    planted = []
    keywords = [keyword for vr, _, _, _, keyword in DicomDictionary.values() if vr == "PN" and keyword]
    for i, keyword in enumerate(keywords):
        if keyword == "ReferringPhysicianName":
            setattr(ds, keyword, ONE_COMPONENT_NAME)
            planted.append(ONE_COMPONENT_NAME)
        else:
            family, given = f"Zqf{i:03d}{keyword[:24]}", f"Zqg{i:03d}{keyword[:24]}"  # components of <= 64 chars
            setattr(ds, keyword, f"{family}^{given}")
            planted += [family, given]
    item = pydicom.Dataset()
    item.PatientID, item.TypeOfPatientID = "ZqSeqPatientId", "TEXT"
    ds.OtherPatientIDsSequence = [item]
    ds.PatientID, ds.OtherPatientIDs, ds.AccessionNumber = "ZqPatientId4711", ["ZqOtherId1", "ZqOtherId2"], "ZqAcc0815"
    planted += ["ZqSeqPatientId", "ZqPatientId4711", "ZqOtherId1", "ZqOtherId2", "ZqAcc0815"]
    out.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out, enforce_file_format=True)
    return planted


def leaked(planted: list[str], **texts: str) -> dict[str, list[str]]:
    """Which planted strings each named text holds (``{}`` when none leaked)."""
    found = {name: [p for p in planted if p in text] for name, text in texts.items()}
    return {name: hits for name, hits in found.items() if hits}


class LoopbackArchive:
    """A real DICOM node (pynetdicom) on 127.0.0.1: Storage SCP (keeps what it is sent), C-FIND and C-GET SCP.

    Args:
        find: the C-FIND handler (pynetdicom's: yields ``(status, identifier)``); default: no match.
        get: the C-GET handler; default: none offered.
        aet: its AE title.
    """

    def __init__(self, find=None, get=None, aet: str = "ARCHIVE") -> None:
        from pynetdicom import AE, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import (
            StudyRootQueryRetrieveInformationModelFind,
            StudyRootQueryRetrieveInformationModelGet,
        )

        self.aet = aet
        self.stored: list[pydicom.Dataset] = []
        self._ae = AE(ae_title=aet)
        self._ae.supported_contexts = AllStoragePresentationContexts
        self._ae.add_supported_context(StudyRootQueryRetrieveInformationModelFind)
        self._ae.add_supported_context(StudyRootQueryRetrieveInformationModelGet)
        self._handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_FIND, find or self._no_match)]
        if get is not None:
            self._handlers.append((evt.EVT_C_GET, get))
        self._server = None
        self.port = 0

    @staticmethod
    def _no_match(event):
        yield from ()

    def _on_store(self, event) -> int:
        self.stored.append(event.dataset)
        return 0x0000

    def __enter__(self) -> LoopbackArchive:
        self._server = self._ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=self._handlers)
        self.port = self._server.server_address[1]
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()

    @property
    def address(self) -> str:
        """``AET@127.0.0.1:PORT`` as ``--dimse`` / ``--destination`` take it."""
        return f"{self.aet}@127.0.0.1:{self.port}"


def make_certificates(folder: Path) -> dict[str, Path]:
    """A test PKI made with the openssl CLI: ``ca`` signs ``server`` (for 127.0.0.1 and localhost) and ``client``;
    ``wrong_ca`` signs ``stranger``. Returns the PEM paths: ``<name>`` (certificate) and ``<name>_key``."""
    import subprocess

    from validators import tool

    openssl = tool("openssl")
    folder.mkdir(parents=True, exist_ok=True)

    def run(*argv: str) -> None:
        subprocess.run([openssl, *argv], check=True, capture_output=True, cwd=folder)

    paths: dict[str, Path] = {}
    for ca in ("ca", "wrong_ca"):
        run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=medhdm test {ca}",
            "-keyout", f"{ca}.key", "-out", f"{ca}.pem")  # fmt: skip
        paths[ca], paths[f"{ca}_key"] = folder / f"{ca}.pem", folder / f"{ca}.key"
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ca in (("server", "ca"), ("client", "ca"), ("stranger", "wrong_ca")):
        run("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN=medhdm test {name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr")  # fmt: skip
        run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem")  # fmt: skip
        paths[name], paths[f"{name}_key"] = folder / f"{name}.pem", folder / f"{name}.key"
    return paths


class TlsTerminator:
    """HTTPS on a free loopback port in front of a plain HTTP server (what nginx does before an archive):
    each TLS connection, once its handshake succeeds, is piped to ``127.0.0.1:target_port``.

    Orthanc's own HTTPS (``SslEnabled``) crashes in Debian 12's build (civetweb 1.15 calls a missing
    OpenSSL 3 function after the handshake), so the HTTPS tests put this in front of it instead.
    """

    def __init__(self, target_port: int, cert: Path, key: Path) -> None:
        import socket
        import ssl
        import threading

        self.target_port = target_port
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(cert), str(key))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._threading = threading
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _serve(self) -> None:
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return  # closed
            self._threading.Thread(target=self._connection, args=(raw,), daemon=True).start()

    def _connection(self, raw) -> None:
        """One connection, in one thread (an SSL socket is not read and written from two threads at once)."""
        import select
        import socket
        import ssl

        try:
            client = self._context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # the client refused our certificate (or spoke plain text): nothing is forwarded
            return
        upstream = socket.create_connection(("127.0.0.1", self.target_port))
        try:
            while True:
                ready = [client] if client.pending() else select.select([client, upstream], [], [], 120)[0]
                if not ready:
                    return
                for source in ready:
                    data = source.recv(65536)
                    if not data:
                        return
                    (upstream if source is client else client).sendall(data)
        except OSError:
            return
        finally:
            client.close()
            upstream.close()

    def close(self) -> None:
        self._listener.close()
