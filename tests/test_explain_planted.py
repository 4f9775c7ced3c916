"""Mask explainers on models whose evidence is known: planted blobs, 2D and 3D,
and two lesions under a classifier that pools by maximum."""

from __future__ import annotations

import pytest
import torch
from scipy import ndimage

from medhdm import HDM, MDM, MaskObjective, NeuroMask
from medhdm.explain.hdm import fusion_weights
from medhdm.explain.maps import normalise
from medhdm.explain.masks import area_penalty, grid_shapes, optimise_masks
from medhdm.explain.reference import gaussian_blur
from medhdm.explain.scoring import ClassScorer
from medhdm.metrics import auroc, energy_in_lesion, lesion_hit_rate, pointing_game
from medhdm.testing import BlobDetector, plant

BENCH = MaskObjective(steps=60, lambda_area=2.0, lambda_del=0.0)
AUX = MaskObjective(steps=60, lambda_area=2.0, lambda_del=0.0, lambda_tv=1.0)


def small_hdm(model, **kwargs) -> HDM:
    """HDM at test size. The planted images are 0.1-0.15 noise with bright boxes, so a
    constant reference at background level removes a box completely (a blurred 6-voxel
    box would still fire the toy detector)."""
    settings = dict(
        reference=0.1,
        benchmark_grids=(8, 4),
        auxiliary_grids=(4, 2),
        benchmark_objective=BENCH,
        auxiliary_objective=AUX,
        threshold=0.3,
    )
    settings.update(kwargs)
    return HDM(model, **settings)


@pytest.mark.parametrize(
    "shape, box",
    [((32, 32), (slice(8, 14), slice(18, 24))), ((16, 24, 24), (slice(4, 9), slice(5, 10), slice(12, 17)))],
    ids=["2d", "3d"],
)
def test_hdm_map_lands_on_planted_evidence(shape, box):
    x, labels = plant(shape, [box])
    model = BlobDetector(len(shape)).calibrate(x)
    result = small_hdm(model).explain(x)
    saliency = result.saliency
    assert saliency.shape == (1, 1, *shape)
    assert float(saliency.min()) >= 0 and float(saliency.max()) == pytest.approx(1.0)
    peak = torch.nonzero(saliency[0, 0] == saliency.max())[0]
    assert bool(labels[(0, 0, *peak.tolist())] == 1), f"map maximum at {peak.tolist()} lies outside the planted box"
    assert pointing_game(saliency[0], labels[0]) == 1.0
    box_share = float((labels > 0).float().mean())
    # The box is 3.5% (2D) / 1.4% (3D) of the image; the map must concentrate on it.
    assert energy_in_lesion(saliency[0], labels[0]) > max(0.2, 10 * box_share)
    assert result.score[0] > 0.9 and result.reference_score[0] < 0.1


def test_two_lesions_max_pool_stages_find_one_each():
    x, labels = plant((40, 40), [(slice(6, 12), slice(6, 12)), (slice(26, 33), slice(24, 31))])
    x[0, 0, 26:33, 24:31] = 0.97  # lesion 2 a little fainter: lesion 1 is the most convincing
    model = BlobDetector(2, pool="max", kernel=5).calibrate(x)
    lesion1, lesion2 = labels[0, 0] == 1, labels[0, 0] == 2

    result = small_hdm(model).explain(x)
    stage1, stage2 = result.stages[0], result.stages[1]
    # Stage 1 explains the decision with one lesion: the other one suffices for a max-pool
    # classifier, so removing the first leaves the score high.
    assert stage1.map[0, 0][lesion1].mean() > 0.5 and stage1.map[0, 0][lesion2].max() < 0.05
    assert stage1.score_after[0] > 0.9
    # Stage 2 explains what remains: the other lesion; removing it ends the evidence.
    assert stage2.map[0, 0][lesion2].mean() > 0.5 and stage2.map[0, 0][lesion1].max() < 0.05
    assert stage2.score_after[0] < 0.1
    assert len(result.stages) == 2, "early stop after the evidence is gone"
    # Both stages carry weight in the fusion, and the fused map peaks in both lesions.
    assert 0.3 < float(stage1.alpha[0]) < 0.7 and float(stage1.alpha[0] + stage2.alpha[0]) == pytest.approx(1.0)
    fused = result.saliency[0, 0]
    assert fused[lesion1].max() > 0.6 and fused[lesion2].max() > 0.6
    assert lesion_hit_rate(fused, labels[0, 0]) == 1.0

    # What the single-stage predecessors do on the same case (their papers' losses, no
    # deletion term): one mask explains the decision with the most convincing lesion only.
    for single in (MDM(model, reference=0.1, objective=BENCH), NeuroMask(model, reference=0.1, grid=2, objective=AUX)):
        s = single(x)[0, 0]
        assert s[lesion1].max() > 0.9, single.name
        assert s[lesion2].max() < 0.1, f"{single.name} unexpectedly found the second lesion"
        assert lesion_hit_rate(s, labels[0, 0]) == 0.5


