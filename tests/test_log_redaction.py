"""No patient name or ID reaches stdout, stderr or a log through a library's warning or log record.

The source has a distinctive name in every attribute of VR PN (ReferringPhysicianName of one
component, which makes highdicom warn quoting it) and distinctive IDs; the real commands run as
subprocesses and every output stream is searched for every planted string. ``medhdm pacs serve``
with ``--log-file`` is tested in ``tests/test_pacs_serve.py``.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pacs_helpers import leaked, plant_names

from medhdm.io.redact import REDACTED, Redactor

ROOT = Path(__file__).resolve().parents[1]

#: what highdicom's warning about a one-component person name says around the (redacted) value
HIGHDICOM_WARNING = f'The string "{REDACTED}" is unlikely to represent the intended person name'


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A LesionBench 2D image with planted names and IDs, a map for it, and the planted strings."""
    from medhdm.data.bench_files import write_lesionbench

    root = tmp_path_factory.mktemp("planted")
    manifest = write_lesionbench(root / "lb", n_cases=2, spatial_dims=2, seed=3)
    source = root / "study" / "image.dcm"
    strings = plant_names(manifest.parent / "case000" / "image.dcm", source)
    ds = pydicom.dcmread(source)
    np.save(root / "map.npy", np.random.default_rng(0).random((ds.Rows, ds.Columns)).astype(np.float32))
    return source, root / "map.npy", strings


def _run(*argv: str, **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "PYTHONPATH": str(ROOT), "MEDHDM_THREADS": "1", "OMP_NUM_THREADS": "1", **env}
    environment.pop("PYTHONWARNINGS", None)
    environment.pop("RAY_ADDRESS", None)  # --engine ray: a local cluster of its own
    return subprocess.run(
        [sys.executable, "-m", "medhdm.cli", *argv], env=environment, capture_output=True, text=True, timeout=600
    )


