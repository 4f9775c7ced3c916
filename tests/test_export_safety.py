"""Export is all or nothing: interrupted (SIGKILL, SIGINT) at every publication step, between
file writes and at the first names that become visible, run twice at once into one folder,
and refused cleanly on bad input.

Every interrupted or concurrent run is classified from what a reader of ``--out`` sees
(the files there, links followed): nothing, the complete old or new set, a part of one of
them without ``medhdm-export.json`` (a kill while the names change, completed by the next
run), or a mixed set, which must never happen; and no link in ``--out`` may ever dangle.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from medhdm.data.dicom_series import write_series
from medhdm.export import export
from medhdm.export import staging as staging_module
from medhdm.export.staging import (
    CURRENT,
    MANIFEST,
    SETS,
    STAGING_PREFIX,
    ExportFolder,
    OutputExistsError,
)
from medhdm.io import read_dicom
from medhdm.testing import ct_volume

FORK = multiprocessing.get_context("fork")
OLD_FORMATS = ["sc", "pm"]
NEW_FORMATS = ["sc", "seg", "nifti", "png"]  # 3 SC + SEG + NIfTI + 3 PNG = 8 files, 4 names new
SIGINT_STEPS = ["staged 1", "manifest", "set", "unlinked 1", "swapped", "linked 1", "done"]
COUNTS: dict[str, int] = {}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    """Every entry below ``folder`` (links as links), with file hashes: for "nothing else changed"."""
    out = {}
    for p in sorted(folder.rglob("*")):
        rel = str(p.relative_to(folder))
        out[rel] = f"-> {os.readlink(p)}" if p.is_symlink() else ("dir" if p.is_dir() else _sha(p))
    return out


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-slice series (tiny: CT_small's 128 x 128) and two different maps on its grid."""
    root = tmp_path_factory.mktemp("study")
    template, volume = ct_volume(depth=3)
    write_series(template, volume, root / "series", file_order_seed=3)
    src = read_dicom(root / "series")
    d, h, w = src.pixels.shape
    z, y, x = np.meshgrid(np.arange(d), np.arange(h), np.arange(w), indexing="ij")
    old = np.exp(-((y - 40) ** 2 + (x - 80) ** 2) / 400.0) * np.ones((d, 1, 1))
    new = np.exp(-((y - 90) ** 2 + (x - 30) ** 2) / 300.0) * (z + 1) / d
    hashes = {p.name: _sha(p) for p in (root / "series").iterdir()}
    return {"folder": root / "series", "source": src, "old": old, "new": new, "hashes": hashes}


def visible(out: Path) -> dict[str, str]:
    """What a reader of ``out`` sees: its non-hidden files (links followed) and their hashes."""
    if not out.is_dir():
        return {}
    return {p.name: _sha(p) for p in out.iterdir() if not p.name.startswith(".") and p.is_file()}


def dangling(out: Path) -> list[str]:
    """The links in ``out`` (hidden ones included) that point at nothing."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.is_symlink() and not p.exists())


def sets_shown(out: Path) -> set[Path]:
    """The folders the visible names resolve into (one at most, or the names mix two sets)."""
    if not out.is_dir():
        return set()
    return {p.resolve().parent for p in out.iterdir() if not p.name.startswith(".") and p.is_file()}


def classify(out: Path, old: dict[str, str], new_names: set[str]) -> str:
    """What ``out`` shows: ``"nothing"``, ``"old"`` (the complete old set), ``"new"`` (the complete
    new set), ``"old-part"`` / ``"new-part"`` (a part of one of them, without the manifest) or ``"mixed"``.

    Each run's DICOM files differ from every other run's (new UIDs), so a file of another
    run than the manifest's shows as a hash that does not match the manifest.
    """
    seen = visible(out)
    if not seen:
        return "nothing"
    if seen == old:
        return "old"
    if len(sets_shown(out)) != 1:
        return "mixed"
    current = out / CURRENT / MANIFEST
    files = json.loads(current.read_text())["files"] if current.is_file() else {}
    if set(files) == new_names and all(files[n]["sha256"] == seen[n] for n in seen if n != MANIFEST):
        if set(seen) == new_names | {MANIFEST}:  # the set's names; each file as that set's manifest has it
            return "new"
        if MANIFEST not in seen:
            return "new-part"
    if old and MANIFEST not in seen and all(old.get(n) == h for n, h in seen.items()):
        return "old-part"
    return "mixed"


def leftovers_are_only_ours(out: Path) -> None:
    """Besides the visible set: only medhdm's own bookkeeping, no stray files of any other kind, no dangling link."""
    if not out.exists():
        return
    assert dangling(out) == []
    for p in out.iterdir():
        if p.name.startswith("."):
            assert p.name in (CURRENT, SETS) or p.name.startswith((STAGING_PREFIX, f"{CURRENT}.tmp-")), p
        else:
            assert p.is_symlink() and os.readlink(p) == f"{CURRENT}/{p.name}", p


