"""HDM on a real MONAI network trained in the test on synthetic bright-blob images."""

from __future__ import annotations

import numpy as np
import pytest

from medhdm import HDM, MaskObjective
from medhdm.data import stack_cases
from medhdm.metrics import energy_in_lesion, pointing_game
from medhdm.models import accuracy_and_auc
from medhdm.testing import train_blob_densenet


@pytest.fixture(scope="module")
def trained_densenet():
    return train_blob_densenet()


def test_trained_densenet_learned_the_task(trained_densenet):
    model, test = trained_densenet
    acc, auc = accuracy_and_auc(model, test)
    assert acc > 0.85 and auc > 0.9, (acc, auc)


def test_hdm_localises_the_blob_far_above_chance(trained_densenet):
    model, test = trained_densenet
    positives = [c for c in test if c.n_lesions == 1][:12]
    x, lesions, _ = stack_cases(positives)
    hdm = HDM(
        model,
        benchmark_objective=MaskObjective(steps=50, lambda_area=2.0),
        auxiliary_objective=MaskObjective(steps=50, lambda_area=2.0, lambda_tv=1.0),
        max_stages=2,
    )
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