def test_hdm_fusion_variants_all_valid():
    x, labels = plant((32, 32), [(slice(4, 9), slice(4, 9)), (slice(20, 26), slice(20, 26))])
    model = BlobDetector(2, pool="max", kernel=5).calibrate(x)
    for fusion in ("either", "sufficiency", "drop", "equal", "learned"):
        result = small_hdm(model, fusion=fusion).explain(x)
        alphas = torch.stack([s.alpha for s in result.stages], 1)
        assert torch.allclose(alphas.sum(1), torch.ones(1)), fusion
        assert float(result.saliency.max()) == pytest.approx(1.0)
        assert pointing_game(result.saliency[0], labels[0]) == 1.0, fusion


def test_fusion_weights_equal_their_hand_computed_values():
    # Stage 1's region suffices alone (4 log-odds) but removing it took little (1): a
    # redundant lesion. Stage 2's region carries nothing alone, but removing it took 6: its
    # evidence adds to others'. Stage 3 ran and found 1 alone, took nothing.
    sufficiency = torch.tensor([[4.0, 0.0, 1.0]])
    drop = torch.tensor([[1.0, 6.0, 0.0]])
    ran = torch.ones(1, 3)
    assert fusion_weights("sufficiency", sufficiency, drop, ran)[0].tolist() == pytest.approx([0.8, 0.0, 0.2])
    assert fusion_weights("drop", sufficiency, drop, ran)[0].tolist() == pytest.approx([1 / 7, 6 / 7, 0.0])
    assert fusion_weights("either", sufficiency, drop, ran)[0].tolist() == pytest.approx([4 / 11, 6 / 11, 1 / 11])
    assert fusion_weights("equal", sufficiency, drop, ran)[0].tolist() == pytest.approx([1 / 3] * 3)
    # A stage that did not run weighs nothing, whatever its values; negative evidence counts as 0;
    # an image whose stages carried no evidence weighs the stages that ran equally.
    ran2 = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    suf2 = torch.tensor([[2.0, -3.0, 9.0], [0.0, 0.0, 0.0]])
    drop2 = torch.tensor([[0.0, 1.0, 9.0], [-1.0, 0.0, 0.0]])
    weights = fusion_weights("either", suf2, drop2, ran2)
    assert torch.allclose(weights, torch.tensor([[2 / 3, 1 / 3, 0.0], [1 / 3, 1 / 3, 1 / 3]]))
    with pytest.raises(ValueError, match="kind: expected 'either'"):
        fusion_weights("learned", sufficiency, drop, ran)


def test_gaussian_blur_matches_scipy():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 20, 30)
    for sigma in (1.0, 2.5, (1.0, 3.0)):
        expected = ndimage.gaussian_filter(image[0, 0].numpy(), sigma, mode="nearest", truncate=3.0)
        assert torch.allclose(gaussian_blur(image, sigma)[0, 0], torch.from_numpy(expected), atol=2e-3), sigma
    assert not torch.allclose(gaussian_blur(image, 2.0), gaussian_blur(image, 2.5), atol=2e-3)


