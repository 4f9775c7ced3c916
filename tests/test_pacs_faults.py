"""Faults between medhdm and an archive: server down, wrong credentials, an instance the server refuses."""

from __future__ import annotations

import pydicom
import pytest
from pacs_helpers import bench_study, start_orthanc

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
