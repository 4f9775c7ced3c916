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

from medhdm import HDM, RISE, GradientInput
from medhdm.metrics import sanity_check, seed_agreement
from medhdm.models import DEFAULT_3D, load_default_classifier
from medhdm.testing import lesion_cases, load_network

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
