"""The Ray engine on a local Ray cluster (one per module, 2 CPUs): the same maps as the local engine,
``evaluate``'s summary identical, a killed actor and a killed driver, every case done exactly once;
a driver that started its own local cluster takes it along when killed; a bad ``--address``.

Skipped without Ray, except in CI (``MEDHDM_REQUIRE_VALIDATORS=1``), where Ray must be installed.
"""

from __future__ import annotations

import csv
import importlib.util
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medhdm.cohort import (
    CaseOutcome,
    CohortOptions,
    Engine,
    EvaluateRecipe,
    ExplainRecipe,
    ModelRecipe,
    evaluate_cohort,
    explain_cohort,
    make_engine,
)
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.io.manifest import load_manifest
from medhdm.pipeline import InputSpec

REQUIRE_VALIDATORS = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"
SPEC = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
N_CASES = 8


@pytest.fixture(scope="module")
def ray_module():
    """The ``ray`` module, without starting a cluster in this process."""
    try:
        import ray
    except ImportError:
        if REQUIRE_VALIDATORS:
            pytest.fail("ray is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    return ray


@pytest.fixture(scope="module")
def ray(ray_module):
    """The ``ray`` module with a local cluster started in this process (for the module's tests)."""
    ray_module.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray_module
    ray_module.shutdown()


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_lesionbench(tmp_path_factory.mktemp("ray") / "lb", n_cases=N_CASES, spatial_dims=2)


def _entries(manifest: Path, n: int = N_CASES) -> list[dict]:
    return [{"id": e["id"], "image": str(e["image"])} for e in load_manifest(manifest)][:n]


def _map(out: Path, case: str) -> np.ndarray:
    return np.asarray(nib.load(out / case / f"{case}_saliency.nii.gz").dataobj)


def _records(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("*/record.json")}


def test_ray_maps_equal_the_local_engine(ray, manifest, tmp_path):
    """HDM (steps=2) and Gradient x Input, batches of 2 on 2 workers: the maps of the local engine."""
    entries = _entries(manifest, 4)
    for method, steps, cases in (("hdm", 2, entries[:2]), ("gxi", None, entries)):
        recipe = ExplainRecipe(ModelRecipe(), SPEC, method, steps=steps)
        local = explain_cohort(cases, recipe, tmp_path / f"{method}-local", batch_size=2, progress=False)
        on_ray = explain_cohort(
            cases, recipe, tmp_path / f"{method}-ray", engine="ray", workers=2, batch_size=2, progress=False
        )
        assert sorted(on_ray.done) == local.done == [e["id"] for e in cases]
        for case in local.done:
            a, b = _map(tmp_path / f"{method}-local", case), _map(tmp_path / f"{method}-ray", case)
            np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
        rows = [(tmp_path / f"{method}-{e}" / "explanations.csv").read_text() for e in ("local", "ray")]
        assert rows[0].replace(f"{method}-local", "X") == rows[1].replace(f"{method}-ray", "X")


def test_ray_evaluate_summary_is_identical_to_the_local_engine(ray, manifest, tmp_path):
    entries = load_manifest(manifest)[:6]
    recipe = EvaluateRecipe(ModelRecipe(), SPEC, ("gxi", "gradcam"), curve_steps=16)
    _, local_rows = evaluate_cohort(entries, recipe, tmp_path / "local", progress=False)
    _, ray_rows = evaluate_cohort(entries, recipe, tmp_path / "ray", engine="ray", workers=2, progress=False)
    assert (tmp_path / "local" / "summary.csv").read_bytes() == (tmp_path / "ray" / "summary.csv").read_bytes()
    assert (tmp_path / "local" / "summary.json").read_bytes() == (tmp_path / "ray" / "summary.json").read_bytes()
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in local_rows]
    assert strip == [{k: v for k, v in r.items() if k != "seconds"} for r in ray_rows]
    assert (tmp_path / "ray" / "report.html").is_file()


def test_a_killed_actor_is_replaced_and_every_case_is_done_once(ray, manifest, tmp_path):
    recipe = ExplainRecipe(ModelRecipe(), SPEC, "gxi")
    engine = make_engine(recipe, CohortOptions(engine="ray", workers=2))
    assert isinstance(engine, Engine)
    outcomes: list[CaseOutcome] = []

    def kill_once(batch: list[CaseOutcome]) -> None:
        if not outcomes:  # after the first batch: one actor dies, with or without a batch in flight
            ray.kill(engine.actors[0], no_restart=True)
        outcomes.extend(batch)

    result = explain_cohort(
        _entries(manifest), recipe, tmp_path / "out", engine=engine, batch_size=1, on_batch=kill_once
    )
    ids = [e["id"] for e in _entries(manifest)]
    assert engine.replaced >= 1
    assert sorted(o.case for o in outcomes) == ids  # each case reported once: done, or skipped when
    assert all(o.status in ("done", "skipped") for o in outcomes)  # the dead actor had finished it
    assert sorted(result.done + result.skipped) == ids and not result.failures
    with open(tmp_path / "out" / "explanations.csv") as f:
        assert [r["case"] for r in csv.DictReader(f)] == ids
    assert sorted(_records(tmp_path / "out")) == ids


