"""Deletion/insertion on a segmenter: the score is the class's mean logit over a target region held fixed
along the curves (``region=`` as in ``explain``; default the predicted mask), and ``medhdm evaluate``
reports the curves of a segmenter."""

from __future__ import annotations

import csv
import math

import numpy as np
import torch

from medhdm.cli import main
from medhdm.data.bench_files import LESIONBENCH_INTENSITY_RANGE, write_lesionbench
from medhdm.metrics import deletion_curve, faithfulness_scores
from medhdm.testing import ThresholdSegmenter


def _two_boxes():
    x = torch.full((1, 1, 32, 32), 0.1)
    x[..., 4:10, 4:10] = 1.0  # box A
    x[..., 20:28, 20:28] = 1.0  # box B
    a = torch.zeros(1, 1, 32, 32, dtype=torch.bool)
    a[..., 4:10, 4:10] = True
    return x, a


def test_the_deletion_curve_of_a_segmenter_reads_the_fixed_region():
    x, box_a = _two_boxes()
    model = ThresholdSegmenter()  # logit 10 (x - 0.5) per voxel: +5 on the boxes, -5 once deleted to 0
    fractions = [0.0, 36 / 1024, 1.0]
    # region A: deleting A's 36 voxels first takes its mean logit from +5 to -5
    curve = deletion_curve(model, x, box_a.float(), 1, fractions=fractions, reference=0.0, region=box_a)
    assert np.allclose(curve[0], torch.sigmoid(torch.tensor([5.0, -5.0, -5.0])).numpy(), atol=1e-5)
    # the same map read over the predicted mask (both boxes, 100 voxels): B's 64 voxels keep their evidence
    predicted = deletion_curve(model, x, box_a.float(), 1, fractions=fractions, reference=0.0)
    expected = torch.sigmoid(torch.tensor([5.0, (36 * -5.0 + 64 * 5.0) / 100, -5.0])).numpy()
    assert np.allclose(predicted[0], expected, atol=1e-5)


def test_faithfulness_scores_on_a_segmenter():
    x, box_a = _two_boxes()
    model = ThresholdSegmenter()
    good, _ = faithfulness_scores(model, x, box_a.float(), class_idx=1, region=box_a)
    elsewhere = torch.zeros_like(box_a, dtype=torch.float32)
    elsewhere[..., 20:28, 20:28] = 1.0  # the map on the other box
    bad, _ = faithfulness_scores(model, x, elsewhere, class_idx=1, region=box_a)
    assert good["deletion_auc_log"][0] < bad["deletion_auc_log"][0]
    assert good["insertion_auc_log"][0] > bad["insertion_auc_log"][0]
    assert not any(math.isnan(v) for v in good["deletion_half"])


def test_evaluate_reports_the_curves_of_a_segmenter(tmp_path):
    manifest = write_lesionbench(tmp_path / "lb", n_cases=2, spatial_dims=2, seed=3, lesion_weights=(0.0, 1.0, 0, 0))
    low, high = LESIONBENCH_INTENSITY_RANGE
    args = ["evaluate", "--manifest", str(manifest), "--methods", "gxi", "--out", str(tmp_path / "out")]
    args += ["--model", "segmenter2d", "--spatial-size", "64,64", f"--intensity-range={low},{high}"]
    assert main(args) in (0, None)
    rows = list(csv.DictReader((tmp_path / "out" / "per_case.csv").open()))
    assert len(rows) == 2
    for row in rows:
        for column in ("deletion_auc_log", "insertion_auc_log", "deletion_half", "insertion_half"):
            assert 0 <= float(row[column]) <= 1, (column, row[column])