def recovered(out: Path) -> None:
    """What the next run into ``out`` does first, under the lock: finish what an interrupted run left."""
    with ExportFolder(out, overwrite=True):
        pass


def new_names(study) -> set[str]:
    d = len(study["source"].datasets)
    return (
        {f"SC_{k:04d}.dcm" for k in range(1, d + 1)}
        | {f"overlay_{k:04d}.png" for k in range(1, d + 1)}
        | {"SEG.dcm", "saliency.nii.gz"}
    )


def _run_export(study, out, formats, overwrite, step, ready, go=None, error_file=None):
    """In a forked child: export, stopping at ``step`` (signalling ``ready``) until killed or ``go`` exists."""

    def checkpoint(name: str) -> None:
        if name == step:
            Path(ready).write_text(name)
            while go is None or not Path(go).exists():
                time.sleep(0.01)

    staging_module._checkpoint = checkpoint
    # Ctrl-C as a terminal delivers it: the forked child inherits the test process's signal mask and handlers, and
    # a test runner started in the background (`nohup ... &`, some CI runners) ignores SIGINT from its start
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    signal.signal(signal.SIGINT, signal.default_int_handler)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the interrupted child's KeyboardInterrupt traceback is expected noise
    try:
        export(study["source"], study["new"], out, formats, overwrite=overwrite, method="NEW")
    except Exception as err:  # noqa: BLE001 (reported to the parent)
        if error_file:
            Path(error_file).write_text(f"{type(err).__name__}: {err}")
        os._exit(2)


def _wait_for(path: Path, proc, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), f"the export ended (exit {proc.exitcode}) before reaching its checkpoint"
        assert time.monotonic() < deadline, "the export never reached its checkpoint"
        time.sleep(0.005)


def _count(key: str) -> None:
    COUNTS[key] = COUNTS.get(key, 0) + 1


def _steps(study, tmp_path: Path, existing: bool) -> list[str]:
    """Every checkpoint an uninterrupted run passes (into a new folder, or over an old export of other names)."""
    steps: list[str] = []
    out = tmp_path / "steps" / ("over" if existing else "new")
    if existing:
        export(study["source"], study["old"], out, OLD_FORMATS, method="OLD")
    original = staging_module._checkpoint
    staging_module._checkpoint = steps.append
    try:
        export(study["source"], study["new"], out, NEW_FORMATS, overwrite=existing, method="NEW")
    finally:
        staging_module._checkpoint = original
    return steps


