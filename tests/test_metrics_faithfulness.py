"""Faithfulness metrics against hand-computed values, on a model whose probability is the image mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medhdm import GradientInput
from medhdm.metrics.curves import area_linear, area_log_share, curve_fractions, half_point
from medhdm.metrics.faithfulness import (
    average_drop,
    deletion_auc,
    deletion_curve,
    faithfulness_scores,
    half_evidence_fraction,
    increase_in_confidence,
    insertion_auc,
    log_fractions,
    sanity_check,
)
from medhdm.models import DEFAULT_3D, load_default_classifier


class MeanProbability(nn.Module):
    """A single-logit model with ``sigmoid(logit) = mean(x)``: scores can be computed by hand."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = x.flatten(1).mean(1, keepdim=True).clamp(1e-6, 1 - 1e-6)
        return torch.log(p / (1 - p))


X = torch.tensor([[[[0.8, 0.4], [0.2, 0.6]]]])  # mean 0.5


def test_deletion_and_insertion_by_hand():
    model = MeanProbability()
    curve = deletion_curve(model, X, X, class_idx=1, mode="deletion", n_steps=4, reference=0.0)
    torch.testing.assert_close(torch.tensor(curve[0]), torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=1e-5, rtol=0)
    # Trapezoids of width 1/4: (0.5/2 + 0.3 + 0.15 + 0.05 + 0/2) / 4 = 0.1875.
    assert deletion_auc(model, X, X, 1, n_steps=4, reference=0.0)[0] == pytest.approx(0.1875, abs=1e-5)
    # Insertion from the zero image: 0, 0.2, 0.35, 0.45, 0.5 -> (0 + 0.2 + 0.35 + 0.45 + 0.25) / 4.
    assert insertion_auc(model, X, X, 1, n_steps=4, reference=0.0)[0] == pytest.approx(0.3125, abs=1e-5)
    # The reverse order deletes the weakest voxels first: a worse (higher) deletion score.
    assert deletion_auc(model, X, 1 - X, 1, n_steps=4, reference=0.0)[0] > 0.1875


def test_half_evidence_fraction_by_hand():
    model = MeanProbability()
    # Reference 0.25 everywhere: o(r) = logit(0.25); half the evidence is 0.5 * (0 - logit(0.25)) = 0.5493.
    half = 0.5 * math.log(3)
    grid = [0.0, 0.25, 0.5, 0.75, 1.0]
    # Deleting the brightest voxel (0.8 -> 0.25) leaves the mean 0.3625: 0.5645 of log-odds taken,
    # past half; linear on the first segment from 0.
    taken = -math.log(0.3625 / 0.6375)
    assert half_evidence_fraction(model, X, X, 1, "deletion", reference=0.25, fractions=grid)[0] == pytest.approx(
        0.25 * half / taken, abs=1e-4
    )
    # Inserting it into the reference gives the mean 0.3875: 0.6408 restored.
    restored = math.log(0.3875 / 0.6125) + math.log(3)
    assert half_evidence_fraction(model, X, X, 1, "insertion", reference=0.25, fractions=grid)[0] == pytest.approx(
        0.25 * half / restored, abs=1e-4
    )
    # The weakest voxel first: more voxels to take half the evidence.
    assert half_evidence_fraction(model, X, 1 - X, 1, "deletion", reference=0.25, fractions=grid)[0] > 0.25
    # The default grid: 0, then log-spaced from 0.01 %, ten per decade.
    grid = log_fractions()
    assert grid[0] == 0 and grid[1] == pytest.approx(1e-4) and grid[-1] == 1 and len(grid) == 42
    np.testing.assert_allclose(np.diff(np.log10(grid[1:])), 0.1)
    with pytest.raises(ValueError, match="fractions"):
        half_evidence_fraction(model, X, X, 1, fractions=[0.1, 0.5, 1.0])


