"""A multi-case ``medhdm explain`` killed (SIGKILL, SIGINT) while it writes: every case with a record
is complete, no file is half-written, and the same command again cleans up and finishes the rest
without redoing the finished cases."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medhdm.data.bench_files import write_lesionbench

N_CASES = 4


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("kill")
    manifest = write_lesionbench(root / "lb", n_cases=N_CASES, spatial_dims=2)
    return [manifest.parent / f"case{i:03d}" / "image.dcm" for i in range(N_CASES)]


def _command(images: list[Path], out: Path, *extra: str) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "medhdm.cli",
        "explain",
        "--method",
        "smoothgrad",
        "--intensity-range=-1000,0",
        "--out",
        str(out),
        *extra,
    ]
    for image in images:
        argv += ["--image", str(image)]
    return argv


def _env() -> dict[str, str]:
    return {**os.environ, "MEDHDM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def _maps(out: Path) -> list[Path]:
    """The published maps (not the temporaries of :func:`medhdm.io.atomic.atomic_write`, which start with a dot)."""
    return sorted(p for p in out.glob("*/*_saliency.nii.gz") if not p.name.startswith(".")) if out.exists() else []


def _records(out: Path) -> dict[str, int]:
    """The cases with a record (complete) and the records' modification times (ns)."""
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/record.json")} if out.exists() else {}


def _check_consistent(out: Path) -> int:
    """Every listed case's map loads whole; every map present loads whole; returns the cases listed."""
    listed = []
    if (out / "explanations.csv").exists():
        with open(out / "explanations.csv") as f:
            listed = list(csv.DictReader(f))
    for row in listed:
        assert Path(row["map"]).is_file(), row
    for path in _maps(out):
        data = np.asarray(nib.load(path).dataobj)  # a partial file would not decode
        assert data.shape[:2] == (96, 96) and np.isfinite(data).all()
    return len(listed)


def _default_sigint() -> None:
    """Ctrl-C as a terminal delivers it: a test runner started in the background (``nohup ... &``) ignores SIGINT,
    and its children would inherit that and run on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(("sig", "after_maps"), [(signal.SIGKILL, 1), (signal.SIGKILL, 2), (signal.SIGINT, 1)])
def test_killed_explain_leaves_complete_cases_and_the_next_run_finishes(images, tmp_path, sig, after_maps):
    out = tmp_path / "out"
    proc = subprocess.Popen(
        _command(images, out),
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_default_sigint,
    )
    deadline = time.monotonic() + 240
    while len(_maps(out)) < after_maps and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(sig)
    proc.wait(timeout=120)
    stderr = proc.stderr.read().decode()
    if sig == signal.SIGINT and proc.returncode != 0:
        assert proc.returncode == 130 and "interrupted" in stderr and "Traceback" not in stderr, stderr
        assert not list(out.glob(".tmp-*")), "an interrupted run removes its own temporaries"
    listed = _check_consistent(out)
    assert listed <= N_CASES
    finished = _records(out)
    for case in finished:  # a case with a record is complete: its map loads whole
        assert (out / case / f"{case}_saliency.nii.gz").is_file()
    # the same command again: it cleans up, skips the finished cases and finishes the others
    again = subprocess.run(_command(images, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    if finished:
        assert f"{len(finished)} of {N_CASES} cases are complete" in again.stdout, again.stdout
    assert _check_consistent(out) == N_CASES
    after = _records(out)
    assert len(after) == N_CASES and all(after[c] == t for c, t in finished.items()), (finished, after)
    assert not list(out.glob(".tmp-*")) and not list(out.glob("*/.tmp-*"))


def test_a_second_run_into_a_folder_being_written_fails_clearly(images, tmp_path):
    """While a run holds ``--out`` (here this process, through the same lock), another run exits 2 at once."""
    from medhdm.io.atomic import LockedFolder

    out = tmp_path / "out"
    with LockedFolder(out):
        second = subprocess.run(_command(images[:1], out), env=_env(), capture_output=True, text=True, timeout=300)
    assert second.returncode == 2 and "is locked" in second.stderr and str(out) in second.stderr, second.stderr
    assert not any(out.iterdir())
