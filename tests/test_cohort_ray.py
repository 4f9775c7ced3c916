"""The Ray engine on a local Ray cluster (one per module, 2 CPUs): the same maps as the local engine,
``evaluate``'s summary identical, a killed actor and a killed driver, every case done exactly once.

Skipped without Ray, except in CI (``MEDHDM_REQUIRE_VALIDATORS=1``), where Ray must be installed.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medhdm.cohort import EvaluateRecipe, ExplainRecipe, ModelRecipe, evaluate_cohort, explain_cohort
from medhdm.cohort.commands import make_engine
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.io.manifest import load_manifest
from medhdm.pipeline import InputSpec

REQUIRE_VALIDATORS = os.environ.get("MEDHDM_REQUIRE_VALIDATORS") == "1"
SPEC = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)
N_CASES = 8


@pytest.fixture(scope="module")
def ray():
    try:
        import ray
    except ImportError:
        if REQUIRE_VALIDATORS:
            pytest.fail("ray is required (MEDHDM_REQUIRE_VALIDATORS=1) but not installed")
        pytest.skip("ray not installed (pip install -e '.[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


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
    engine, _ = make_engine(recipe, "ray", workers=2)
    outcomes: list[dict] = []

    def kill_once(batch: list[dict]) -> None:
        if not outcomes:  # after the first batch: one actor dies, with or without a batch in flight
            ray.kill(engine.actors[0], no_restart=True)
        outcomes.extend(batch)

    result = explain_cohort(
        _entries(manifest), recipe, tmp_path / "out", batch_size=1, on_batch=kill_once, engine_object=engine
    )
    ids = [e["id"] for e in _entries(manifest)]
    assert engine.replaced >= 1
    assert sorted(o["case"] for o in outcomes) == ids  # each case reported once: done, or skipped when
    assert all(o["status"] in ("done", "skipped") for o in outcomes)  # the dead actor had finished it
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
