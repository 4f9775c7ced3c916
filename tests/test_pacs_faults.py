"""Faults between medhdm and an archive: server down, wrong credentials, an instance the server refuses,
a query or retrieval it refuses or aborts, a Study Instance UID that is not one."""

from __future__ import annotations

import pydicom
import pytest
from pacs_helpers import LoopbackArchive, bench_study, start_orthanc

from medhdm.cli import main
from medhdm.pacs import PushError, RetryPolicy, parse_destination
from medhdm.pacs.orthanc import free_port

SECRET = "s3cret-never-printed"


def _explain(where: list[str], work, *extra: str) -> int:
    return main(
        ["pacs", "explain", *where, "--study", "1.2.3", "--method", "gradientinput", "--work", str(work), *extra]
    )


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_server_down_is_a_clear_error_after_the_retries(protocol, tmp_path, capsys):
    port = free_port()  # nothing listens there
    where = (
        ["--dicomweb", f"http://127.0.0.1:{port}/dicom-web"]
        if protocol == "dicomweb"
        else ["--dimse", f"ORTHANC@127.0.0.1:{port}"]
    )
    assert _explain(where, tmp_path, "--retries", "3", "--retry-delay", "0.01") == 1
    out = capsys.readouterr()
    assert f"127.0.0.1:{port}" in out.err
    assert "failed after 3 attempts" in out.err
    assert "cannot" in out.err  # cannot reach / cannot connect
    assert out.out.count("retry ") == 2  # attempts 2 and 3 announced
    assert "0 done, 0 skipped, 1 failed" in out.out


def test_a_server_that_comes_back_is_used_after_a_retry(tmp_path):
    """Transient failures are retried with backoff: the archive starts while the client waits."""
    import threading

    from pacs_helpers import require_orthanc

    from medhdm.pacs.orthanc import LocalOrthanc

    require_orthanc()
    port = free_port()
    late = LocalOrthanc(tmp_path / "late", http_port=port)
    starter = threading.Timer(0.5, late.start)
    logged: list[str] = []
    archive = parse_destination(
        f"http://127.0.0.1:{port}/dicom-web", retry=RetryPolicy(attempts=6, delay=0.5), log=logged.append
    )
    starter.start()
    try:
        assert archive.instances("1.2.3") == []  # reached: an empty study, not an error
    finally:
        starter.join()
        late.stop()
    assert logged and all("cannot reach the server" in line and "retry" in line for line in logged)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    server = start_orthanc(tmp_path_factory.mktemp("orthanc"), users={"alice": SECRET})
    yield server
    server.stop()


