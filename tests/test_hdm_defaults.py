"""HDM's defaults of 2026-11-28: the refinement's zero-padded smoothing and the soft removed regions."""

from __future__ import annotations

import pytest
import torch
from monai.networks.layers import gaussian_1d

from medhdm import HDM
from medhdm.explain.reference import gaussian_blur
from medhdm.explain.scoring import ClassScorer
from medhdm.models import DEFAULT_3D, load_default_classifier
from medhdm.testing import lesion_cases


def test_zero_padded_smoothing_by_hand():
    # A lone value v on the edge voxel of a 1 x 9 signal, Gaussian kernel k: with zeros outside,
    # the edge keeps k[0] * v; with the edge replicated it gets v * (k[0] + the outer half of k).
    signal = torch.zeros(1, 1, 1, 9)
    signal[..., 0] = 1.0
    k = gaussian_1d(torch.tensor(1.0), truncated=3.0, approx="sampled")
    half = (k.numel() - 1) // 2
    zeros = gaussian_blur(signal, (1e-3, 1.0), padding="zeros")[0, 0, 0]
    replicated = gaussian_blur(signal, (1e-3, 1.0))[0, 0, 0]
    assert torch.allclose(zeros[: half + 1], k[half:], atol=1e-6)
    assert float(replicated[0]) == pytest.approx(float(k[: half + 1].sum()), abs=1e-6)
    with pytest.raises(ValueError, match="padding: expected 'replicate' or 'zeros'"):
        gaussian_blur(signal, 1.0, padding="reflect")


def test_the_refinement_signal_is_not_drawn_to_the_edge_of_the_image():
    # On these held-out cases the shipped network's signed gradient is noise at the image's
    # edge; smoothed with the edge replicated, one edge voxel weighs half the kernel and the
    # peak of the positive part sits on the edge, outside every lesion. With 0 outside (HDM's
    # refinement) the peak is in a lesion.
    model = load_default_classifier()
    x, lesions, _ = lesion_cases(21, (96, 96), seed=9999)
    x, lesions = x[[16, 20]], lesions[[16, 20]]
    grad = ClassScorer(model).gradient(x, torch.ones(2, dtype=torch.long), measure="log_odds", signed=True)
    for padding, on_edge in (("replicate", True), ("zeros", False)):
        signal = gaussian_blur(grad, 1.5 * 3, padding=padding).clamp_min(0)
        for i in range(2):
            row, col = divmod(int(signal[i, 0].argmax()), 96)
            assert (row in (0, 95) or col in (0, 95)) == on_edge, (padding, i, row, col)
            assert bool(lesions[i, 0, row, col] > 0) != on_edge, (padding, i, row, col)


def test_soft_regions_keep_the_3d_map_continuous_in_its_input():
    # A binarised removed region jumps when a voxel crosses the threshold, and every later
    # stage follows; the soft region (the default) moves with its map.
    model = load_default_classifier(DEFAULT_3D)
    x = lesion_cases(2, tuple(model.medhdm_card["recipe"]["spatial_size"]), seed=555)[0]
    torch.manual_seed(0)
    nudged = x + 1e-6 * torch.randn_like(x)

    def largest_change(explainer: HDM) -> float:
        return float((explainer.explain(x, 1).saliency - explainer.explain(nudged, 1).saliency).abs().max())

    soft = largest_change(HDM(model))
    binarised = largest_change(HDM(model, threshold=0.3))
    assert soft < 0.05 and binarised > 2 * soft, (soft, binarised)
