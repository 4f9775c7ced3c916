"""Retrieval by C-MOVE, and DIMSE and DICOMweb over TLS, against a real Orthanc.

C-MOVE: Orthanc knows medhdm's AE title with the port of the Storage SCP that ``pacs explain
--move-to`` starts for each move, and refuses it C-GET (``AllowGet`` false: an archive that moves
only). A run puts SC/PM/SEG/SR into the study, a second run adds nothing, and a move to a port
Orthanc does not know fails with a message that says so.

TLS: certificates made with openssl in the test. Orthanc's DICOM port speaks TLS only
(``DicomTlsEnabled``, client certificates required): a run with ``--tls-cert/--tls-key/--tls-ca``
puts SC/PM/SEG/SR into Orthanc and a re-run adds nothing; a wrong CA, or a client certificate
Orthanc does not trust, fails with "TLS handshake failed" and adds nothing. DICOMweb over HTTPS
(through a TLS terminator: Orthanc's own HTTPS crashes in Debian 12's build) with ``--tls-ca``
works, and fails clearly with a wrong CA. ``pacs serve`` with TLS accepts a TLS sender with a
trusted certificate, refuses a plain one and one with an untrusted certificate, and pushes
its results to Orthanc over DIMSE TLS.
"""

from __future__ import annotations

import pydicom
import pytest
from pacs_helpers import (
    CLIENT_AET,
    TlsTerminator,
    bench_study,
    derived_series,
    make_certificates,
    require_orthanc,
)

from medhdm.cli import main
from medhdm.pacs.orthanc import LocalOrthanc, free_port


def _explain(where: list[str], study: dict, work, *extra: str, model: str = "default") -> int:
    return main(
        [
            "pacs",
            "explain",
            *where,
            "--study",
            study["study_uid"],
            "--method",
            "gradientinput",
            "--model",
            model,
            "--intensity-range=-1000,0",
            "--work",
            str(work),
            "--retries",
            "2",
            "--retry-delay",
            "0.1",
            *extra,
        ]
    )


def _check_results(orthanc: LocalOrthanc, study: dict) -> None:
    """SC (one per source instance), PM, SEG and SR in the study."""
    kinds = derived_series(orthanc, study["study_uid"])
    counts = {kind: len(series["datasets"]) for kind, series in kinds.items()}
    assert counts == {"sc": len(study["files"]), "pm": 1, "seg": 1, "seg_findings": 1, "sr": 1}, counts


# --- C-MOVE ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def move_port():
    return free_port()


@pytest.fixture(scope="module")
def mover(tmp_path_factory, move_port):
    """Orthanc that knows MEDHDM at 127.0.0.1:move_port, and answers its C-FIND and C-MOVE but not C-GET."""
    require_orthanc()
    medhdm = {"AET": CLIENT_AET, "Host": "127.0.0.1", "Port": move_port, "AllowGet": False}
    server = LocalOrthanc(tmp_path_factory.mktemp("orthanc-move"), modalities={CLIENT_AET: medhdm}).start()
    yield server
    server.stop()


def test_c_move_run_pushes_results_and_a_rerun_adds_nothing(mover, move_port, tmp_path, capsys):
    study = bench_study(tmp_path / "bench", 3, seed=23)
    mover.upload([*study["files"], study["annotation"]])
    where = ["--dimse", f"{mover.aet}@127.0.0.1:{mover.dicom_port}", "--calling-aet", CLIENT_AET]
    # this archive moves only: C-GET fails (Orthanc aborts the association)
    from medhdm.pacs.archive import ArchiveError, RetryPolicy
    from medhdm.pacs.dimse import DimseArchive

    getter = DimseArchive(
        mover.aet, "127.0.0.1", mover.dicom_port, calling_aet=CLIENT_AET, retry=RetryPolicy(attempts=1)
    )
    series_uid = getter.instances(study["study_uid"])[0].series_uid
    with pytest.raises(ArchiveError, match="C-GET series"):
        getter.retrieve_series(study["study_uid"], series_uid, tmp_path / "get")
    moving = [*where, "--move-to", CLIENT_AET, "--move-port", str(move_port), "--move-host", "127.0.0.1"]
    assert _explain(moving, study, tmp_path / "w1", model="default3d") == 0
    out = capsys.readouterr().out
    assert "1 done, 0 skipped, 0 failed" in out and "pointing game" in out, out  # the SEG was moved too
    _check_results(mover, study)
    before = mover.instances_count()
    assert _explain(moving, study, tmp_path / "w2", model="default3d") == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert mover.instances_count() == before