def test_curve_readings_by_hand():
    grid = [0.0, 0.01, 0.1, 1.0]
    curve = [[1.0, 1.0, 0.5, 0.0]]
    # Over log10(share) -2, -1, 0: trapezoids (1 + 0.5) / 2 + (0.5 + 0) / 2 = 1, over a span of 2 decades.
    assert area_log_share(curve, grid) == pytest.approx([0.5])
    # Over the share: (1 + 1) / 2 * 0.01 + (1 + 0.5) / 2 * 0.09 + (0.5 + 0) / 2 * 0.9 = 0.3025.
    assert area_linear(curve, grid) == pytest.approx([0.3025])
    # Deletion in log-odds from o(x) = 4 to o(r) = -2: half the evidence is 3; taken 1 at 1 %, 4 at 10 %:
    # two thirds of the way from 1 % to 10 % in log-share, 10 ** (-2 + 2 / 3).
    assert half_point([[4.0, 3.0, 0.0, -2.0]], grid, "deletion") == pytest.approx([10 ** (-4 / 3)])
    # Insertion restores the same amounts from o(r) = -2 at share 0 to o(x) = 4 at share 1.
    assert half_point([[-2.0, -1.0, 2.0, 4.0]], grid, "insertion") == pytest.approx([10 ** (-4 / 3)])
    # Past half on the first segment (from 0): linear in share, 3 / 4 of 1 %.
    assert half_point([[4.0, 0.0, -1.0, -2.0]], grid, "deletion") == pytest.approx([0.0075])
    # No evidence above the reference (o(x) <= o(r)): NaN.
    assert np.isnan(half_point([[1.0, 1.0, 1.0, 2.0]], grid, "deletion")).all()
    with pytest.raises(ValueError, match="fractions"):
        area_log_share(curve, [0.0, 0.1, 0.05, 1.0])
    with pytest.raises(ValueError, match="curve steps"):
        curve_fractions(0)


def test_faithfulness_scores_by_hand_on_the_log_grid():
    """The four columns of ``medhdm evaluate`` through the model, on the 4-voxel image and the default grid.

    The grid's shares are 10 ** (-4 + i / 10), i = 0..40; on 4 voxels share f changes round(4 f) of
    them: none up to i = 30 (4 x 0.1 = 0.4), 1 for i = 31..35 (0.50 .. 1.26), 2 for i = 36, 37, 3 for
    i = 38, 39 and all 4 at i = 40. Reference 0.25 everywhere; the map is the image (0.8, 0.6, 0.4, 0.2 first).
    """
    model = MeanProbability()
    scores, curves = faithfulness_scores(model, X, X, 1, reference=0.25)
    assert set(scores) == {"deletion_half", "insertion_half", "deletion_auc_log", "insertion_auc_log"}
    # Deletion: the mean after replacing 0, 1, 2, 3, 4 voxels by 0.25 is 0.5, 0.3625, 0.275, 0.2375, 0.25.
    deleted = [0.5] * 31 + [0.3625] * 5 + [0.275] * 2 + [0.2375] * 2 + [0.25]
    np.testing.assert_allclose(curves["deletion"][0], [0.5, *deleted], atol=1e-5)
    # Trapezoids of 0.1 decade: 30 x 0.5 + 0.43125 + 4 x 0.3625 + 0.31875 + 0.275 + 0.25625 + 0.2375 + 0.24375,
    # = 18.2125 x 0.1 over 4 decades.
    assert scores["deletion_auc_log"][0] == pytest.approx(1.82125 / 4, abs=1e-5)
    # Insertion into 0.25: 0.25, 0.3875, 0.475, 0.5125, 0.5:
    # 30 x 0.25 + 0.31875 + 4 x 0.3875 + 0.43125 + 0.475 + 0.49375 + 0.5125 + 0.50625 = 11.7875.
    assert scores["insertion_auc_log"][0] == pytest.approx(1.17875 / 4, abs=1e-5)
    # Half of the evidence logit(0.5) - logit(0.25) = log 3 is taken by the first voxel: between the
    # samples at 10 ** -1 (none deleted) and 10 ** -0.9 (one deleted), at t = half / taken in log-share.
    half = 0.5 * math.log(3)
    taken = -math.log(0.3625 / 0.6375)
    assert scores["deletion_half"][0] == pytest.approx(10 ** (-1 + 0.1 * half / taken), rel=1e-4)
    restored = math.log(0.3875 / 0.6125) + math.log(3)
    assert scores["insertion_half"][0] == pytest.approx(10 ** (-1 + 0.1 * half / restored), rel=1e-4)
    # Equal steps instead: the classic columns, as deletion_auc / insertion_auc compute them.
    linear, _ = faithfulness_scores(model, X, X, 1, steps=4, reference=0.25)
    assert set(linear) == {"deletion_half", "insertion_half", "deletion_auc", "insertion_auc"}
    # 0.25 x (0.5 / 2 + 0.3625 + 0.275 + 0.2375 + 0.25 / 2) = 0.3125
    assert linear["deletion_auc"][0] == pytest.approx(0.3125, abs=1e-5)
    assert linear["deletion_auc"] == pytest.approx(deletion_auc(model, X, X, 1, n_steps=4, reference=0.25))
    assert linear["insertion_auc"] == pytest.approx(insertion_auc(model, X, X, 1, n_steps=4, reference=0.25))
    assert linear["deletion_half"][0] == pytest.approx(0.25 * half / taken, abs=1e-4)


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_faithfulness_ranks_a_random_map_below_gradient_x_input(name):
    """On the shipped models, every column of ``medhdm evaluate`` ranks a random map below Gradient x Input."""
    from medhdm.data import make_case, stack_cases

    model = load_default_classifier() if name == "2d" else load_default_classifier(DEFAULT_3D)
    rng = np.random.default_rng(3)
    x, _, _ = stack_cases([make_case(rng, tuple(model.medhdm_card["recipe"]["spatial_size"]), 1 + i) for i in range(2)])
    gradient = GradientInput(model)(x, 1)
    noise = torch.rand(x[:, :1].shape, generator=torch.Generator().manual_seed(0))
    faithful, _ = faithfulness_scores(model, x, gradient, 1)
    random_map, curves = faithfulness_scores(model, x, noise, 1)
    for mode in ("deletion", "insertion"):
        # half the evidence sits in the few per cent of the voxels that Gradient x Input ranks first
        f, r = faithful[f"{mode}_half"], random_map[f"{mode}_half"]
        assert all(a < 0.2 * b for a, b in zip(f, r)), (mode, f, r)
    # the areas over log-share: deletion lower, insertion higher, by 0.15 or more on every image (measured:
    # 0.23-0.63 for deletion, 0.24-0.70 for insertion)
    f, r = faithful["deletion_auc_log"], random_map["deletion_auc_log"]
    assert all(a < b - 0.15 for a, b in zip(f, r)), (f, r)
    f, r = faithful["insertion_auc_log"], random_map["insertion_auc_log"]
    assert all(a > b + 0.15 for a, b in zip(f, r)), (f, r)
    assert curves["deletion"].shape == (2, len(log_fractions()))
    assert (curves["deletion"][:, -1] < curves["deletion"][:, 0]).all()