def test_a_killed_driver_is_resumed_by_the_same_command(ray, manifest, tmp_path):
    """``medhdm explain --engine ray`` killed (SIGKILL) after its first finished cases: the same command
    finishes the rest, and the cases finished before the kill keep their records (not redone)."""
    out = tmp_path / "out"
    argv = [
        sys.executable,
        "-m",
        "medhdm.cli",
        "explain",
        "--manifest",
        str(manifest),
        "--method",
        "smoothgrad",
        "--intensity-range=-1000,0",
        "--engine",
        "ray",
        "--address",
        ray.get_runtime_context().gcs_address,
        "--workers",
        "2",
        "--out",
        str(out),
    ]
    env = {**os.environ, "MEDHDM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while len(_records(out)) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    finished = _records(out)
    assert 2 <= len(finished) < N_CASES, "the driver was killed in the middle of the run"
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    after = _records(out)
    assert len(after) == N_CASES
    skipped = re.search(rf"(\d+) of {N_CASES} cases are complete for this configuration", again.stdout)
    assert skipped and int(skipped.group(1)) >= len(finished), again.stdout
    assert all(after[c] == t for c, t in finished.items()), "a case finished before the kill was redone"
    with open(out / "explanations.csv") as f:
        assert len(list(csv.DictReader(f))) == N_CASES


def _processes() -> dict[int, tuple[int, int, str]]:
    """Every live process (zombies left out): ``{pid: (parent pid, start time, command line)}``."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_bytes()
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        if fields[0] not in (b"Z", b"X"):
            table[int(name)] = (
                int(fields[1]),
                int(fields[19]),
                cmdline.replace(b"\0", b" ").decode(errors="replace").strip(),
            )
    return table


def _record_descendants(root: int, known: dict[int, tuple[int, str]]) -> None:
    """Add every live descendant of ``root`` to ``known`` (``{pid: (start time, command line)}``); a known
    process's command line is updated (a Ray worker renames itself when it becomes an actor)."""
    table = _processes()
    for pid, (start, _) in list(known.items()):
        if pid in table and table[pid][1] == start:
            known[pid] = (start, table[pid][2])
    grown = True
    while grown:
        grown = False
        for pid, (parent, start, cmdline) in table.items():
            if pid not in known and (parent == root or parent in known):
                known[pid] = (start, cmdline)
                grown = True


def _still_running(known: dict[int, tuple[int, str]]) -> dict[int, str]:
    table = _processes()
    return {pid: cmd for pid, (start, cmd) in known.items() if pid in table and table[pid][1] == start}


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads the process table in /proc (Linux)")
def test_a_killed_driver_takes_the_local_cluster_it_started_with_it(ray_module, manifest, tmp_path):
    """``medhdm explain --engine ray`` with no address starts a local cluster; SIGKILLed once its worker is up,
    every process of that cluster (raylet, GCS, the dashboard and runtime-env agents, the worker) is gone within
    30 s. The processes are told apart from other Ray clusters on this machine by being the driver's descendants
    (recorded while it runs), and the driver's Ray folder is a fresh one (``RAY_TMPDIR``)."""
    ray_tmp = Path(tempfile.mkdtemp(prefix="mhray", dir="/tmp"))  # short: Ray's socket paths must stay short
    argv = [
        sys.executable,
        "-m",
        "medhdm.cli",
        "explain",
        "--manifest",
        str(manifest),
        "--method",
        "hdm",
        "--steps",
        "100",  # seconds per case: the worker is seen at work
        "--intensity-range=-1000,0",
        "--engine",
        "ray",
        "--workers",
        "1",
        "--out",
        str(tmp_path / "out"),
    ]
    env = {
        **os.environ,
        "MEDHDM_THREADS": "1",
        "RAY_TMPDIR": str(ray_tmp),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    env.pop("RAY_ADDRESS", None)
    log = tmp_path / "driver.log"
    known: dict[int, tuple[int, str]] = {}
    with open(log, "w") as f:
        driver = subprocess.Popen(argv, env=env, stdout=f, stderr=subprocess.STDOUT)
    try:
        wanted = ("ray::DashboardAgent", "ray::RuntimeEnvAgent", "ray::_CohortActor")
        deadline = time.monotonic() + 240
        while driver.poll() is None and time.monotonic() < deadline:
            _record_descendants(driver.pid, known)
            if all(any(cmd.startswith(w) for _, cmd in known.values()) for w in wanted):
                break
            time.sleep(0.1)
        assert driver.poll() is None, f"the driver ended before its worker was up: {log.read_text()[-2000:]}"
        commands = [cmd for _, cmd in known.values()]
        assert all(any(cmd.startswith(w) for cmd in commands) for w in wanted), commands
        assert any("raylet" in cmd for cmd in commands) and any("gcs_server" in cmd for cmd in commands), commands
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _still_running(known) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = _still_running(known)
        assert not left, f"the killed driver's Ray processes still run after 30 s: {sorted(left.values())}"
    finally:  # never leave the processes this test started behind, whatever failed
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        for pid in _still_running(known):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.parametrize("address", ["ray://127.0.0.1:1", "127.0.0.1:1"])
def test_an_address_where_no_cluster_answers_is_one_clear_line(ray_module, manifest, tmp_path, capsys, address):
    """``--address ray://127.0.0.1:1`` or ``127.0.0.1:1`` (nothing listens there): exit 2 at once, one line
    naming ``--address``, the address and that no cluster answers; for ``ray://`` without the Ray client
    installed, also what to install."""
    from medhdm.cli import main

    argv = ["explain", "--manifest", str(manifest), "--method", "gxi", "--intensity-range=-1000,0"]
    started = time.monotonic()
    code = main([*argv, "--engine", "ray", "--address", address, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert time.monotonic() - started < 60  # Ray itself retries a silent GCS address for minutes
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert f"--address {address}: no Ray cluster answers there (127.0.0.1:1: " in err, err
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        assert 'a ray:// address needs the Ray client, which is not installed here (pip install "ray[client]"' in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
