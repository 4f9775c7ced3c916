"""Localisation metrics against values computed by hand on tiny arrays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medhdm.metrics import (
    auroc,
    energy_in_lesion,
    hit_peaks,
    lesion_hit_rate,
    pointing_game,
    rank_accuracy,
    score,
)

MASK = np.array([[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 1]])
MAP = np.array([[0.0, 0.1, 0.0, 0.0], [0.2, 0.9, 0.5, 0.0], [0.0, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.6]])


def test_pointing_game_hit_miss_tolerance_and_ties():
    assert pointing_game(MAP, MASK) == 1.0
    off = MAP.copy()
    off[0, 0] = 1.0  # maximum one voxel diagonal from the lesion at (1, 1)
    assert pointing_game(off, MASK) == 0.0
    assert pointing_game(off, MASK, spacing=(1.0, 1.0), tolerance_mm=1.0) == 0.0  # sqrt(2) mm away
    assert pointing_game(off, MASK, spacing=(1.0, 1.0), tolerance_mm=1.5) == 1.0
    assert pointing_game(off, MASK, spacing=(0.5, 0.5), tolerance_mm=0.75) == 1.0  # 0.707 mm
    tie = MAP.copy()
    tie[0, 0] = 0.9  # tied maximum inside and outside: no hit by luck
    assert pointing_game(tie, MASK) == 0.0
    assert math.isnan(pointing_game(np.ones((4, 4)), MASK))
    assert math.isnan(pointing_game(MAP, np.zeros((4, 4))))


def test_energy_and_rank_accuracy():
    total = MAP.sum()  # 2.6
    assert energy_in_lesion(MAP, MASK) == pytest.approx((0.9 + 0.5 + 0.6) / total)
    # top-3 voxels: 0.9 (in), 0.6 (in), 0.5 (in)
    assert rank_accuracy(MAP, MASK) == pytest.approx(1.0)
    other = MAP.copy()
    other[3, 3] = 0.0  # top-3 now 0.9 (in), 0.5 (in), 0.3 (out)
    assert rank_accuracy(other, MASK) == pytest.approx(2 / 3)
    assert math.isnan(energy_in_lesion(np.zeros((4, 4)), MASK))


def test_auroc_matches_pairwise_count_with_ties():
    # 3 positives (0.9, 0.5, 0.6) vs 13 negatives; ties count one half.
    pos = MAP[MASK > 0]
    neg = MAP[MASK == 0]
    pairs = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert auroc(MAP, MASK) == pytest.approx(pairs / (len(pos) * len(neg)))
    flat = np.full((4, 4), 0.5)
    flat[1, 1] = 0.5
    assert auroc(flat, MASK) == pytest.approx(0.5)
    assert math.isnan(auroc(MAP, np.ones((4, 4))))


def test_lesion_hit_rate_counts_components_and_spends_peaks():
    mask = np.zeros((12, 12), dtype=int)
    mask[1:3, 1:3] = 1
    mask[8:10, 8:10] = 1
    sal = np.zeros((12, 12))
    sal[1, 1] = 1.0  # a peak in lesion 1
    sal[9, 9] = 0.8  # a peak in lesion 2
    assert lesion_hit_rate(sal, mask, radius=1) == 1.0
    sal[5, 5] = 0.9  # a distractor peak outranks lesion 2: with 2 peaks kept, one lesion is hit
    assert lesion_hit_rate(sal, mask, radius=1) == 0.5
    assert lesion_hit_rate(sal, mask, radius=1, n_peaks=3) == 1.0
    sal[9, 9] = 0.1  # below min_peak (0.2 of the maximum)
    assert lesion_hit_rate(sal, mask, radius=1, n_peaks=3) == 0.5


def test_hit_peaks_are_the_local_maxima_over_the_floor_highest_first():
    sal = np.zeros((12, 12))
    sal[1, 1] = 1.0
    sal[1, 3] = 0.9  # within radius 2 of (1, 1): not a local maximum there, one at radius 1
    sal[9, 9] = 0.5
    sal[9, 10] = 0.5  # a plateau of two voxels: one peak, on one of them
    sal[5, 9] = 0.15  # under the floor of 0.2 of the maximum
    peaks = hit_peaks(sal, radius=1)
    assert peaks[:2] == [(1.0, (1, 1)), (0.9, (1, 3))]
    assert len(peaks) == 3 and peaks[2][0] == 0.5 and peaks[2][1] in ((9, 9), (9, 10))
    assert hit_peaks(sal, radius=2) == [(1.0, (1, 1)), peaks[2]]
    assert hit_peaks(sal, radius=1, min_peak=0.1) == [*peaks, (0.15, (5, 9))]
    assert hit_peaks(torch.tensor(sal)[None], radius=1) == hit_peaks(sal, radius=1)  # channel axis dropped
    assert len(hit_peaks(np.zeros((12, 12)), radius=1)) == 1  # a constant map: one plateau, one peak


def test_3d_torch_input_with_channel_axis():
    mask = torch.zeros(1, 4, 5, 6, dtype=torch.long)
    mask[0, 1:3, 1:3, 1:3] = 1
    sal = torch.zeros(1, 4, 5, 6)
    sal[0, 2, 2, 2] = 1.0
    sal[0, 0, 0, 0] = 0.5
    out = score(sal, mask)
    assert out["pointing_game"] == 1.0
    assert out["energy_in_lesion"] == pytest.approx(1 / 1.5)
    assert out["lesion_hit_rate"] == 1.0
    n_pos, n_neg = 8, 4 * 5 * 6 - 8
    # the positive at 1.0 beats all negatives; the other 7 positives (0) beat nobody and tie
    # with 119 zero negatives; the 0.5 negative beats the 7 zero positives.
    expected = (n_neg + 7 * 0.5 * (n_neg - 1)) / (n_pos * n_neg)
    assert out["auroc"] == pytest.approx(expected)


def test_bad_input():
    with pytest.raises(ValueError, match=r"lesion_mask: expected the saliency map's shape \(4, 4\), got \(4, 5\)"):
        score(MAP, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="saliency: the map has NaN"):
        score(np.full((4, 4), np.nan), MASK)
    with pytest.raises(ValueError, match="saliency: expected a 2D or 3D map"):
        score(np.zeros(4), np.zeros(4))


def test_auprc_dice_and_iou_by_hand():
    from medhdm.metrics import auprc, dice_top, iou_top

    saliency = np.array([[0.9, 0.8], [0.7, 0.1]])
    mask = np.array([[1, 0], [1, 0]])
    # Ranked: hit, miss, hit, miss -> AP = 0.5 * 1/1 + 0.5 * 2/3.
    assert auprc(saliency, mask) == pytest.approx(0.5 + 0.5 * 2 / 3)
    # Top-2 = {0.9, 0.8}: one of the two lesion voxels. Dice 2*1/4, IoU 1/3.
    assert dice_top(saliency, mask) == pytest.approx(0.5)
    assert iou_top(saliency, mask) == pytest.approx(1 / 3)
    # Ties enter together in AP: all tied -> precision 2/4 at recall 1.
    assert auprc(np.ones((2, 2)), mask) == pytest.approx(0.5)
    # 3D, a perfect map.
    m3 = np.zeros((3, 4, 5), dtype=bool)
    m3[1, 1:3, 2:4] = True
    s3 = m3 + 0.01 * np.arange(60).reshape(3, 4, 5) / 60
    assert auprc(s3, m3) == pytest.approx(1.0) and dice_top(s3, m3) == pytest.approx(1.0)
    assert math.isnan(auprc(s3, np.zeros_like(m3))) and math.isnan(iou_top(np.zeros((3, 4, 5)), m3))


def test_aggregation_and_paired_comparison_by_hand():
    from medhdm.evaluation import bootstrap_ci, paired_comparison, summarise

    rows = [{"method": "A", "case": i, "auroc": v} for i, v in enumerate([0.9, 0.8, 0.7, float("nan"), 0.6, 1.0])]
    rows += [{"method": "B", "case": i, "auroc": v} for i, v in enumerate([0.5, 0.4, 0.6, 0.5, 0.3, 0.2])]
    table = {(r["method"], r["metric"]): r for r in summarise(rows, ["auroc"])}
    a = table[("A", "auroc")]
    assert a["n"] == 5 and a["mean"] == pytest.approx(0.8) and a["median"] == pytest.approx(0.8)
    assert a["ci_low"] < 0.8 < a["ci_high"] and 0.6 <= a["ci_low"] and a["ci_high"] <= 1.0
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)
    comparison = paired_comparison(rows, "A", "B", "auroc")
    # Pairs: cases 0, 1, 2, 4, 5 (case 3 is NaN for A); differences 0.4, 0.4, 0.1, 0.3, 0.8, all positive:
    # the exact two-sided Wilcoxon p-value for n = 5 with every sign positive is 2 / 2**5.
    assert comparison["pairs"] == 5 and comparison["mean_difference"] == pytest.approx(0.4)
    assert comparison["wilcoxon_p"] == pytest.approx(2 / 32)
    with pytest.raises(ValueError, match="no rows for 'C'"):
        paired_comparison(rows, "A", "C", "auroc")


def test_score_batch_is_score_per_image():
    from medhdm.metrics import score_batch

    rng = np.random.default_rng(3)
    maps = torch.from_numpy(rng.random((3, 1, 5, 6, 7)))
    masks = torch.zeros((3, 1, 5, 6, 7))
    masks[:, :, 1:3, 2:4, 3:5] = 1
    batched = score_batch(maps, masks, spacing=(2.0, 1.0, 1.0))
    assert batched == [score(maps[i], masks[i], spacing=(2.0, 1.0, 1.0)) for i in range(3)]
    with pytest.raises(ValueError, match="expected 3 masks"):
        score_batch(maps, masks[:2])