def test_hdm_smoothing_blurs_the_fused_map():
    x, labels = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    model = BlobDetector(2).calibrate(x)
    raw = small_hdm(model, smooth=None, refine=None).explain(x)
    smoothed = small_hdm(model, smooth=0.1, refine=None).explain(x)
    # Same masks and stages (seeded); only the fused map differs: a Gaussian of 3.2 pixels.
    assert torch.equal(raw.stages[0].map, smoothed.stages[0].map)
    assert torch.allclose(smoothed.saliency, normalise(gaussian_blur(raw.saliency, 3.2)), atol=1e-5)
    assert not torch.allclose(smoothed.saliency, raw.saliency, atol=0.05)
    assert pointing_game(smoothed.saliency[0], labels[0]) == 1.0
    with pytest.raises(ValueError, match="smooth: expected None or a fraction of the image size in"):
        HDM(model, smooth=2.0)


def test_sensitivity_equals_its_hand_computed_value():
    # A linear two-class model on a 2-channel 3x4 image: the log-odds of class 1 is
    # (w1 - w0) . x + const, so its sensitivity is sum_channels (w1 - w0) * (x - r).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 2))
    x, r = torch.rand(2, 2, 3, 4), torch.full((2, 2, 3, 4), 0.25)
    scorer = ClassScorer(model)
    w = model[1].weight.detach()
    expected = ((w[1] - w[0]).view(2, 3, 4) * (x - r)).sum(1, keepdim=True)
    odds = scorer.sensitivity(x, r, torch.tensor([1, 1]), measure="log_odds")
    assert odds.shape == (2, 1, 3, 4) and torch.allclose(odds, expected, atol=1e-6)
    # d log p1 / dx = (1 - p1) (w1 - w0): the same map scaled per image; class 0 flips the sign.
    p1 = torch.softmax(model(x), 1)[:, 1].detach()
    log_prob = scorer.sensitivity(x, r, torch.tensor([1, 0]), measure="log_prob")
    assert torch.allclose(log_prob[0], (1 - p1[0]) * expected[0], atol=1e-6)
    assert torch.allclose(log_prob[1], -p1[1] * expected[1], atol=1e-6)
    with pytest.raises(ValueError, match="measure: expected 'log_prob' or 'log_odds', got 'prob'"):
        scorer.sensitivity(x, r, torch.tensor([1, 1]), measure="prob")


@pytest.mark.parametrize("refine_by, weight", [("positive_gradient", 1.0), ("gradient_input", 0.2)])
def test_hdm_pixel_refinement_orders_voxels_by_each_stage_sensitivity(refine_by, weight):
    x, labels = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    model = BlobDetector(2).calibrate(x)
    masks_only = small_hdm(model, refine=None).explain(x)
    refined = small_hdm(model, refine=weight, refine_by=refine_by).explain(x)
    assert "fused" not in masks_only.masks and masks_only.stages[0].sensitivity is None
    # The masks are untouched (seeded); the masks' map is kept under "fused".
    assert torch.equal(masks_only.stages[0].map, refined.stages[0].map)
    assert torch.allclose(refined.masks["fused"], masks_only.saliency)
    scorer, target = ClassScorer(model), torch.tensor([1])
    detail = torch.stack([s.sensitivity for s in refined.stages]).amax(0)
    if refine_by == "positive_gradient":
        # Stage 1's signal: the positive part of the signed d o / dx, smoothed at 1.5 x the map's
        # sigma with 0 outside the image.
        grad = scorer.gradient(x, target, measure="log_odds", signed=True)
        expected = normalise(gaussian_blur(grad, 1.5 * 32 / 32, padding="zeros").clamp_min(0))
        # and its magnitude, smoothed like the map (sigma 1 px), added at the weight 0.2
        magnitude = normalise(gaussian_blur(grad.abs(), 32 / 32))
        assert torch.allclose(refined.stages[0].magnitude, magnitude, atol=1e-5)
        magnitudes = torch.stack([s.magnitude for s in refined.stages]).amax(0)
        fused = normalise(masks_only.saliency + detail + 0.2 * magnitudes)
    else:
        # |d o / dx * (x - r)| of the input, smoothed like the map (sigma 1 px).
        sensitivity = scorer.sensitivity(x, torch.full_like(x, 0.1), target, measure="log_odds")
        expected = normalise(gaussian_blur(sensitivity.abs(), 32 / 32))
        fused = normalise((masks_only.saliency + 0.2) * detail)
    assert torch.allclose(refined.stages[0].sensitivity, expected, atol=1e-5)
    assert torch.allclose(refined.masks["refined"], fused, atol=1e-5)  # the map then gets HDM's focus term
    assert refined.backward_passes == masks_only.backward_passes + len(refined.stages)
    # The evidence is the box's bright voxels: the refinement sharpens the masks' map onto them.
    assert pointing_game(refined.saliency[0], labels[0]) == 1.0
    # (the sum of the positive gradient sharpens less than the product with |gradient x (x - r)|)
    margin = 0.05 if refine_by == "positive_gradient" else 0.1
    assert (
        energy_in_lesion(refined.saliency[0], labels[0]) > energy_in_lesion(masks_only.saliency[0], labels[0]) + margin
    )
    assert auroc(refined.saliency[0], labels[0]) > max(0.99, auroc(masks_only.saliency[0], labels[0]))
    for bad in (-0.1, True, float("nan"), "0.2"):
        with pytest.raises(ValueError, match="refine: expected None or a floor >= 0"):
            HDM(model, refine=bad)
    with pytest.raises(ValueError, match="refine_by: expected one of"):
        HDM(model, refine_by="edges")


