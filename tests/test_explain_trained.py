"""HDM on a real MONAI network trained in the test on synthetic bright-blob images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.networks.nets import DenseNet

from medhdm import HDM, MaskObjective
from medhdm.data import make_dataset
from medhdm.metrics import energy_in_lesion, pointing_game
from medhdm.training import accuracy_and_auc, stack_cases, train_classifier


@pytest.fixture(scope="module")
def trained_densenet():
    size = (32, 32)
    train = make_dataset(0, 600, size, lesion_counts=(0, 1), weights=(0.5, 0.5), background="noise",
                         n_distractors=0, radius_range=(2.5, 4.0), contrast_range=(0.3, 0.5))
    test = make_dataset(1, 60, size, lesion_counts=(0, 1), weights=(0.5, 0.5), background="noise",
                        n_distractors=0, radius_range=(2.5, 4.0), contrast_range=(0.3, 0.5))
    torch.manual_seed(0)
    model = DenseNet(spatial_dims=2, in_channels=1, out_channels=2, init_features=8, growth_rate=8,
                     block_config=(2, 2), bn_size=2)
    train_classifier(model, train, epochs=6, batch_size=32, lr=3e-3, seed=0, log=None)
    return model, test


def test_trained_densenet_learned_the_task(trained_densenet):
    model, test = trained_densenet
    acc, auc = accuracy_and_auc(model, test)
    assert acc > 0.85 and auc > 0.9, (acc, auc)


def test_hdm_localises_the_blob_far_above_chance(trained_densenet):
    model, test = trained_densenet
    positives = [c for c in test if c.n_lesions == 1][:12]
    x, lesions, _ = stack_cases(positives)
    hdm = HDM(model, benchmark_objective=MaskObjective(steps=50, lambda_area=2.0),
              auxiliary_objective=MaskObjective(steps=50, lambda_area=2.0, lambda_tv=1.0), max_stages=2)
    saliency = hdm(x, class_idx=1)
    pointing = np.mean([pointing_game(saliency[i], lesions[i]) for i in range(len(x))])
    energy = np.mean([energy_in_lesion(saliency[i], lesions[i]) for i in range(len(x))])
    chance = float((lesions > 0).float().mean())  # share of the image that is lesion, about 3%
    print(f"pointing {pointing:.2f} energy {energy:.3f} chance {chance:.3f}")
    # Measured 2026-11-26 with the pixel refinement of then (abs(gradient x (x - r))): pointing 0.92,
    # energy 0.35; with refine=None 0.58 (on this 32 x 32 toy the masks' mass sits beside the blob).
    # The defaults since 2026-11-27 (positive-gradient refinement, grids (16, 8) + (4, 2)) pass the same bar.
    # Chance is the lesion share, about 0.03.
    assert pointing >= 0.75, pointing
    assert energy > 5 * chance, (energy, chance)