def test_c_move_to_a_port_the_archive_does_not_know_fails_clearly(mover, tmp_path, capsys):
    study = bench_study(tmp_path / "bench", 2, seed=29)
    mover.upload(study["files"])
    before = mover.instances_count()
    where = ["--dimse", f"{mover.aet}@127.0.0.1:{mover.dicom_port}", "--calling-aet", CLIENT_AET]
    wrong = [*where, "--move-to", CLIENT_AET, "--move-port", str(free_port()), "--move-host", "127.0.0.1"]
    assert _explain(wrong, study, tmp_path / "w") == 1
    err = capsys.readouterr().err
    assert "C-MOVE series" in err and f"does it know {CLIENT_AET} with our address and port" in err, err
    assert mover.instances_count() == before


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--move-port", "4000"], "--move-port: only with --move-to AET"),
        (["--move-to", "MEDHDM"], "--move-to: give --move-port"),
        (["--move-to", "MEDHDM", "--move-port", "0"], "--move-port: expected a port from 1 to 65535"),
        (["--move-to", "A" * 17, "--move-port", "4000"], "--move-to: expected an AE title of 1-16"),
    ],
)
def test_c_move_options_are_checked_before_any_work(argv, message, tmp_path, capsys):
    code = main(["pacs", "explain", "--dimse", "ORTHANC@127.0.0.1:1", "--study", "1.2.3", *argv])
    assert code == 2
    assert message in capsys.readouterr().err


# --- TLS ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_certificates(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(tmp_path_factory, pki):
    """Orthanc whose DICOM port speaks TLS only (client certificates signed by the test CA required)."""
    require_orthanc()
    tls = {
        "DicomTlsEnabled": True,
        "DicomTlsCertificate": str(pki["server"]),
        "DicomTlsPrivateKey": str(pki["server_key"]),
        "DicomTlsTrustedCertificates": str(pki["ca"]),
        "DicomTlsRemoteCertificateRequired": True,
    }
    server = LocalOrthanc(
        tmp_path_factory.mktemp("orthanc-tls"),
        modalities={CLIENT_AET: [CLIENT_AET, "127.0.0.1", 11112]},
        extra_config=tls,
    ).start()
    yield server
    server.stop()


def _tls(pki, cert: str = "client", ca: str = "ca") -> list[str]:
    return ["--tls-cert", str(pki[cert]), "--tls-key", str(pki[f"{cert}_key"]), "--tls-ca", str(pki[ca])]


def test_dimse_over_tls_pushes_results_a_rerun_adds_nothing_and_a_wrong_ca_is_an_error(secure, pki, tmp_path, capsys):
    study = bench_study(tmp_path / "bench", 2, seed=31)
    secure.upload([*study["files"], study["annotation"]])
    where = ["--dimse", f"{secure.aet}@127.0.0.1:{secure.dicom_port}", "--calling-aet", CLIENT_AET]
    before = secure.instances_count()
    for cert, ca, why in (
        ("client", "wrong_ca", "certificate verify failed"),  # we do not trust Orthanc's certificate
        ("stranger", "ca", "UNKNOWN_CA"),  # Orthanc does not trust ours
    ):
        assert _explain(where, study, tmp_path / f"bad-{cert}", *_tls(pki, cert, ca)) == 1
        err = capsys.readouterr().err
        assert "TLS handshake failed" in err and why in err, err
        assert "failed after" not in err  # not retried: a certificate does not get better
    assert _explain(where, study, tmp_path / "plain") == 1  # plain text to a TLS port: no association
    capsys.readouterr()
    assert secure.instances_count() == before

    assert _explain(where, study, tmp_path / "w1", *_tls(pki)) == 0
    assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
    _check_results(secure, study)
    after = secure.instances_count()
    assert _explain(where, study, tmp_path / "w2", *_tls(pki)) == 0
    assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
    assert secure.instances_count() == after


def test_dicomweb_over_https_with_a_ca_bundle_and_a_wrong_ca_is_an_error(secure, pki, tmp_path, capsys):
    study = bench_study(tmp_path / "bench", 2, seed=37)
    secure.upload(study["files"])
    proxy = TlsTerminator(secure.http_port, pki["server"], pki["server_key"])
    try:
        where = ["--dicomweb", f"{proxy.url}/dicom-web"]
        before = secure.instances_count()
        assert _explain(where, study, tmp_path / "bad", "--tls-ca", str(pki["wrong_ca"])) == 1
        err = capsys.readouterr().err
        assert "TLS handshake failed" in err and "certificate verify failed" in err, err
        assert secure.instances_count() == before
        assert _explain(where, study, tmp_path / "w1", "--tls-ca", str(pki["ca"])) == 0
        assert "1 done, 0 skipped, 0 failed" in capsys.readouterr().out
        _check_results(secure, study)
        after = secure.instances_count()
        assert _explain(where, study, tmp_path / "w2", "--tls-ca", str(pki["ca"])) == 0
        assert "0 done, 1 skipped, 0 failed" in capsys.readouterr().out
        assert secure.instances_count() == after
    finally:
        proxy.close()
    # TLS files with a plain http:// URL: refused, not ignored
    assert _explain(["--dicomweb", secure.dicomweb_url], study, tmp_path / "w3", "--tls-ca", str(pki["ca"])) == 2
    assert "use https://" in capsys.readouterr().err


