"""``medhdm pacs serve`` receives what PACS send: every transfer syntax, stored as received; ``--keep`` retention.

In process (fast): dcmtk's ``storescu`` sends one file per transfer syntax (made with dcmtk and GDCM,
:mod:`syntax_fixtures`) to the Storage SCP, proposing it with its ``-x..`` option; the SCP stores each
instance in the syntax it came in, byte for byte, and it decodes to the uncompressed original. The
spool's retention deletes a done study's received instances (``done``, or after a duration) and
journals it; over a run of studies the spool holds at most the study in progress.

As a subprocess against a real Orthanc: a JPEG Lossless and a JPEG 2000 study sent by ``storescu``
are explained and their results pushed (instance counts exact), and ``--keep done`` leaves no
received instance in the spool.
"""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pacs_helpers import require_orthanc
from pydicom.data import get_testdata_file
from syntax_fixtures import LOSSLESS, SYNTAXES, storescu, syntax_files

from medhdm.pacs.scp import StorageSCP
from medhdm.pacs.serve import ServeSettings, Service
from medhdm.pacs.spool import Spool, parse_keep


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return syntax_files(get_testdata_file("CT_small.dcm"), tmp_path_factory.mktemp("syntaxes"))


@pytest.fixture(scope="module")
def scp(tmp_path_factory):
    spool = Spool(tmp_path_factory.mktemp("spool") / "spool")
    with StorageSCP(spool, aet="MEDHDM", calling_aets=["SCANNER"], port=0) as server:
        yield server


@pytest.mark.parametrize("name", list(SYNTAXES))
def test_scp_accepts_each_transfer_syntax_and_stores_it_as_received(scp, files, name):
    entry = files[name]
    run = storescu(scp.port, [entry["path"]], entry["option"])
    assert run.returncode == 0, run.stdout + run.stderr
    sent = pydicom.dcmread(entry["path"])
    stored = pydicom.dcmread(scp.spool.incoming / sent.StudyInstanceUID / f"{sent.SOPInstanceUID}.dcm")
    assert stored.file_meta.TransferSyntaxUID == entry["syntax"]  # as proposed: nothing converted on the way
    if stored.file_meta.TransferSyntaxUID.is_compressed:
        assert stored.PixelData == sent.PixelData  # the compressed stream itself, byte for byte
    original = pydicom.dcmread(entry["original"]).pixel_array
    pixels = stored.pixel_array  # decodes (pylibjpeg, pydicom's RLE and deflate)
    assert pixels.shape == original.shape
    if name in LOSSLESS:
        np.testing.assert_array_equal(pixels.astype(np.int64), original.astype(np.int64))