def _expected(steps: list[str], existing: bool, complete: bool) -> list[str]:
    """What ``out`` shows after a kill at each step; ``complete``: after the run's or the next run's recovery."""
    swap, full = steps.index("swapped"), steps.index("done") - 1  # the last link added is the manifest's
    before = "old" if existing else "nothing"
    states = []
    for i, step in enumerate(steps):
        if complete:
            states.append(before if i < swap else "new")
        elif i < swap:
            states.append("old-part" if step.startswith("unlinked") else before)
        elif i < full:
            states.append("new-part" if existing or i > swap else "nothing")
        else:
            states.append("new")
    return states


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize("existing", [False, True], ids=["new-folder", "over-old-export"])
def test_interrupted_export_leaves_the_old_or_the_new_set(study, tmp_path, sig, existing):
    """Stopped at every checkpoint of publication (SIGINT: at some): no link ever dangles, the visible
    names belong to one set, and after the next run's recovery the folder shows the complete old or new set."""
    area = tmp_path / "area"
    out = area / "out"
    area.mkdir()
    template = tmp_path / "template"
    old: dict[str, str] = {}
    if existing:  # an export of other names (sc,pm), copied afresh before each interrupted run
        export(study["source"], study["old"], template, OLD_FORMATS, method="OLD")
        old = visible(template)
        assert len(old) == 3 + 1 + 1  # 3 SC, PM, manifest
    names = new_names(study)
    steps = _steps(study, tmp_path, existing)
    assert [s for s in steps if s.startswith("unlinked")] == (["unlinked 1", "unlinked 2"] if existing else [])
    assert steps[-1] == "done" and steps[-2] == f"linked {len(names) + 1 - (3 if existing else 0)}"
    chosen = steps if sig == signal.SIGKILL else [s for s in steps if s in SIGINT_STEPS]
    results, complete = [], []
    for step in chosen:
        if out.exists():
            shutil.rmtree(out)
        if existing:
            shutil.copytree(template, out, symlinks=True)
        ready = tmp_path / f"ready-{step.replace(' ', '')}"
        proc = FORK.Process(target=_run_export, args=(study, out, NEW_FORMATS, existing, step, ready))
        proc.start()
        _wait_for(ready, proc)
        os.kill(proc.pid, sig)
        proc.join(30)
        if proc.is_alive():  # never leave a child behind: pytest would wait for it at exit
            proc.kill()
            proc.join()
            pytest.fail(f"the export child ignored {sig.name} at step {step!r}")
        assert proc.exitcode == (-9 if sig == signal.SIGKILL else 1)
        assert dangling(out) == [], step
        assert len(sets_shown(out)) <= 1, step
        state = classify(out, old, names)
        results.append(state)
        _count(f"{sig.name} runs")
        _count(f"{sig.name} {state}")
        leftovers_are_only_ours(out)
        assert sorted(p.name for p in area.iterdir()) in ([], ["out"])  # nothing outside --out
        if sig == signal.SIGINT and not out.exists():  # it created the folder and removed it again, empty
            assert state == "nothing" and not existing
        elif sig == signal.SIGINT:  # the run cleaned up after itself: no staging, no stray set, no dangling link
            assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
            assert all(p.is_file() for p in out.iterdir() if not p.name.startswith("."))
            assert len(list((out / SETS).iterdir()) if (out / SETS).exists() else []) == (state != "nothing")
        recovered(out)  # the next run's first move, under the lock
        assert dangling(out) == [], step
        complete.append(classify(out, old, names))
        leftovers_are_only_ours(out)
        assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
        assert len(list((out / SETS).iterdir()) if (out / SETS).exists() else []) == (complete[-1] != "nothing")
    assert "mixed" not in results, list(zip(chosen, results))
    # Killed before the swap: the old set (a part of it while its names go); at or after it: the new one (a part of
    # it while its names come), the manifest the last name to appear. The next run completes the set.
    at_kill = dict(zip(steps, _expected(steps, existing, complete=sig == signal.SIGINT)))  # SIGINT: it recovers
    assert results == [at_kill[s] for s in chosen], list(zip(chosen, results))
    after = dict(zip(steps, _expected(steps, existing, complete=True)))
    assert complete == [after[s] for s in chosen], list(zip(chosen, complete))
    # A final, uninterrupted run publishes one complete set.
    export(study["source"], study["new"], out, NEW_FORMATS, overwrite=True)
    assert classify(out, old, names) == "new"
    assert not [p for p in out.iterdir() if p.name.startswith(STAGING_PREFIX)]
    assert len(list((out / SETS).iterdir())) == 1
    assert all(p.is_file() for p in out.iterdir() if not p.name.startswith("."))
    assert {p.name: _sha(p) for p in study["folder"].iterdir()} == study["hashes"]


def _staged_count(out: Path) -> int:
    try:
        return sum(
            1
            for d in out.iterdir()
            if d.name.startswith(STAGING_PREFIX)
            for p in d.iterdir()
            if not p.name.startswith(".")
        )
    except FileNotFoundError:  # renamed into the sets in between
        return 1 << 30


def test_kills_between_file_writes_without_a_checkpoint(study, tmp_path):
    """SIGKILL at the moment the staging folder holds k files (polled, not arranged)."""
    area = tmp_path / "area"
    out = area / "out"
    area.mkdir()
    export(study["source"], study["old"], out, OLD_FORMATS, method="OLD")
    old = visible(out)
    names = new_names(study)
    states = []
    for k in (1, 2, 4, 6, 8):
        proc = FORK.Process(target=_run_export, args=(study, out, NEW_FORMATS, True, None, tmp_path / "x"))
        proc.start()
        deadline = time.monotonic() + 60
        while proc.is_alive() and time.monotonic() < deadline:
            if _staged_count(out) >= k:
                break
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
        state = classify(out, old, names)
        states.append(state)
        _count("SIGKILL runs")
        _count(f"SIGKILL {state}")
        leftovers_are_only_ours(out)
        recovered(out)
        assert classify(out, old, names) in ("old", "new")
        old = visible(out)
    assert "mixed" not in states, states
    assert sorted(p.name for p in area.iterdir()) == ["out"]