def test_batched_3d_deletion_matches_one_by_one():
    model = MeanProbability()
    g = torch.Generator().manual_seed(0)
    x = torch.rand((3, 1, 4, 5, 6), generator=g)
    maps = torch.rand((3, 1, 4, 5, 6), generator=g)
    together = deletion_auc(model, x, maps, 1, n_steps=10, reference="blur", batch_size=4)
    alone = [deletion_auc(model, x[i : i + 1], maps[i : i + 1], 1, n_steps=10, reference="blur")[0] for i in range(3)]
    assert together == pytest.approx(alone, abs=1e-6)


def test_average_drop_and_increase_in_confidence_by_hand():
    model = MeanProbability()
    saliency = torch.tensor([[[[1.0, 0.0], [0.0, 0.5]]]])
    # S * x = [[0.8, 0], [0, 0.3]], mean 0.275; drop = 100 * (0.5 - 0.275) / 0.5 = 45.
    assert average_drop(model, X, saliency, 1)[0] == pytest.approx(45.0, abs=1e-3)
    assert increase_in_confidence(model, X, saliency, 1) == [0.0]
    assert increase_in_confidence(model, X, saliency, 0) == [1.0]  # class 0: 1 - mean goes up
    assert average_drop(model, X, torch.ones_like(X), 1)[0] == pytest.approx(0.0, abs=1e-4)


def test_sanity_check():
    model = load_default_classifier()
    g = torch.Generator().manual_seed(1)
    x = torch.rand((2, 1, 96, 96), generator=g)
    ignores_the_model = sanity_check(lambda m: lambda images, cls: images, model, x, class_idx=1)
    assert ignores_the_model == pytest.approx([1.0, 1.0])
    gradient = sanity_check(lambda m: GradientInput(m), model, x, class_idx=1)
    assert all(abs(r) < 0.9 for r in gradient), gradient
    before = [p.clone() for p in model.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the trained model is untouched
    constant = sanity_check(lambda m: lambda images, cls: torch.zeros_like(images), model, x, class_idx=1)
    assert all(math.isnan(v) for v in constant)


def test_bad_inputs():
    model = MeanProbability()
    with pytest.raises(ValueError, match="saliency: expected shape"):
        deletion_auc(model, X, torch.zeros(1, 1, 3, 3), 1)
    with pytest.raises(ValueError, match="NaN"):
        insertion_auc(model, X, torch.full_like(X, float("nan")), 1)
    with pytest.raises(ValueError, match="mode"):
        deletion_curve(model, X, X, 1, mode="sideways")
    with pytest.raises(ValueError, match=r"maps in \[0, 1\]"):
        average_drop(model, X, X * 3, 1)