def test_scp_takes_the_senders_first_choice_among_several(scp, files):
    """One presentation context offering big endian first, then the little endian ones (pynetdicom alone would
    take implicit little endian, its own first): the SCP takes big endian, and the sender sends it so."""
    from pynetdicom import AE
    from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]

    ct = pydicom.dcmread(files["explicit-be"]["path"])  # pynetdicom sends a data set in the syntax it holds
    ct.SOPInstanceUID = pydicom.uid.generate_uid()
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(CTImageStorage, ["1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assoc = ae.associate("127.0.0.1", scp.port, ae_title="MEDHDM")
    assert assoc.is_established
    (context,) = assoc.accepted_contexts
    status = assoc.send_c_store(ct)
    assoc.release()
    assert context.transfer_syntax == ["1.2.840.10008.1.2.2"] and status.Status == 0x0000
    stored = pydicom.dcmread(scp.spool.incoming / ct.StudyInstanceUID / f"{ct.SOPInstanceUID}.dcm")
    assert stored.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.2"
    np.testing.assert_array_equal(stored.pixel_array, pydicom.dcmread(files["explicit-be"]["original"]).pixel_array)


# --- retention -------------------------------------------------------------------------------------


def test_parse_keep():
    assert parse_keep("done") == 0 and parse_keep("forever") is None
    assert parse_keep("7d") == 7 * 86400 and parse_keep("12h") == 43200 and parse_keep("90s") == 90
    for bad in ("", "7", "7w", "-1d", "xd", "infd"):
        with pytest.raises(ValueError, match="^keep: "):
            parse_keep(bad)


def _decode_all(uid, study_dir, work_dir):
    """Stands in for explaining: reads every received instance's pixels (what explaining needs first)."""
    for path in sorted(study_dir.glob("*.dcm")):
        assert pydicom.dcmread(path).pixel_array.size
    return None


def _spooled(spool: Spool) -> int:
    """Received instances anywhere in the spool (incoming, claimed)."""
    return len(list(spool.root.glob("incoming/*/*.dcm"))) + len(list(spool.root.glob("studies/*/*.dcm")))


def test_keep_done_holds_the_spool_bounded_over_a_run_of_studies(tmp_path, files):
    """Ten studies of two instances, one after the other: after each, no received instance is left; the journal
    has every study done and removed, with its fingerprint."""
    spool = Spool(tmp_path / "spool")
    service = Service(spool, _decode_all, ServeSettings(tmp_path / "spool", stable_seconds=0, keep_seconds=0))
    source = pydicom.dcmread(files["jpeg-lossless-sv1"]["path"])
    most = 0
    for k in range(10):
        study = pydicom.uid.generate_uid()
        for _ in range(2):
            source.StudyInstanceUID, source.SOPInstanceUID = study, pydicom.uid.generate_uid()
            spool.store(study, source.SOPInstanceUID, _encoded(source))
        most = max(most, _spooled(spool))
        while service.step():
            most = max(most, _spooled(spool))
        assert _spooled(spool) == 0, f"study {k}: instances left in the spool"
        assert not list(spool.studies.iterdir())
    assert most == 2
    events = [(r["event"], r.get("instances")) for r in spool.journal.records() if r["event"] in ("done", "removed")]
    assert events == [("done", 2), ("removed", 2)] * 10


def _encoded(ds: pydicom.Dataset) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_keep_duration_deletes_only_studies_done_longer_ago(tmp_path, files):
    spool = Spool(tmp_path / "spool")
    settings = ServeSettings(tmp_path / "spool", stable_seconds=0, keep_seconds=parse_keep("7d"))
    service = Service(spool, _decode_all, settings)
    source = pydicom.dcmread(files["rle"]["path"])
    old, new = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for study in (old, new):
        source.StudyInstanceUID, source.SOPInstanceUID = study, pydicom.uid.generate_uid()
        spool.store(study, source.SOPInstanceUID, _encoded(source))
    while service.step():
        pass
    assert _spooled(spool) == 2  # both done, both within 7 days
    # the old study was done 8 days ago: its journal line says so
    lines = spool.journal.path.read_text().splitlines()
    import json
    import time

    eight_days_ago = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(time.time() - 8 * 86400))
    rewritten = []
    for line in lines:
        record = json.loads(line)
        if record["study"] == old and record["event"] == "done":
            record["time"] = eight_days_ago
        rewritten.append(json.dumps(record))
    spool.journal.path.write_text("\n".join(rewritten) + "\n")
    spool = Spool(tmp_path / "spool")  # read again (a restart)
    assert spool.expired(settings.keep_seconds) == [old]
    assert Service(spool, _decode_all, settings).prune() == 1
    assert not (spool.studies / old).exists() and len(list((spool.studies / new).glob("*.dcm"))) == 1
    assert [r["event"] for r in spool.journal.records() if r["study"] == old][-1] == "removed"
    assert spool.pending_studies() == []  # removed is not "to do again"


# --- as a subprocess, against a real Orthanc ----------------------------------------------------------


def test_serve_explains_jpeg_lossless_and_jpeg2000_studies_and_keeps_nothing_when_done(tmp_path):
    """storescu sends a JPEG Lossless SV1 study and a JPEG 2000 one (as dcmcjpeg and gdcmconv wrote them); each
    ends as exactly SC, PM, SEG and SR (one instance each) in Orthanc, and no received instance stays in the spool."""
    import subprocess

    from pacs_helpers import derived_series
    from syntax_fixtures import dcmtk
    from test_pacs_serve import Service
    from validators import tool

    from medhdm.data.bench_files import write_lesionbench
    from medhdm.pacs.orthanc import LocalOrthanc

    require_orthanc()
    manifest = write_lesionbench(tmp_path / "lb", n_cases=2, spatial_dims=2, seed=17)
    sources = [manifest.parent / f"case{i:03d}" / "image.dcm" for i in range(2)]
    sent = []
    for source, command, syntax in (
        (sources[0], [dcmtk("dcmcjpeg"), "+e1"], "1.2.840.10008.1.2.4.70"),
        (sources[1], [tool("gdcmconv"), "--j2k"], "1.2.840.10008.1.2.4.90"),
    ):
        path = tmp_path / f"{source.parent.name}.dcm"
        subprocess.run([*command, str(source), str(path)], check=True, capture_output=True)
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == syntax
        sent.append(path)
    spool = tmp_path / "spool"
    with LocalOrthanc(tmp_path / "orthanc") as pacs:
        service = Service(spool, pacs.dicomweb_url, stable=0.5, extra=("--keep", "done"))
        try:
            for path, option in zip(sent, ("-xs", "-xv")):
                run = storescu(service.port, [path], option, called="MEDHDM")
                assert run.returncode == 0, run.stdout + run.stderr
                study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
                service.wait_for(f"study {study}: done")
                service.wait_for(f"study {study}: 1 received instance(s) deleted")
        finally:
            assert service.stop() == 0, service.log
        for path in sent:
            study = pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID
            kinds = derived_series(pacs, study)
            assert {kind: len(series["datasets"]) for kind, series in kinds.items()} == {
                "sc": 1,
                "pm": 1,
                "seg": 1,
                "seg_findings": 1,
                "sr": 1,
            }, service.log
        assert pacs.instances_count() == 10  # the results of two studies, nothing else
    assert not list(spool.rglob("*.dcm")), list(spool.rglob("*.dcm"))
    events = [r["event"] for r in Spool(spool).journal.records()]
    assert events.count("done") == 2 and events.count("removed") == 2
