"""The scores of a saved map (localisation against a lesion, faithfulness to the model) stay as recorded.

Values recorded from the code before the scoring of ``pacs`` (the SR's scores) and of ``medhdm evaluate``
(its rows) became one function in :mod:`medhdm.evaluation`, on fixed LesionBench cases with the cheap
``gradientinput`` method: the same numbers must come out of it.
"""

from __future__ import annotations

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

#: a 2D study: the map of the one image, scored against the study's lesion SEG
SR_2D = {
    "pointing_game": 1.0,
    "energy_in_lesion": 0.19287396591634803,
    "auroc": 0.9930199029980391,
    "lesion_hit_rate": 1.0,
    "deletion_half": 0.001064936055868325,
    "insertion_half": 0.009624426625709186,
    "deletion_auc_log": 0.22008997297380123,
    "insertion_auc_log": 0.4405277588171884,
    "deletion_auc": 0.03406606617500074,
    "insertion_auc": 0.8868848969286773,
}
#: a CT series through the 2D classifier, the two most probable slices explained (faithfulness per slice, mean)
SR_SERIES_TOP2 = {
    "pointing_game": 1.0,
    "energy_in_lesion": 0.17074374716741467,
    "auroc": 0.7624070903375857,
    "lesion_hit_rate": 1.0,
    "deletion_half": 0.006833986143974985,
    "insertion_half": 0.006370192490996432,
    "deletion_auc_log": 0.41039784714230343,
    "insertion_auc_log": 0.5702429241733625,
    "deletion_auc": 0.0323659859932377,
    "insertion_auc": 0.9834515161128365,
}
_LOCALISATION = {"rank_accuracy", "auprc", "dice_top", "iou_top"}
#: ``medhdm evaluate``'s rows (log-spaced curves): the method's own maps and saved maps (``--maps``) beside them
EVALUATE_ROWS = {
    ("case000", "gxi"): {
        "class_idx": 1, "score": 1.0, "n_lesions": 2, "pointing_game": 1.0, "energy_in_lesion": 0.372630027867206,
        "auroc": 0.9877010279697709, "lesion_hit_rate": 0.5, "deletion_half": 0.04105805288709043,
        "insertion_half": 0.013331063719513023, "deletion_auc_log": 0.6813098763464951,
        "insertion_auc_log": 0.5497398462612182, "rank_accuracy": 0.6912928759894459, "auprc": 0.734061840658241,
        "dice_top": 0.6912928759894459, "iou_top": 0.5282258064516129,
    },
    ("case000", "ext"): {
        "class_idx": 1, "score": 1.0, "n_lesions": 2, "pointing_game": 1.0, "energy_in_lesion": 0.11892036288874218,
        "auroc": 0.8144738346774759, "lesion_hit_rate": 0.5, "deletion_half": 0.3055738404992965,
        "insertion_half": 0.009450849660521246, "deletion_auc_log": 0.8888485668576322,
        "insertion_auc_log": 0.5349663540604523, "rank_accuracy": 0.34564643799472294, "auprc": 0.28027209952643806,
        "dice_top": 0.34564643799472294, "iou_top": 0.20893141945773525,
    },
    ("case001", "ext"): {
        "class_idx": 1, "score": 1.0, "n_lesions": 2, "pointing_game": 0.0, "energy_in_lesion": 0.0032222547934305664,
        "auroc": 0.3311163104097307, "lesion_hit_rate": 0.0, "deletion_half": 0.5181662610598968,
        "insertion_half": 0.4714875789673069, "deletion_auc_log": 0.9740579644450919,
        "insertion_auc_log": 0.19338225338142362, "rank_accuracy": 0.0, "auprc": 0.013175675546933349,
        "dice_top": 0.0, "iou_top": 0.0,
    },
    ("case002", "ext"): {
        "class_idx": 1, "score": 0.9996, "n_lesions": 1, "pointing_game": 0.0, "energy_in_lesion": 0.037268859929327325,
        "auroc": 0.7745568569981574, "lesion_hit_rate": 0.0, "deletion_half": 0.26920396149090875,
        "insertion_half": 0.2217338846645087, "deletion_auc_log": 0.8637688020011411,
        "insertion_auc_log": 0.18351798790972673, "rank_accuracy": 0.0, "auprc": 0.04379153295837576,
        "dice_top": 0.0, "iou_top": 0.0,
    },
}  # fmt: skip
#: the same saved map with ``curve_steps=16`` (equal shares: the classic AUCs)
EVALUATE_EXTERNAL_16 = {
    "deletion_half": 0.3205317121449945,
    "insertion_half": 0.044482922220682675,
    "deletion_auc": 0.3663206411001738,
    "insertion_auc": 0.9689652779779863,
}


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
    expected = SR_2D if dims == 2 else SR_SERIES_TOP2
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
    for key, expected in EVALUATE_ROWS.items():
        assert {k: got[key][k] for k in expected} == _close(expected), key
        assert set(got[key]) - set(expected) == {"case", "method", "label", "seconds"}
    rows, _ = evaluate_manifest(entries, {}, spec, curve_steps=16, log=None, maps={"ext": maps}, model=model2d)
    row = next(r for r in rows if r["case"] == "case000")
    assert {k: row[k] for k in EVALUATE_EXTERNAL_16} == _close(EVALUATE_EXTERNAL_16)
    assert {k: row[k] for k in _LOCALISATION} == _close({k: EVALUATE_ROWS["case000", "ext"][k] for k in _LOCALISATION})
