"""The cohort driver on the local engine: batches equal one case at a time, an out-of-memory batch is
split and completes, a corrupt case is listed in failures.csv while the others are done, and a
re-run resumes. (The Ray engine: tests/test_cohort_ray.py.)"""

from __future__ import annotations

import csv
import json
import os
import re
import threading
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

import medhdm
from medhdm.cli import main
from medhdm.cohort import (
    CaseOutcome,
    CohortFailed,
    CohortOptions,
    Engine,
    EvaluateRecipe,
    ExplainRecipe,
    LocalEngine,
    ModelRecipe,
    evaluate_cohort,
    explain_cohort,
    make_engine,
)
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.io.manifest import load_manifest
from medhdm.models.identity import configuration_hash
from medhdm.pipeline import InputSpec

N_CASES = 6
SPEC = InputSpec((96, 96), intensity_range=LESIONBENCH_INTENSITY_RANGE)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return write_lesionbench(tmp_path_factory.mktemp("cohort") / "lb", n_cases=N_CASES, spatial_dims=2)


def _entries(manifest: Path) -> list[dict]:
    return [{"id": e["id"], "image": str(e["image"])} for e in load_manifest(manifest)]


def _maps(out: Path, ids) -> dict[str, np.ndarray]:
    return {i: np.asarray(nib.load(out / i / f"{i}_saliency.nii.gz").dataobj) for i in ids}


def test_batches_of_cases_equal_one_case_at_a_time_and_a_rerun_skips_them(manifest, tmp_path):
    """Gradient x Input on 6 cases: batch size 4 (batches of 4 and 2) gives the maps of batch size 1.

    CPU kernels differ with the batch size at float precision: equal within 1e-5 here (the
    explainers' contract, tests/test_explain_contract.py, allows 1e-3 for optimised masks)."""
    recipe = ExplainRecipe(ModelRecipe(), SPEC, "gxi")
    entries = _entries(manifest)
    one = explain_cohort(entries, recipe, tmp_path / "one", batch_size=1, progress=False)
    four = explain_cohort(entries, recipe, tmp_path / "four", batch_size=4, progress=False)
    assert one.done == four.done == [e["id"] for e in entries]
    ids = one.done
    a, b = _maps(tmp_path / "one", ids), _maps(tmp_path / "four", ids)
    for i in ids:
        np.testing.assert_allclose(a[i], b[i], atol=1e-5, rtol=0)
    assert max(float(a[i].max()) for i in ids) > 0.5  # real maps, not empty ones
    mtimes = {i: (tmp_path / "four" / i / "record.json").stat().st_mtime_ns for i in ids}
    again = explain_cohort(entries, recipe, tmp_path / "four", batch_size=4, progress=False)
    assert again.done == [] and again.skipped == ids
    assert mtimes == {i: (tmp_path / "four" / i / "record.json").stat().st_mtime_ns for i in ids}


def test_a_batch_out_of_memory_is_split_and_completes(manifest, tmp_path):
    """The explainer raises CUDA's out-of-memory error for batches of more than 1: 4 -> 2 + 2 -> 1 each."""
    recipe = ExplainRecipe(ModelRecipe(), SPEC, "gxi")
    runner = recipe.build()
    explain = runner.explainer.explain
    sizes = []

    def limited(x, class_idx=None, **keywords):  # Explainer.explain's keywords (spacing, region)
        sizes.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated for a batch of more than 1)")
        return explain(x, class_idx, **keywords)

    runner.explainer.explain = limited
    entries = _entries(manifest)[:4]
    result = explain_cohort(entries, recipe, tmp_path / "split", engine=LocalEngine(runner), batch_size=4)
    assert result.done == [e["id"] for e in entries] and not result.failures
    assert sizes == [4, 2, 1, 1, 2, 1, 1]
    reference = explain_cohort(entries, recipe, tmp_path / "ref", batch_size=1, progress=False)
    ids = reference.done
    split, ref = _maps(tmp_path / "split", ids), _maps(tmp_path / "ref", ids)
    for i in ids:  # the split ran every case alone, as the reference did
        np.testing.assert_array_equal(split[i], ref[i])
    assert not (tmp_path / "split" / "failures.csv").exists()