def test_serve_over_tls_takes_trusted_senders_only_and_pushes_over_tls(secure, pki, tmp_path):
    import ssl

    from pynetdicom import AE
    from test_pacs_serve import Service

    from medhdm.pacs.tls import TlsFiles

    study = bench_study(tmp_path / "bench", 2, seed=41)
    ds = pydicom.dcmread(study["files"][0])
    destination = f"{secure.aet}@127.0.0.1:{secure.dicom_port}"
    service = Service(tmp_path / "spool", destination, stable=0.5, extra=tuple(_tls(pki, "server")))

    def send(tls: TlsFiles | None) -> bool:
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
        args = (tls.client_context(), "127.0.0.1") if tls is not None else None
        assoc = ae.associate("127.0.0.1", service.port, ae_title=CLIENT_AET, tls_args=args)
        if not assoc.is_established:
            return False
        status = assoc.send_c_store(ds)
        assoc.release()
        return status.Status == 0x0000

    try:
        assert "over TLS listening on" in service.log
        assert not send(None)  # plain text: no association
        with pytest.raises(ssl.SSLError):  # our CA does not know the service's certificate
            TlsFiles(pki["client"], pki["client_key"], pki["wrong_ca"]).client_context().wrap_socket(
                __import__("socket").create_connection(("127.0.0.1", service.port)), server_hostname="127.0.0.1"
            )
        assert not send(TlsFiles(pki["stranger"], pki["stranger_key"], pki["ca"]))  # the service refuses it
        assert not list((tmp_path / "spool").rglob("*.dcm"))
        assert send(TlsFiles(pki["client"], pki["client_key"], pki["ca"]))
        service.wait_for(f"study {ds.StudyInstanceUID}: done")
    finally:
        assert service.stop() == 0, service.log
    kinds = derived_series(secure, ds.StudyInstanceUID)
    assert sorted(kinds) == ["pm", "sc", "seg", "seg_findings", "sr"], service.log


def test_c_move_keeps_the_transfer_syntax_the_archive_holds(mover, move_port, tmp_path):
    """A JPEG Lossless and a JPEG 2000 instance, moved: received byte for byte in their own syntaxes."""
    from pydicom.data import get_testdata_file
    from syntax_fixtures import syntax_files

    from medhdm.pacs.dimse import DimseArchive, MoveTarget

    files = syntax_files(get_testdata_file("CT_small.dcm"), tmp_path / "syntaxes", ["jpeg-lossless-sv1", "jpeg2000"])
    study = pydicom.uid.generate_uid()
    sent = {}
    for name, entry in files.items():
        ds = pydicom.dcmread(entry["path"])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, pydicom.uid.generate_uid()
        ds.save_as(tmp_path / f"{name}.dcm", enforce_file_format=True)
        sent[str(ds.SeriesInstanceUID)] = (ds, entry["syntax"])
        mover.upload([tmp_path / f"{name}.dcm"])
    archive = DimseArchive(
        mover.aet, "127.0.0.1", mover.dicom_port, calling_aet=CLIENT_AET, move=MoveTarget(CLIENT_AET, move_port)
    )
    for series_uid, (ds, syntax) in sent.items():
        (path,) = archive.retrieve_series(study, series_uid, tmp_path / "moved" / series_uid)
        received = pydicom.dcmread(path)
        assert received.file_meta.TransferSyntaxUID == syntax
        assert received.PixelData == ds.PixelData


@pytest.mark.parametrize(
    "argv, message",
    [
        (["explain", "--dimse", "A@127.0.0.1:1", "--study", "1.2.3", "--tls-ca", "/nonexistent"], "--tls-ca: "),
        (["explain", "--dimse", "A@127.0.0.1:1", "--study", "1.2.3", "--tls-cert", "{pem}"], "--tls-cert: "),
        (
            ["explain", "--dicomweb", "https://127.0.0.1:1/dicom-web", "--study", "1.2.3", "--tls-ca", "{pem}"],
            "--tls-ca: ",
        ),  # fmt: skip
        (["explain", "--dicomweb", "http://127.0.0.1:1/dicom-web", "--study", "1.2.3", "--tls-ca", "{pem}"], "https"),
        (
            ["serve", "--spool", "{spool}", "--calling-aet", "X", "--destination", "A@127.0.0.1:1", "--keep", "3w"],
            "--keep: expected done, forever or a duration",
        ),  # fmt: skip
        (
            [
                "serve",
                "--spool",
                "{spool}",
                "--calling-aet",
                "X",
                "--destination",
                "A@127.0.0.1:1",
                "--tls-ca",
                "{pem}",
            ],
            "--tls-cert: a TLS server needs its certificate and key",
        ),  # fmt: skip
    ],
)
def test_tls_and_keep_options_are_checked_before_any_work(argv, message, tmp_path, capsys):
    pem = tmp_path / "not-a-certificate.pem"
    pem.write_text("not a certificate\n")
    argv = [a.format(pem=pem, spool=tmp_path / "spool") for a in argv]
    assert main(["pacs", *argv]) == 2
    assert message in capsys.readouterr().err