def _kill_when(out: Path, proc, ready, delay: float) -> list[str]:
    """SIGKILL ``proc`` ``delay`` seconds after ``ready(visible names)`` first holds (polled as fast as
    possible); the visible names at that moment ([] if the run ended first)."""
    deadline = time.monotonic() + 60
    seen: list[str] = []
    while proc.is_alive() and time.monotonic() < deadline:
        try:
            seen = [n for n in os.listdir(out) if not n.startswith(".")]
        except FileNotFoundError:
            seen = []
        if ready(seen):
            if delay:
                time.sleep(delay)
            break
    try:
        os.kill(proc.pid, signal.SIGKILL)
    except ProcessLookupError:  # it ended (and was reaped) first
        pass
    proc.join(30)
    return seen if proc.exitcode == -signal.SIGKILL else []


def _export_argv(study, tmp_path: Path, out: Path, formats: list[str], *extra: str) -> list[str]:
    np.save(tmp_path / "new.npy", study["new"])
    argv = ["export", "--image", str(study["folder"]), "--map", str(tmp_path / "new.npy"), "--out", str(out)]
    return [*argv, "--format", ",".join(formats), "--method", "NEW", *extra]


def _check_after_kill(out: Path, old: dict[str, str], names: set[str], allowed: set[str]) -> str:
    assert dangling(out) == [], sorted(os.listdir(out))
    assert len(sets_shown(out)) <= 1  # the visible names resolve into one set
    state = classify(out, old, names)
    assert state in allowed, (state, sorted(os.listdir(out)))
    leftovers_are_only_ours(out)
    _count("SIGKILL runs")
    _count(f"SIGKILL {state}")
    return state


def test_first_export_killed_as_its_names_appear_leaves_no_dangling_link(study, tmp_path, capsys):
    """``medhdm export`` into an empty folder, SIGKILLed as soon as its first (then its k-th) visible name
    appears, or a moment later: never a dangling link, the visible names one set's; the same command run again
    leaves the complete set (it publishes its own, or finds the killed run's set committed and completes it)."""
    from medhdm.cli import main

    names = new_names(study)
    argv = _export_argv(study, tmp_path, tmp_path / "warm", NEW_FORMATS)
    assert main(argv) == 0  # the parent imports what an export needs once; the forked children inherit it
    timings = [(1, 0.0)] * 6 + [(1, d) for d in (1e-4, 3e-4, 1e-3, 3e-3)] + [(k, 0.0) for k in range(2, len(names) + 1)]
    killed = 0
    for i, (k, delay) in enumerate(timings):
        out = tmp_path / f"out{i}"
        out.mkdir()  # empty
        argv = _export_argv(study, tmp_path, out, NEW_FORMATS)
        proc = FORK.Process(target=_cli_child, args=(argv, tmp_path / "child.log"))
        proc.start()
        seen = _kill_when(out, proc, lambda names_seen, k=k: len(names_seen) >= k, delay)
        killed += bool(seen)
        _check_after_kill(out, {}, names, {"nothing", "new-part", "new"})
        capsys.readouterr()
        code = main(argv)  # the same command again
        err = capsys.readouterr().err
        assert code == 0 or (code == 2 and "already holds a medhdm export" in err), err
        assert classify(out, {}, names) == "new"
        leftovers_are_only_ours(out)
    assert killed >= len(timings) // 2, f"only {killed} of {len(timings)} runs were killed with names visible"


