"""The scores of a saved map (localisation against a lesion, faithfulness to the model) stay as recorded.

Values recorded from the code before the scoring of ``pacs`` (the SR's scores) and of ``medhdm evaluate``
(its rows) became one function in :mod:`medhdm.evaluation`, on fixed LesionBench cases with the cheap
``gradientinput`` method: the same numbers must come out of it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pacs_helpers import bench_study

from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.evaluation import evaluate_manifest
from medhdm.explain.registry import make_explainer
from medhdm.export import read_structured_report
from medhdm.io.manifest import load_manifest
from medhdm.models import load_model
from medhdm.pacs import PacsOptions, explain_local_study
from medhdm.pipeline import InputSpec, load_image

#: the recorded values (``test_map_scores.json``): ``sr_2d``, the SR of a 2D study (the map of its one image
#: against the study's lesion SEG); ``sr_series_top2``, a CT series through the 2D classifier, the two most
#: probable slices explained (faithfulness per slice, then the mean); ``evaluate_rows``, ``medhdm evaluate``'s
#: rows (log-spaced curves) of a method's own maps and of saved maps (``--maps``) beside them;
#: ``evaluate_external_16``, a saved map's row with ``curve_steps=16`` (equal shares: the classic AUCs)
PINNED = json.loads((Path(__file__).parent / "test_map_scores.json").read_text())
_LOCALISATION = {"rank_accuracy", "auprc", "dice_top", "iou_top"}


def _close(expected: dict):
    return pytest.approx(expected, rel=1e-5, abs=1e-7)


@pytest.fixture(scope="module")
def model2d():
    return load_model("default")


@pytest.fixture(scope="module")
def spec(model2d):
    return InputSpec(InputSpec.for_model(model2d).spatial_size, intensity_range=LESIONBENCH_INTENSITY_RANGE)


def _explain_local(study: dict, explainer, spec, work, **options):
    """``pacs``'s explanation of a study on disk (the one call that follows the API)."""
    return explain_local_study(study["image"].parent, explainer, spec, work, PacsOptions("default", **options))


@pytest.mark.parametrize("dims", [2, 3])
def test_the_structured_reports_scores_stay_as_recorded(model2d, spec, dims, tmp_path):
    study = bench_study(tmp_path / "bench", dims)
    explainer = make_explainer("gradientinput", model2d)
    options = {"formats": ("seg", "sr")} if dims == 2 else {"formats": ("sr",), "slices": "top:2"}
    outcome = _explain_local(study, explainer, spec, tmp_path / "work", **options)
    expected = PINNED["sr_2d"] if dims == 2 else PINNED["sr_series_top2"]
    (result,) = outcome.results
    assert result["scores"] == _close(expected)
    sr = next(p for p in outcome.derived if p.name == "SR.dcm")
    assert read_structured_report(sr)["scores"] == _close(expected)


def test_evaluates_rows_stay_as_recorded(model2d, spec, tmp_path):
    entries = load_manifest(write_lesionbench(tmp_path / "bench", n_cases=3, spatial_dims=2, seed=5))
    maps = tmp_path / "maps"
    maps.mkdir()
    for k, entry in enumerate(entries):  # a Gaussian blob per case, saved as a map made elsewhere
        shape = tuple(load_image(entry["image"]).shape[1:])
        grid = np.indices(shape).astype(np.float64)
        centre = [s * (0.3 + 0.2 * k) for s in shape]
        blob = np.exp(-sum((grid[i] - centre[i]) ** 2 for i in range(len(shape))) / (2 * 15.0**2))
        np.save(maps / f"{entry['id']}.npy", blob)
    methods = {"gxi": make_explainer("gradientinput", model2d)}
    rows, _ = evaluate_manifest(entries, methods, spec, log=None, maps={"ext": maps})
    got = {(row["case"], row["method"]): row for row in rows}
    for expected in PINNED["evaluate_rows"]:
        row = got[expected["case"], expected["method"]]
        assert {k: row[k] for k in expected} == _close(expected), expected["case"]
        assert set(row) - set(expected) == {"label", "seconds", "findings"}  # findings: tests/test_findings.py
    rows, _ = evaluate_manifest(entries, {}, spec, curve_steps=16, log=None, maps={"ext": maps}, model=model2d)
    row = next(r for r in rows if r["case"] == "case000")
    assert {k: row[k] for k in PINNED["evaluate_external_16"]} == _close(PINNED["evaluate_external_16"])
    external = next(r for r in PINNED["evaluate_rows"] if (r["case"], r["method"]) == ("case000", "ext"))
    assert {k: row[k] for k in _LOCALISATION} == _close({k: external[k] for k in _LOCALISATION})
