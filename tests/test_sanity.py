"""Model randomisation (Adebayo et al., 2018): HDM's default map must depend on the model's weights.

``sanity_check`` returns, per image, the Spearman rank correlation between the map of the
trained model and the map of a copy whose weights are re-drawn at random; near 0 means
the map depends on the model, near 1 that it shows the image whatever the weights.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage, stats

from medhdm import HDM, RISE, GradientInput
from medhdm.metrics import banded_spearman, sanity_check, seed_agreement
from medhdm.models import DEFAULT_3D, load_default_classifier
from medhdm.testing import lesion_cases, load_network, marked_cue_cases

#: networks trained by benchmarks/sanity_networks.py besides the shipped ones (other training seeds), so
#: that a pass is not one model's luck (in 3D a small ResNet too: resnet3d_seed0)
NETWORKS = Path(__file__).parent / "data" / "sanity_networks"


def test_hdm_default_map_depends_on_the_2d_model():
    model = load_default_classifier()
    x = lesion_cases(3, (96, 96), seed=31)[0]
    correlations = sanity_check(lambda m: HDM(m), model, x, class_idx=1)
    assert not any(math.isnan(c) for c in correlations)
    assert float(np.mean(correlations)) < 0.2, correlations


def test_hdm_default_map_depends_on_the_3d_model():
    model = load_default_classifier(DEFAULT_3D)
    x = lesion_cases(2, tuple(model.medhdm_card["recipe"]["spatial_size"]), seed=31)[0]
    correlations = sanity_check(lambda m: HDM(m), model, x, class_idx=1)
    assert not any(math.isnan(c) for c in correlations)
    assert float(np.mean(correlations)) < 0.2, correlations


@pytest.mark.parametrize("name", ["densenet2d_seed1", "densenet2d_seed2", "densenet3d_seed1", "resnet3d_seed0"])
def test_hdm_default_map_depends_on_other_networks(name):
    model = load_network(NETWORKS / f"{name}.pt")
    size = tuple(model.medhdm_card["recipe"]["spatial_size"])
    x = lesion_cases(3 if len(size) == 2 else 2, size, seed=31)[0]
    correlations = sanity_check(lambda m: HDM(m), model, x, class_idx=1)
    assert not any(math.isnan(c) for c in correlations)
    assert float(np.mean(correlations)) < 0.2, correlations


def test_the_image_factor_of_gradient_x_input_fails_where_hdm_passes():
    # Gradient x Input's (x - r) factor is the image's edges whatever the weights: the check
    # must catch it on the same images, or passing it would mean nothing.
    model = load_default_classifier()
    x = lesion_cases(3, (96, 96), seed=31)[0]
    assert float(np.mean(sanity_check(lambda m: GradientInput(m), model, x, class_idx=1))) > 0.3


def test_random_methods_are_not_correlated_through_their_shared_draws():
    model = load_default_classifier()
    x = lesion_cases(2, (96, 96), seed=31)[0]

    def make(m):
        return RISE(m, n_masks=200)

    same_seed = sanity_check(make, model, x, class_idx=1, explainer_seeds=None)
    fair = sanity_check(make, model, x, class_idx=1)
    # with one seed the two maps share RISE's masks, and correlate through them
    assert float(np.mean(fair)) < float(np.mean(same_seed)) - 0.2, (fair, same_seed)
    # the noise floor: two seeds on the trained model agree, a deterministic method fully
    assert float(np.mean(seed_agreement(make, model, x, class_idx=1))) > float(np.mean(fair)) + 0.2
    assert seed_agreement(lambda m: GradientInput(m), model, x, class_idx=1) == [1.0, 1.0]


def test_hdm_default_map_depends_on_the_2d_segmenter():
    # the region is held fixed (the trained model's predicted mask) and the maps are compared
    # within bands of equal distance from it (banded_spearman): over the whole image any
    # faithful map of a convolutional segmenter ranks voxels by proximity to the region
    model = load_default_classifier("lesion_unet2d")
    x = marked_cue_cases(model, 3)
    correlations = sanity_check(lambda m: HDM(m), model, x, class_idx=1, region="predicted")
    assert not any(math.isnan(c) for c in correlations)
    assert float(np.mean(correlations)) < 0.2, correlations


def test_hdm_default_map_depends_on_the_3d_segmenter():
    # The benchmark's held-out cue volumes (seed 9090, benchmarks/segmentation.py). On these 16 x 32 x 32
    # volumes S/16 has 1 cell in depth; clipped to 2 it gave a 2 x 2 x 2 benchmark grid, an eighth of the
    # volume per cell, whose upsampled masks are the same ramp for any model that keeps the target's
    # cell: 0.23 here (0.42 and 0.04). The ladder now moves an octave finer (2 x 4 x 4 first).
    model = load_default_classifier("lesion_unet3d")
    x = marked_cue_cases(model, 2, seed=9090)
    correlations = sanity_check(lambda m: HDM(m), model, x, class_idx=1, region="predicted")
    assert not any(math.isnan(c) for c in correlations)
    assert float(np.mean(correlations)) < 0.2, correlations


def test_the_segmenter_check_still_catches_a_map_of_the_image():
    model = load_default_classifier("lesion_unet2d")
    x = marked_cue_cases(model, 3)
    assert float(np.mean(sanity_check(lambda m: GradientInput(m), model, x, class_idx=1))) > 0.3


def test_banded_spearman_leaves_out_the_distance_to_the_region_only():
    rng = np.random.default_rng(0)
    region = np.zeros((40, 40), dtype=bool)
    region[18:22, 18:22] = True
    distance = ndimage.distance_transform_edt(~region)
    footprint = -np.floor(distance / 2)  # the same proximity ranking in both maps, constant within a band
    a, b = footprint + 0.5 * rng.random((40, 40)), footprint + 0.5 * rng.random((40, 40))
    assert stats.spearmanr(a.ravel(), b.ravel()).statistic > 0.9  # over the image: the footprint
    assert abs(banded_spearman(a, b, region)) < 0.1  # within bands: independent maps
    shared = rng.random((40, 40))  # what the maps share beyond the footprint still counts
    assert banded_spearman(footprint + shared, footprint + shared + 0.1 * rng.random((40, 40)), region) > 0.9