def test_overwrite_with_other_names_killed_as_the_names_change_leaves_no_dangling_link(study, tmp_path, capsys):
    """``medhdm export --overwrite`` of an export of other names (sc,pm -> sc,seg,nifti,png), SIGKILLed when the
    visible names first change (then at the k-th change), or a moment later: never a dangling link, never two sets;
    the command run again leaves the complete new set."""
    from medhdm.cli import main

    names = new_names(study)
    template = tmp_path / "template"
    export(study["source"], study["old"], template, OLD_FORMATS, method="OLD")
    old = visible(template)
    timings = [(1, 0.0)] * 4 + [(1, d) for d in (1e-4, 3e-4, 1e-3, 3e-3)] + [(k, 0.0) for k in (2, 3, 4, 6)]
    changed = 0
    for i, (k, delay) in enumerate(timings):
        out = tmp_path / f"out{i}"
        shutil.copytree(template, out, symlinks=True)
        argv = _export_argv(study, tmp_path, out, NEW_FORMATS, "--overwrite")
        proc = FORK.Process(target=_cli_child, args=(argv, tmp_path / "child.log"))
        proc.start()
        listings: list[list[str]] = [sorted(old)]

        def ready(seen: list[str], k=k, listings=listings) -> bool:
            if sorted(seen) != listings[-1]:
                listings.append(sorted(seen))
            return len(listings) > k

        seen = _kill_when(out, proc, ready, delay)
        changed += bool(seen)
        _check_after_kill(out, old, names, {"old", "old-part", "new-part", "new"})
        capsys.readouterr()
        assert main(argv) == 0, capsys.readouterr().err
        assert classify(out, old, names) == "new"
        leftovers_are_only_ours(out)
    assert changed >= len(timings) // 2, f"only {changed} of {len(timings)} runs were killed as the names changed"


def _cli_child(argv, log):
    from medhdm.cli import main

    with open(log, "w") as f:
        os.dup2(f.fileno(), 2)
        os.dup2(f.fileno(), 1)
        sys.stdout = sys.stderr = f  # pytest's capture objects, inherited by the fork, would swallow the message
        code = main(argv)
        f.flush()
    os._exit(code)


def test_a_second_run_into_a_locked_folder_fails_clearly(study, tmp_path):
    """Run A holds the folder (stopped after its first file); run B, through the CLI, fails at once."""
    area = tmp_path / "area"
    out = area / "out"
    area.mkdir()
    np.save(tmp_path / "map.npy", study["old"])
    ready, go = tmp_path / "ready", tmp_path / "go"
    a = FORK.Process(target=_run_export, args=(study, out, NEW_FORMATS, False, "staged 1", ready, go))
    a.start()
    try:
        _second_runs_are_refused(study, tmp_path, out, a, ready)
    finally:  # never leave run A waiting, whatever failed
        go.write_text("go")
    a.join(60)
    assert a.exitcode == 0
    assert classify(out, {}, new_names(study)) == "new"
    _count("concurrent runs")
    _count("concurrent new")
    assert sorted(p.name for p in area.iterdir()) == ["out"]
    assert {p.name: _sha(p) for p in study["folder"].iterdir()} == study["hashes"]


def _second_runs_are_refused(study, tmp_path, out, a, ready) -> None:
    _wait_for(ready, a)
    for extra in ([], ["--overwrite"]):
        b = FORK.Process(
            target=_cli_child,
            args=(
                [
                    "export",
                    "--image",
                    str(study["folder"]),
                    "--map",
                    str(tmp_path / "map.npy"),
                    "--out",
                    str(out),
                    "--format",
                    "pm",
                    *extra,
                ],
                tmp_path / "b.log",
            ),
        )
        b.start()
        b.join(60)
        message = (tmp_path / "b.log").read_text()
        assert b.exitcode == 2, message
        assert f"out: {out} is locked" in message and "Traceback" not in message
        _count("concurrent runs")
        _count("concurrent refused")


@pytest.mark.parametrize("overwrite", [False, True], ids=["plain", "overwrite"])
def test_two_exports_started_together(study, tmp_path, overwrite):
    """Both run to their end: each either publishes a complete set or is refused (exit 2); never a mix."""
    np.save(tmp_path / "a.npy", study["old"])
    np.save(tmp_path / "b.npy", study["new"])
    for round_ in range(3):
        out = tmp_path / f"out{round_}"
        procs = []
        for name, formats in (("a", "sc,pm"), ("b", "sc,seg,nifti,png")):
            argv = [
                "export",
                "--image",
                str(study["folder"]),
                "--map",
                str(tmp_path / f"{name}.npy"),
                "--out",
                str(out),
                "--format",
                formats,
                "--method",
                name,
                *(["--overwrite"] if overwrite else []),
            ]
            procs.append((FORK.Process(target=_cli_child, args=(argv, tmp_path / f"{name}{round_}.log")), name))
        for proc, _ in procs:
            proc.start()
        for proc, _ in procs:
            proc.join(120)
        codes = {name: proc.exitcode for proc, name in procs}
        assert set(codes.values()) <= {0, 2}, codes
        assert 0 in codes.values()
        if not overwrite:
            assert sorted(codes.values()) == [0, 2], codes  # never both: one is refused
        for name, code in codes.items():
            message = (tmp_path / f"{name}{round_}.log").read_text()
            assert "Traceback" not in message
            if code == 2:
                assert str(out) in message and ("is locked" in message or "already holds" in message), message
        seen = visible(out)
        manifest = json.loads((out / MANIFEST).read_text())
        winner = manifest["method"]
        assert codes[winner] == 0
        assert set(seen) == set(manifest["files"]) | {MANIFEST}
        assert all(manifest["files"][n]["sha256"] == seen[n] for n in manifest["files"])
        _count("concurrent runs")
        _count("concurrent runs")
        _count("concurrent complete set")
        leftovers_are_only_ours(out)
        assert len(list((out / SETS).iterdir())) == 1