def _files(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden sets included), by relative path."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_deidentified_names_nothing_anywhere(planted, tmp_path):
    source, saliency, strings = planted
    out = tmp_path / "out"
    run = _run(
        "export", "--image", str(source), "--map", str(saliency), "--out", str(out), "--format", "sc,pm,seg",
        "--deidentify", MEDHDM_DEIDENTIFY_SALT="a-secret-salt",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert leaked(strings, stdout=run.stdout, stderr=run.stderr) == {}
    assert HIGHDICOM_WARNING in run.stderr  # the warning came, without the name
    files = _files(out)
    assert any(name.endswith("SEG.dcm") for name in files), files.keys()
    for name, data in files.items():  # de-identified: not in the objects either
        assert leaked(strings, **{name: data.decode("latin-1")}) == {}


def test_export_and_explain_keep_names_in_the_objects_not_in_the_streams(planted, tmp_path):
    source, saliency, strings = planted
    runs = {
        "export": _run(
            "export", "--image", str(source), "--map", str(saliency), "--out", str(tmp_path / "export"),
            "--format", "sc,pm,seg",
        ),
        "explain": _run(
            "explain", "--image", str(source), "--method", "gradientinput", "--intensity-range=-1000,0",
            "--export", "sc,pm,seg", "--out", str(tmp_path / "explain"),
        ),
    }  # fmt: skip
    for command, run in runs.items():
        assert run.returncode == 0, (command, run.stderr)
        assert leaked(strings, stdout=run.stdout, stderr=run.stderr) == {}, command
        assert HIGHDICOM_WARNING in run.stderr, (command, run.stderr)
    patient = str(pydicom.dcmread(source).PatientName.family_name)
    for folder in ("export", "explain"):
        files = _files(tmp_path / folder)
        objects = "".join(data.decode("latin-1") for name, data in files.items() if name.endswith(".dcm"))
        assert patient in objects  # not de-identified: the objects carry the names, as they should
        records = {name: data.decode("latin-1") for name, data in files.items() if not name.endswith(".dcm")}
        assert records and leaked(strings, **records) == {}  # csv, json, NIfTI, PNG: no name


def test_library_warnings_and_records_are_redacted_in_process(planted):
    """What every command installs: a warning from any module and any logger's record, whatever its handlers."""
    from medhdm.io.redact import install_redaction

    source, _, strings = planted
    install_redaction()
    ds = pydicom.dcmread(source)  # names and IDs are learnt as pydicom decodes them
    name, patient_id = str(ds.PerformingPhysicianName), str(ds.PatientID)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(logging.Formatter().format(record))  # type: ignore[method-assign]
    own = logging.getLogger("ray.test_only")  # a library logger with its own handler, as Ray's
    own.propagate = False
    warned = logging.getLogger("py.warnings")
    loggers = (own, logging.getLogger("highdicom"), logging.getLogger("pydicom"), warned)
    for logger in loggers:
        logger.addHandler(handler)
    try:
        own.warning("worker failed on %s (%s)", name, patient_id)
        logging.getLogger("highdicom.test_only").warning("value %s", name)
        try:
            raise ValueError(f"bad value {patient_id}")
        except ValueError:
            logging.getLogger("pydicom").exception("reading failed")
        with warnings.catch_warnings():  # pytest puts its own warning capture around each test: undo it here
            warnings.simplefilter("always")
            logging.captureWarnings(False)
            logging.captureWarnings(True)  # as a service's setup_logging leaves it
            warnings.warn(f"odd name {name}", UserWarning, stacklevel=1)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert seen[:2] == [f"worker failed on {REDACTED} ({REDACTED})", f"value {REDACTED}"]
    assert seen[2].startswith("reading failed\nTraceback") and f"ValueError: bad value {REDACTED}" in seen[2]
    assert len(seen) == 4 and f"odd name {REDACTED}" in seen[3] and not seen[3].endswith("\n"), seen
    printed = warnings.formatwarning(f"odd name {name}", UserWarning, "x.py", 1)  # how Python prints a warning
    assert printed == f"x.py:1: UserWarning: odd name {REDACTED}\n"
    assert leaked(strings, seen="".join(seen), printed=printed) == {}


def test_identifying_texts_reads_names_and_ids_at_any_depth_without_converting(planted):
    from medhdm.io.redact import identifying_texts, process_redactor

    source, _, strings = planted
    ds = pydicom.dcmread(source)
    texts = set(identifying_texts(ds))
    redactor = Redactor()
    redactor.add(*texts)
    assert [redactor.redact(f"<{text}>") for text in strings] == [f"<{REDACTED}>"] * len(strings)
    assert "ZqSeqPatientId" in texts  # in a sequence item
    assert process_redactor() is process_redactor()


def test_a_ray_workers_warnings_reach_rays_log_files_without_names(planted, tmp_path):
    """``medhdm explain --engine ray``: the Ray worker reads the planted image and warns (highdicom, about the
    one-component name) into Ray's own log files (``<RAY_TMPDIR>/session_*/logs``), which the worker writes
    itself; no planted string is in any file under the run's fresh Ray folder, nor on the driver's streams."""
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1":
            pytest.fail("ray is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    source, _, strings = planted
    ray_tmp = Path(tempfile.mkdtemp(prefix="mhray", dir="/tmp"))  # short: Ray's socket paths must stay short
    try:
        run = _run(
            "explain", "--image", str(source), "--method", "gradientinput", "--intensity-range=-1000,0",
            "--export", "sc,pm,seg", "--engine", "ray", "--workers", "1", "--out", str(tmp_path / "out"),
            RAY_TMPDIR=str(ray_tmp),
        )  # fmt: skip
        assert run.returncode == 0, run.stderr
        files = {
            str(path.relative_to(ray_tmp)): path.read_bytes().decode("latin-1")
            for path in ray_tmp.rglob("*")
            if path.is_file() and not path.is_symlink()
        }
        logs = [text for name, text in files.items() if "/logs/" in name]
        assert any("is unlikely to represent the intended person name" in text for text in logs), sorted(files)
        assert leaked(strings, stdout=run.stdout, stderr=run.stderr, **files) == {}
        assert any(HIGHDICOM_WARNING in text for text in logs)  # the worker's warning, without the name
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_a_name_component_that_names_an_attribute_is_kept_in_messages_the_whole_name_is_not():
    """``Anonymized^Patient`` (a placeholder name) must not erase "Patient ID" from error messages; the whole
    name and a real component (``Doe^John``: "John") are still removed."""
    redactor = Redactor()
    redactor.add("Anonymized^Patient", "Doe^John")
    text = "a.dcm: Patient ID differs from b.dcm; Image Orientation (Patient) is degenerate"
    assert redactor.redact(text) == text
    assert redactor.redact("name Anonymized^Patient, Doe John, John") == "name [redacted], [redacted], [redacted]"