def test_a_corrupt_case_is_listed_in_failures_and_the_others_are_done(manifest, tmp_path, capsys):
    """One DICOM file of the manifest is cut short: its case is in failures.csv with the error, the
    others (in its batch too) are complete and in explanations.csv, and the exit status is non-zero."""
    data = json.loads(manifest.read_text())
    broken = tmp_path / "broken.dcm"
    broken.write_bytes((manifest.parent / data["testing"][2]["image"]).read_bytes()[:600])
    data["testing"][2]["image"] = str(broken)
    bad_manifest = manifest.parent / "with_a_corrupt_case.json"
    bad_manifest.write_text(json.dumps(data))
    out = tmp_path / "out"
    argv = ["explain", "--manifest", str(bad_manifest), "--method", "gxi", "--intensity-range=-1000,0"]
    rc = main([*argv, "--batch-size", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc != 0 and f"1 of {N_CASES} cases failed" in err and "case002" in err, err
    with open(out / "failures.csv") as f:
        failures = list(csv.DictReader(f))
    assert [f["case"] for f in failures] == ["case002"] and failures[0]["image"] == str(broken)
    assert failures[0]["error"] and failures[0]["error_type"]
    with open(out / "explanations.csv") as f:
        listed = [r["case"] for r in csv.DictReader(f)]
    assert listed == [f"case{i:03d}" for i in range(N_CASES) if i != 2]
    assert all((out / c / "record.json").is_file() for c in listed) and not (out / "case002" / "record.json").exists()
    # the file repaired, the same command finishes the failed case only and removes failures.csv
    broken.write_bytes((manifest.parent / "case002" / "image.dcm").read_bytes())
    before = {c: (out / c / "record.json").stat().st_mtime_ns for c in listed}
    assert main([*argv, "--batch-size", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    assert before == {c: (out / c / "record.json").stat().st_mtime_ns for c in listed}
    assert (out / "case002" / "record.json").is_file() and not (out / "failures.csv").exists()


def test_cohort_failed_names_the_first_failure():
    failures = [
        CaseOutcome(
            case="b", image="b.dcm", status="failed", index=2, error="bad", error_type="ValueError", bad_input=True
        )
    ]
    err = CohortFailed(failures, 3, Path("out"))
    assert err.bad_input and "1 of 3 cases failed" in str(err) and "case 2 (b, b.dcm) failed: bad" in str(err)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "3"], "only with --engine ray"),
        (["--batch-size", "0"], "--batch-size: expected at least 1"),
        (["--engine", "ray", "--workers", "0"], "--workers: expected at least 1"),
        (["--engine", "ray", "--device", "cuda"], "give --gpus-per-worker"),
    ],
)
def test_bad_cohort_options_are_refused_before_any_work(manifest, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    rc = main(["explain", "--manifest", str(manifest), "--method", "gxi", "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


def test_a_run_leaves_no_thread_behind(manifest, tmp_path):
    """The progress bar starts no monitor thread: a thread left in the caller's process is inherited, possibly
    holding a lock, by every process the caller forks later (a forked export child hung at exit that way)."""
    before = {t.ident for t in threading.enumerate()}
    explain_cohort(_entries(manifest)[:2], ExplainRecipe(ModelRecipe(), SPEC, "gxi"), tmp_path / "out", progress=True)
    left = [t.name for t in threading.enumerate() if t.ident not in before]
    assert left == []


# The configuration hashes of the records below, with medhdm_version "0.1.0": a change of either is a
# change of what every earlier run wrote, and those runs would no longer resume (their cases redone).
PINNED_EXPLAIN_HASH = "7386c525576dc5a427b81370ec34e0da55bc144c2b0bccd192ff80b3a1ed9158"
PINNED_EVALUATE_HASH = "40fe74309542b21ecb78beae10e86389d94b5ee71c9c633965e6e255d3458584"
RECORD_KEYS = ["case", "image", "configuration_hash", "configuration", "files", "seconds", "result"]


def _pinned_hash(record: dict) -> str:
    assert record["configuration"]["medhdm_version"] == medhdm.__version__
    assert record["configuration_hash"] == configuration_hash(record["configuration"])
    return configuration_hash({**record["configuration"], "medhdm_version": "0.1.0"})


def test_records_keep_their_layout_and_configuration_hash(manifest, tmp_path):
    """The record.json of an explained and of an evaluated case: its keys, its result's keys and its
    configuration hash are those earlier runs wrote, so that they resume (their cases are not redone)."""
    entry = load_manifest(manifest)[0]
    explain_cohort([entry], ExplainRecipe(ModelRecipe(), SPEC, "gxi"), tmp_path / "explain", progress=False)
    record = json.loads((tmp_path / "explain" / entry["id"] / "record.json").read_text())
    assert list(record) == RECORD_KEYS and list(record["result"]) == ["row"]
    assert record["files"] == [f"{entry['id']}_saliency.nii.gz"] and record["image"] == str(entry["image"])
    assert list(record["result"]["row"]) == [
        *("case", "image", "class_idx", "score", "map", "export"),
        *("slice_reduce", "slices", "slice_scores", "spacing"),
    ]
    assert _pinned_hash(record) == PINNED_EXPLAIN_HASH

    recipe = EvaluateRecipe(ModelRecipe(), SPEC, ("gxi",), curve_steps=4)
    evaluate_cohort([entry], recipe, tmp_path / "evaluate", progress=False)
    record = json.loads((tmp_path / "evaluate" / entry["id"] / "record.json").read_text())
    # the findings' records (for the report) came after "rows" and "curves"; a record without them still reports
    assert list(record) == RECORD_KEYS and list(record["result"]) == ["rows", "curves", "findings"]
    assert record["files"] == ["maps.npz"] and list(record["result"]["curves"]) == ["gxi"]
    found = record["result"]["findings"]["gxi"]
    assert len(found) == len(record["result"]["rows"][0]["findings"].split("/")[0].split())
    assert _pinned_hash(record) == PINNED_EVALUATE_HASH


@pytest.mark.parametrize(
    ("settings", "error", "message"),
    [
        ({"batch_size": 0}, ValueError, "batch_size: expected at least 1, got 0"),
        ({"workers": 0}, ValueError, "workers: expected at least 1, got 0"),
        ({"gpus_per_worker": -1}, ValueError, "gpus_per_worker: expected 0 or more, got -1"),
        ({"engine": "dask"}, ValueError, "engine: expected local or ray, got 'dask'"),
        ({"engine": object()}, TypeError, "engine: expected 'local', 'ray' or an Engine, got object"),
        ({"batchsize": 2}, TypeError, "unexpected keyword argument(s) batchsize: not fields of CohortOptions"),
    ],
)
def test_bad_cohort_settings_are_refused_before_anything_is_written(manifest, tmp_path, settings, error, message):
    """Through the API as through the CLI: a bad setting is one clear error naming the parameter (the CLI names
    the flag), and ``out`` is not created."""
    out = tmp_path / "out"
    with pytest.raises(error, match="^" + re.escape(message)):
        explain_cohort(_entries(manifest)[:1], ExplainRecipe(ModelRecipe(), SPEC, "gxi"), out, **settings)
    assert not out.exists()


def test_cohort_calls_take_options_and_keywords_and_report_case_outcomes(manifest, tmp_path):
    """``options`` and keyword settings combine (the settings win); the options cannot be passed by
    position; the local engine is an ``Engine``, and a built one is used as it is; ``on_batch`` gets
    each batch's :class:`CaseOutcome`\\ s."""
    recipe = ExplainRecipe(ModelRecipe(), SPEC, "gxi")
    entries = _entries(manifest)[:3]
    with pytest.raises(TypeError):
        explain_cohort(entries, recipe, tmp_path / "positional", "local")
    assert not (tmp_path / "positional").exists()
    engine = LocalEngine(recipe.build())
    assert isinstance(engine, Engine) and make_engine(recipe, CohortOptions(engine=engine)) is engine
    seen: list[list[CaseOutcome]] = []
    options = CohortOptions(engine=engine, batch_size=1, progress=False)
    result = explain_cohort(entries, recipe, tmp_path / "out", options=options, batch_size=2, on_batch=seen.append)
    assert result.done == [e["id"] for e in entries]
    assert [[o.case for o in batch] for batch in seen] == [[entries[0]["id"], entries[1]["id"]], [entries[2]["id"]]]
    first = seen[0][0]
    assert first.image == os.path.abspath(entries[0]["image"]) and first.status == "done" and not first.failed
    assert first.seconds > 0 and (first.error, first.error_type, first.bad_input) == ("", "", False)