def test_an_existing_export_is_kept_unless_overwrite(study, tmp_path, capsys):
    from medhdm.cli import main

    out = tmp_path / "area" / "out"
    export(study["source"], study["old"], out, OLD_FORMATS)
    before = _tree(tmp_path / "area")
    np.save(tmp_path / "map.npy", study["new"])
    argv = ["export", "--image", str(study["folder"]), "--map", str(tmp_path / "map.npy"), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"out: {out} already holds a medhdm export" in err and "--overwrite" in err
    assert _tree(tmp_path / "area") == before
    with pytest.raises(OutputExistsError, match="already holds"):
        export(study["source"], study["new"], out, ["seg"])
    assert _tree(tmp_path / "area") == before
    assert main([*argv, "--format", "seg", "--overwrite"]) == 0
    assert sorted(visible(out)) == sorted([MANIFEST, "SEG.dcm"])  # the old set is gone as a whole
    assert {p.name: _sha(p) for p in study["folder"].iterdir()} == study["hashes"]


def test_a_failing_run_keeps_the_finished_export_in_its_folder(study, tmp_path, monkeypatch):
    """The reported clean-up bug: a failed run must not delete another run's finished export."""
    import pydicom

    out = tmp_path / "area" / "out"
    export(study["source"], study["old"], out, OLD_FORMATS)
    before = _tree(tmp_path / "area")
    calls = {"n": 0}
    original = pydicom.Dataset.save_as

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pydicom.Dataset, "save_as", failing_save)
    with pytest.raises(OSError, match="No space left"):
        export(study["source"], study["new"], out, NEW_FORMATS, overwrite=True)
    assert _tree(tmp_path / "area") == before
    fresh = tmp_path / "area" / "fresh" / "deeper"
    calls["n"] = 0
    with pytest.raises(OSError, match="No space left"):
        export(study["source"], study["new"], fresh, NEW_FORMATS)
    assert _tree(tmp_path / "area") == before  # the folders this run created are gone again


def test_a_foreign_file_with_an_output_name_is_never_replaced(study, tmp_path, capsys):
    from medhdm.cli import main

    out = tmp_path / "area" / "out"
    out.mkdir(parents=True)
    (out / "PM.dcm").write_text("someone else's")
    before = _tree(tmp_path / "area")
    np.save(tmp_path / "map.npy", study["new"])
    for extra in ([], ["--overwrite"]):
        rc = main(
            [
                "export",
                "--image",
                str(study["folder"]),
                "--map",
                str(tmp_path / "map.npy"),
                "--out",
                str(out),
                "--format",
                "sc,pm",
                *extra,
            ]
        )
        assert rc == 2
        assert f"out: {out / 'PM.dcm'} exists and is not part of a medhdm export" in capsys.readouterr().err
        assert _tree(tmp_path / "area") == before


