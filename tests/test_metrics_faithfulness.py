"""Faithfulness metrics against hand-computed values, on a model whose probability is the image mean."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from medhdm import GradientInput
from medhdm.metrics.faithfulness import (
    average_drop,
    deletion_auc,
    deletion_curve,
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
    # The default grid: 0, then log-spaced from 0.1 %.
    assert log_fractions()[0] == 0 and log_fractions()[1] == pytest.approx(1e-3) and log_fractions()[-1] == 1
    with pytest.raises(ValueError, match="fractions"):
        half_evidence_fraction(model, X, X, 1, fractions=[0.1, 0.5, 1.0])


@pytest.mark.parametrize("name", ["2d", "3d"])
def test_faithfulness_ranks_a_random_map_below_gradient_x_input(name):
    from medhdm.data import make_case, stack_cases

    model = load_default_classifier() if name == "2d" else load_default_classifier(DEFAULT_3D)
    rng = np.random.default_rng(3)
    x, _, _ = stack_cases([make_case(rng, tuple(model.medhdm_card["recipe"]["spatial_size"]), 1 + i) for i in range(2)])
    gradient = GradientInput(model)(x, 1)
    noise = torch.rand(x[:, :1].shape, generator=torch.Generator().manual_seed(0))
    for mode in ("deletion", "insertion"):
        faithful = half_evidence_fraction(model, x, gradient, 1, mode)
        random_map = half_evidence_fraction(model, x, noise, 1, mode)
        # half the evidence sits in a few per cent of the voxels that Gradient x Input ranks first
        assert all(f < 0.5 * r for f, r in zip(faithful, random_map)), (mode, faithful, random_map)
    curve = deletion_curve(model, x, gradient, 1, fractions=log_fractions())
    assert curve.shape == (2, len(log_fractions()))
    assert (curve[:, -1] < curve[:, 0]).all()


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