class _Thresholded(torch.nn.Module):
    """A classifier with zero gradient everywhere: it counts voxels above 0.5."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = (x > 0.5).float().flatten(1).mean(1, keepdim=True) + 0 * x.flatten(1).sum(1, keepdim=True)
        return torch.cat([torch.zeros_like(v), 100 * v - 1], dim=1)


def test_hdm_without_gradient_keeps_the_masks_map():
    x, _ = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    result = small_hdm(_Thresholded(), refine=0.2).explain(x)
    assert float(result.stages[0].sensitivity.abs().max()) == 0
    assert torch.equal(result.saliency, result.masks["fused"])


def test_area_penalty_equals_its_hand_computed_value():
    masks = torch.tensor([0.2, 0.9, 0.1, 0.4]).view(1, 1, 2, 2)
    # mean mask value, the papers' area term
    assert float(area_penalty(masks)[0, 0]) == pytest.approx(0.4)
    # area 1/4: sorted (0.1, 0.2, 0.4, 0.9) against target (0, 0, 0, 1)
    assert float(area_penalty(masks, 0.25)[0, 0]) == pytest.approx((0.01 + 0.04 + 0.16 + 0.01) / 4)
    binary = torch.zeros(1, 2, 10, 10)
    binary[0, 0, :3, :2] = 1  # 6 % of the voxels
    binary[0, 1, :5, :4] = 1  # 20 %
    assert area_penalty(binary, 0.06)[0].tolist() == pytest.approx([0.0, 0.14])


def test_area_constrained_masks_cover_the_planted_box_and_follow_the_budget():
    box = (slice(8, 14), slice(18, 24))  # 36 of 1024 voxels: 3.5 %
    x, labels = plant((32, 32), [box])
    model = BlobDetector(2).calibrate(x)
    inside = labels[0, 0] > 0
    areas = {}
    for budget in (0.035, 0.15):
        objective = MaskObjective(steps=80, area=budget, lambda_area=30.0, trajectory_mean=False)
        fit = optimise_masks(
            ClassScorer(model),
            x,
            torch.full_like(x, 0.1),
            torch.ones(1, dtype=torch.long),
            grid_shapes((32, 32), (4, 2)),
            objective,
        )  # 8 x 8 and 16 x 16
        areas[budget] = [float(mask.mean()) for mask in fit.masks[0]]
        if budget > 0.1:
            continue  # a budget four times the box saturates a plateau around it
        for grid, mask in zip(fit.grids, fit.masks[0]):
            peak = torch.nonzero(mask == mask.max())[0]
            assert bool(inside[tuple(peak.tolist())]), f"grid {grid}: maximum at {peak.tolist()} outside the box"
            assert float(mask[inside].mean()) > 0.75, f"grid {grid}: the box is not kept"
            assert float(mask[inside].mean()) > 8 * float(mask[~inside].mean())
    # The mask spends the budget it is given: the 8 x 8 grid cannot draw a 3.5 % box
    # (its cells are 4 x 4 voxels), so the small budget lands near 0.1, the large one near 0.15.
    for small, large in zip(areas[0.035], areas[0.15]):
        assert small < 0.11 and abs(large - 0.15) < 0.05 and large > small + 0.05