def _error_cases(tmp_path: Path, study) -> list[tuple[list[str], dict, str]]:
    """(arguments after ``export``, environment, the text the error must hold)."""
    series, good = str(study["folder"]), str(tmp_path / "map.npy")
    out = tmp_path / "area" / "out"
    blocker = tmp_path / "area" / "a_file"
    empty_salt = tmp_path / "area" / "salt_empty"
    return [
        # formats and options are checked before the (missing) map is read
        (
            ["--image", series, "--map", str(tmp_path / "missing.npy"), "--out", str(out), "--format", "sc,jpeg"],
            {},
            "formats: expected some of",
        ),
        (
            ["--image", series, "--map", str(tmp_path / "missing.npy"), "--out", str(out), "--format", "sc,sc"],
            {},
            "names a format twice",
        ),
        (
            ["--image", series, "--map", str(tmp_path / "missing.npy"), "--out", str(out), "--window-preset", "x"],
            {},
            "window preset",
        ),
        (["--image", series, "--map", str(tmp_path / "missing.npy"), "--out", str(out), "--alpha", "3"], {}, "alpha"),
        (
            ["--image", series, "--map", str(tmp_path / "missing.npy"), "--out", str(out), "--seg-threshold", "0"],
            {},
            "--seg-threshold: expected a value in (0, 1]",
        ),
        (["--image", series, "--map", good, "--out", str(blocker)], {}, f"out: {blocker} exists and is not a folder"),
        (
            ["--image", series, "--map", good, "--out", str(blocker / "sub")],
            {},
            f"out: cannot create {blocker / 'sub'}",
        ),
        (
            ["--image", series, "--map", good, "--out", str(out), "--deidentify"],
            {},
            "--deidentify: set MEDHDM_DEIDENTIFY_SALT",
        ),
        (
            ["--image", series, "--map", good, "--out", str(out), "--deidentify-salt-file", str(tmp_path / "nosalt")],
            {},
            f"--deidentify-salt-file: cannot read {tmp_path / 'nosalt'}",
        ),
        (
            ["--image", series, "--map", good, "--out", str(out), "--deidentify-salt-file", str(empty_salt)],
            {},
            f"--deidentify-salt-file: {empty_salt} is empty",
        ),
        (["--image", series, "--map", good, "--out", str(out), "--retain-dates"], {}, "--retain-dates: only with"),
        (
            ["--image", series, "--map", good, "--out", str(study["folder"] / "maps")],
            {},
            "inside the source series folder",
        ),
    ]


def test_bad_export_arguments_exit_2_and_touch_nothing(study, tmp_path, capsys, monkeypatch):
    from medhdm.cli import main

    np.save(tmp_path / "map.npy", study["new"])
    (tmp_path / "area").mkdir()
    (tmp_path / "area" / "a_file").write_text("x")
    (tmp_path / "area" / "salt_empty").write_text("\n")
    monkeypatch.delenv("MEDHDM_DEIDENTIFY_SALT", raising=False)
    before = _tree(tmp_path / "area")
    for argv, env, text in _error_cases(tmp_path, study):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        rc = main(["export", *argv])
        err = capsys.readouterr().err
        assert rc == 2, (argv, err)
        assert text in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)
        assert _tree(tmp_path / "area") == before, argv
        assert {p.name: _sha(p) for p in study["folder"].iterdir()} == study["hashes"], argv


def test_salt_from_the_environment_or_a_file_gives_the_same_objects(study, tmp_path, monkeypatch):
    import pydicom

    from medhdm.cli import main
    from medhdm.export.deidentify import pseudonym

    np.save(tmp_path / "map.npy", study["new"])
    (tmp_path / "salt").write_text("s3cret\n")
    base = ["export", "--image", str(study["folder"]), "--map", str(tmp_path / "map.npy"), "--format", "pm"]
    monkeypatch.setenv("MEDHDM_DEIDENTIFY_SALT", "s3cret")
    assert main([*base, "--out", str(tmp_path / "env"), "--deidentify"]) == 0
    monkeypatch.delenv("MEDHDM_DEIDENTIFY_SALT")
    assert main([*base, "--out", str(tmp_path / "file"), "--deidentify-salt-file", str(tmp_path / "salt")]) == 0
    a, b = pydicom.dcmread(tmp_path / "env" / "PM.dcm"), pydicom.dcmread(tmp_path / "file" / "PM.dcm")
    expected = pseudonym(study["source"].first.PatientID, "s3cret")
    assert a.PatientID == b.PatientID == expected
    assert a.StudyInstanceUID == b.StudyInstanceUID != study["source"].first.StudyInstanceUID


def test_zz_report_counts():
    """Prints the kill and concurrency counts of this module's runs (``pytest -s``)."""
    if not COUNTS:
        pytest.skip("run with the whole module to get the counts")
    print("\nexport safety counts:", json.dumps(COUNTS, sort_keys=True), file=sys.stderr)
    assert not any(key.endswith("mixed") for key in COUNTS), COUNTS