def test_wrong_credentials_name_the_server_not_the_secret(guarded, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MEDHDM_PACS_USER", "alice")
    monkeypatch.setenv("MEDHDM_PACS_PASSWORD", "wrong-" + SECRET)
    assert _explain(["--dicomweb", guarded.dicomweb_url], tmp_path, "--retry-delay", "0.01") == 1
    out = capsys.readouterr()
    assert guarded.dicomweb_url in out.err
    assert "HTTP 401" in out.err and "refused the credentials" in out.err and "alice" in out.err
    assert "retry" not in out.out  # refused credentials are not retried
    assert SECRET not in out.out + out.err


def test_missing_credentials_say_how_to_give_them(guarded, tmp_path, capsys, monkeypatch):
    for name in ("MEDHDM_PACS_USER", "MEDHDM_PACS_PASSWORD", "MEDHDM_PACS_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    assert _explain(["--dicomweb", guarded.dicomweb_url], tmp_path) == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "MEDHDM_PACS_USER" in err


def test_credentials_from_a_file_are_accepted(guarded, tmp_path, capsys, monkeypatch):
    auth = tmp_path / "auth"
    auth.write_text(f"alice:{SECRET}\n")
    # the study does not exist: the run gets past authentication and fails on the study itself
    assert _explain(["--dicomweb", guarded.dicomweb_url], tmp_path / "w", "--basic-auth-file", str(auth)) == 1
    out = capsys.readouterr()
    assert "no source image series" in out.err
    assert SECRET not in out.out + out.err


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    yield orthanc
    orthanc.stop()


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """Three valid instances and one that Orthanc refuses (no Series Instance UID)."""
    root = tmp_path_factory.mktemp("bench")
    files = bench_study(root, 3)["files"][:3]
    bad = pydicom.dcmread(files[0])
    del bad.SeriesInstanceUID
    bad.SOPInstanceUID = pydicom.uid.generate_uid()
    bad.save_as(root / "invalid.dcm")
    return files, root / "invalid.dcm", str(bad.SOPInstanceUID)


@pytest.mark.parametrize("protocol", ["dicomweb", "dimse"])
def test_one_refused_instance_is_named_and_retried(server, batch, protocol):
    files, bad, bad_uid = batch
    logged: list[str] = []
    text = server.dicomweb_url if protocol == "dicomweb" else f"{server.aet}@127.0.0.1:{server.dicom_port}"
    destination = parse_destination(text, retry=RetryPolicy(attempts=3, delay=0.01), log=logged.append)
    with pytest.raises(PushError) as caught:
        destination.push([*files, bad])
    report = caught.value.report
    assert list(report.failed) == [bad_uid]
    assert bad_uid in str(caught.value) and destination.describe() in str(caught.value)
    assert len(report.sent) + len(report.already_present) == len(files)
    assert [line for line in logged if bad_uid in line and "retry" in line] and len(logged) == 2
    # the valid ones are in the archive now: pushing them again sends nothing
    again = destination.push(files)
    assert again.sent == [] and len(again.already_present) == len(files)


# --- an archive that refuses or aborts (a real pynetdicom node on loopback) -----------------------------


def _refuse(code: int):
    def handler(event):
        yield code, None

    return handler


def _abort(event):
    event.assoc.abort()
    yield from ()


def _abort_get(event):
    event.assoc.abort()
    yield 1  # sub-operations (a C-GET handler's first answer)


def _error_line(err: str) -> str:
    """The command's error line (the archive's own log lines share stderr in these in-process runs)."""
    lines = [line for line in err.splitlines() if line.startswith("medhdm pacs: error: ")]
    assert len(lines) == 1, err
    return lines[0]


def _one_study(event):
    """C-FIND answers for one study of one CT series holding one instance."""
    asked = event.identifier
    answer = pydicom.Dataset()
    answer.QueryRetrieveLevel = asked.QueryRetrieveLevel
    answer.StudyInstanceUID = "1.2.3"
    if asked.QueryRetrieveLevel == "SERIES":
        answer.SeriesInstanceUID, answer.Modality, answer.SeriesDescription = "1.2.3.4", "CT", "source"
    elif asked.QueryRetrieveLevel == "IMAGE":
        answer.SeriesInstanceUID, answer.SOPInstanceUID = "1.2.3.4", "1.2.3.4.5"
        answer.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"  # CT Image Storage
    yield 0xFF00, answer


def _explain_from(archive: LoopbackArchive, work, *select: str) -> int:
    return main(
        ["pacs", "explain", "--dimse", archive.address, *select, "--method", "gradientinput", "--work", str(work)]
        + ["--retries", "2", "--retry-delay", "0.01", "--push", "none"]
    )


@pytest.mark.parametrize("select", [("--query", "Modality=CT"), ("--study", "1.2.3")])
def test_a_query_the_archive_refuses_is_a_clear_error(select, tmp_path, capsys):
    with LoopbackArchive(find=_refuse(0xA700)) as archive:
        assert _explain_from(archive, tmp_path, *select) == 1
    err = capsys.readouterr().err
    message = _error_line(err)
    assert f"DIMSE {archive.address}" in message  # names the archive
    assert "the archive refused the query (status 0xA700 (Refused: Out of Resources))" in message, err
    assert "Traceback" not in err and "AttributeError" not in err


@pytest.mark.parametrize("select", [("--query", "Modality=CT"), ("--study", "1.2.3")])
def test_a_query_the_archive_aborts_is_a_clear_error_after_the_retries(select, tmp_path, capsys):
    with LoopbackArchive(find=_abort) as archive:
        assert _explain_from(archive, tmp_path, *select) == 1
    out = capsys.readouterr()
    message = _error_line(out.err)
    assert "failed after 2 attempts" in message and "the association was aborted" in message, out.err
    assert "Traceback" not in out.err and "has no attribute 'Status'" not in out.err + out.out
    assert out.out.count("retry 1/1") == 1  # the abort is retried once, then reported


@pytest.mark.parametrize("get", ["refuse", "abort"])
def test_a_retrieval_the_archive_refuses_or_aborts_is_a_clear_error(get, tmp_path, capsys):
    def refuse_get(event):
        yield 1  # sub-operations
        yield 0xA702, None

    with LoopbackArchive(find=_one_study, get=refuse_get if get == "refuse" else _abort_get) as archive:
        assert _explain_from(archive, tmp_path, "--study", "1.2.3") == 1
    out = capsys.readouterr()
    message = _error_line(out.err)
    expected = (
        "the archive refused the retrieval (status 0xA702 (Refused: Out of resources, unable to perform sub-operations"
        if get == "refuse"
        else "the association was aborted"
    )
    assert "C-GET series 1.2.3.4" in message and expected in message, out.err
    assert "Traceback" not in out.err and "has no attribute 'Status'" not in out.err + out.out
    assert not list((tmp_path / "cache").rglob("*.dcm"))  # nothing half-retrieved passes for cached


@pytest.mark.parametrize("uid", ["../../../etc", "1.2.3/4", "1.2.abc", "1." * 40 + "1", "", "1..2"])
def test_a_study_that_is_not_a_uid_is_refused_before_anything_is_written(uid, tmp_path, capsys):
    work = tmp_path / "work"
    with LoopbackArchive() as archive:
        assert _explain_from(archive, work, "--study", uid) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("medhdm pacs: error: --study: "), err
    assert "is not a DICOM UID; expected numbers separated by dots, at most 64 characters" in err
    assert not work.exists()


def test_uids_from_the_archive_are_checked_before_they_become_paths(tmp_path, capsys):
    """A Study UID from a query's answer, and Series / SOP UIDs from C-FIND, never name a folder or file."""
    from medhdm.pacs.cache import StudyCache
    from medhdm.pacs.uids import check_uid

    cache = StudyCache(tmp_path / "cache")
    for study, series in (("../../x", "1.2"), ("1.2", "../x"), ("1.2", "1.2/..")):
        with pytest.raises(ValueError, match="is not a DICOM UID"):
            cache.series_folder(study, series)
    with pytest.raises(ValueError, match="SOP Instance UID: a value of 7 characters is not a DICOM UID"):
        cache.complete("1.2", "1.3", ["../../x"])
    assert check_uid("1.2.840.10008.1.2", "UID") == "1.2.840.10008.1.2"

    def escaping_study(event):
        answer = pydicom.Dataset()
        answer.QueryRetrieveLevel, answer.StudyInstanceUID = "STUDY", "../../../etc"
        yield 0xFF00, answer

    work = tmp_path / "work"
    with LoopbackArchive(find=escaping_study) as archive:
        assert _explain_from(archive, work, "--query", "Modality=CT") == 1
    assert "Study Instance UID: a value of 12 characters is not a DICOM UID" in _error_line(capsys.readouterr().err)
    assert [p.name for p in work.iterdir()] == ["cache"] and not any((work / "cache").iterdir())


def test_a_received_series_uid_that_is_not_a_uid_never_names_a_folder(tmp_path):
    """``pacs serve`` explains what the SCP received: a Series / SOP UID there becomes a folder or file name."""
    from pydicom.data import get_testdata_file

    from medhdm.pacs import PacsOptions, explain_local_study

    study = tmp_path / "spool" / "studies" / "1.2.3"
    study.mkdir(parents=True)
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3", "../../../escaped"
    ds.save_as(study / "1.2.3.4.dcm")
    work = tmp_path / "spool" / "work" / "1.2.3"
    with pytest.raises(
        ValueError, match=r"1\.2\.3\.4\.dcm: SeriesInstanceUID: a value of 16 characters is not a DICOM"
    ):
        explain_local_study(study, None, None, work, PacsOptions("m"))
    assert not work.exists() and not list(tmp_path.rglob("*escaped*"))
