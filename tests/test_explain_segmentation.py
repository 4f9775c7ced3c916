"""Explaining segmentation models: the target (class and region), its scores, and the maps of
every method on a segmenter whose decision depends on a planted cue elsewhere."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import UNet

from medhdm import HDM, MDM, RISE, GradCAM, GradCAMpp, GradientInput, NeuroMask, Occlusion
from medhdm.explain.scoring import ClassScorer
from medhdm.testing import BlobDetector, CueSegmenter, ThresholdSegmenter, plant
from tests.test_explain_planted import small_hdm

CASES = {
    "2d": ((40, 40), (slice(6, 12), slice(6, 12)), (slice(26, 32), slice(26, 32))),
    "3d": ((16, 24, 24), (slice(3, 7), slice(3, 7), slice(3, 7)), (slice(9, 13), slice(15, 19), slice(15, 19))),
}


def cue_case(key: str):
    shape, lesion, cue = CASES[key]
    x, labels = plant(shape, [lesion, cue])
    return x, labels[0, 0] == 1, labels[0, 0] == 2, CueSegmenter(cue)


@pytest.mark.parametrize("key", ["2d", "3d"])
@pytest.mark.parametrize("make", [small_hdm, GradientInput], ids=["HDM", "GradientInput"])
def test_the_map_of_a_lesions_mask_peaks_on_the_cue_it_depends_on(key, make):
    x, lesion, cue, model = cue_case(key)
    xc = x.clone()
    xc[0, 0][cue] = 0.1
    assert not bool((model(xc) > 0).any()), "without the cue nothing is marked: the decision depends on it"
    result = make(model).explain(x, class_idx=1)
    assert torch.equal(result.region[0, 0], lesion), "the predicted region is the lesion"
    saliency = result.saliency[0, 0]
    peak = tuple(torch.nonzero(saliency == saliency.max())[0].tolist())
    assert bool(cue[peak]), f"map maximum at {peak} is not on the cue"
    assert float(saliency[cue].sum()) > 1.2 * float(saliency[lesion].sum())


def test_a_region_given_as_a_mask_is_the_target_and_its_mean_logit_the_score():
    x, lesion, cue, model = cue_case("2d")
    half = torch.zeros_like(lesion)
    half[6:9, 6:12] = True
    z = model(x)[0, 0]
    result = HDM(model, max_stages=1).explain(x, class_idx=1, region=half.float())
    assert torch.equal(result.region[0, 0], half)
    # a sigmoid segmenter: the log-odds of class 1 are the mean logit over the region
    assert float(result.stages[0].log_odds_before[0]) == pytest.approx(float(z[half].mean()), rel=1e-5)
    assert float(result.score[0]) == pytest.approx(float(torch.sigmoid(z[half].mean())), rel=1e-5)
    # class 0 of a sigmoid segmenter: the voxels it does not mark
    background = HDM(model, max_stages=1).explain(x, class_idx=0)
    assert torch.equal(background.region[0, 0], z <= 0)
    assert float(background.stages[0].log_odds_before[0]) == pytest.approx(-float(z[z <= 0].mean()), rel=1e-5)


def test_components_are_ordered_by_size_then_by_first_voxel():
    x, labels = plant(
        (40, 40),
        [(slice(2, 6), slice(30, 34)), (slice(20, 30), slice(2, 12)), (slice(30, 34), slice(30, 34))],
    )
    model = ThresholdSegmenter()
    gi = GradientInput(model)
    regions = [gi.explain(x, class_idx=1, region=f"component:{k}").region[0, 0] for k in (1, 2, 3)]
    assert torch.equal(regions[0], labels[0, 0] == 2)  # the largest
    assert torch.equal(regions[1], labels[0, 0] == 1)  # equal sizes: first voxel first (row 2 before row 30)
    assert torch.equal(regions[2], labels[0, 0] == 3)
    predicted = gi.explain(x, class_idx=1).region[0, 0]
    assert torch.equal(predicted, labels[0, 0] > 0)
    assert torch.equal(gi.explain(x, class_idx=1, region="predicted").region[0, 0], predicted)
    with pytest.raises(ValueError, match=r"region: region 'component:4' for class\(es\) \[1\] is empty in image"):
        gi.explain(x, class_idx=1, region="component:4")
    with pytest.raises(ValueError, match="region: expected 'predicted', 'component:k'"):
        gi.explain(x, class_idx=1, region="component:0")


def test_a_softmax_segmenter_explains_its_largest_foreground_class_by_default():
    x, labels = plant((32, 32), [(slice(2, 6), slice(2, 6)), (slice(12, 28), slice(12, 28))], seed=1)
    x[0, 0, 12:28, 12:28] = 0.6

    class ThreeClasses(torch.nn.Module):  # 0 background, 1 bright (> 0.8), 2 medium (0.4 to 0.8)
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor(10.0))

        def forward(self, v):
            v = v[:, :1]
            return self.w * torch.cat([0.3 - v, v - 0.8, 0.2 - (v - 0.6).abs()], dim=1)

    result = GradientInput(ThreeClasses()).explain(x)
    assert result.class_idx.tolist() == [2]
    assert torch.equal(result.region[0, 0], labels[0, 0] == 2)


def test_a_batch_is_explained_as_its_images_alone_with_their_own_regions():
    x1, _, _, model = cue_case("2d")
    x2 = x1.flip(-1).flip(-2)  # the lesion elsewhere; the cue box does not move, so x2 has a dim cue
    x2[0, 0][CASES["2d"][2]] = 1.0
    x = torch.cat([x1, x2])
    for explainer in (GradientInput(model), MDM(model, reference=0.1)):
        both = explainer.explain(x, class_idx=1)
        for i in range(2):
            alone = explainer.explain(x[i : i + 1], class_idx=1)
            assert torch.equal(both.region[i], alone.region[0])
            torch.testing.assert_close(both.saliency[i], alone.saliency[0], atol=1e-4, rtol=1e-4)
    assert not torch.equal(both.region[0], both.region[1])


@pytest.mark.parametrize("spatial", [(32, 32), (16, 16, 16)], ids=["2d", "3d"])
def test_every_method_explains_a_monai_unet(spatial):
    torch.manual_seed(0)
    model = UNet(len(spatial), 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.rand(2, 1, *spatial)
    region = torch.zeros(2, 1, *spatial, dtype=torch.bool)
    region[0, 0, 4:10, 4:10], region[1, 0, 10:20, 10:20] = True, True
    methods = [
        HDM(model, max_stages=2),
        MDM(model),
        NeuroMask(model),
        GradientInput(model),
        Occlusion(model, mask_size=7),
        RISE(model, n_masks=40),
        GradCAM(model),
        GradCAMpp(model),
    ]
    for explainer in methods:
        result = explainer.explain(x, class_idx=1, region=region)
        assert result.saliency.shape == (2, 1, *spatial), explainer.name
        assert torch.equal(result.region, region) and result.class_idx.tolist() == [1, 1]
        # an untrained network: occlusion may lower the score nowhere (an all-zero map is its answer)
        assert bool(torch.isfinite(result.saliency).all()) and float(result.saliency.amax()) <= 1, explainer.name
    # the two images' scores are read over their own regions
    logits = model(x)
    expected = torch.softmax(torch.stack([logits[i, :, region[i, 0]].mean(-1) for i in range(2)]), 1)[:, 1]
    torch.testing.assert_close(result.score, expected, atol=1e-5, rtol=1e-5)


def test_grad_cam_on_a_unet_uses_the_bottleneck():
    from medhdm.explain.baselines.cam import find_target_layer

    model = UNet(2, 1, 2, channels=(4, 8, 16), strides=(2, 2), num_res_units=1)
    layer = dict(model.named_modules())[find_target_layer(model, torch.rand(1, 1, 32, 32))]
    with torch.no_grad():
        shapes = []
        handle = layer.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
        model(torch.rand(1, 1, 32, 32))
        handle.remove()
    assert tuple(shapes[0][2:]) == (8, 8)


def test_bad_targets_fail_with_one_line_naming_the_argument():
    x, _, _, model = cue_case("2d")
    with pytest.raises(ValueError, match=r"region: expected a mask of shape \(B, 1, 40, 40\)"):
        GradientInput(model).explain(x, region=torch.ones(1, 1, 20, 20))
    with pytest.raises(ValueError, match="region: expected a binary mask"):
        GradientInput(model).explain(x, region=torch.full((40, 40), 0.5))
    with pytest.raises(ValueError, match="region: the model's predicted mask for class"):
        GradientInput(model).explain(torch.full_like(x, 0.1), class_idx=1)
    classifier = BlobDetector(2).calibrate(x)
    with pytest.raises(ValueError, match="region: the model is a classifier"):
        GradientInput(classifier).explain(x, region="predicted")

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, v):
            return self.w * v.flatten(2)  # (B, C, H*W): neither a classifier nor a segmenter

    with pytest.raises(ValueError, match=r"model: expected an output of shape \(B, K\).*\(a segmenter"):
        GradientInput(Flat()).explain(x)


def test_a_classifier_keeps_its_targets_as_classes():
    x, _ = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    model = BlobDetector(2).calibrate(x)
    scorer = ClassScorer(model)
    logits = scorer.logits(x)
    assert logits.shape == (1, 2) and not scorer.segmenter and scorer.regions is None
    assert scorer.class_of(torch.tensor([1])).tolist() == [1]
    result = GradientInput(model).explain(x)
    assert result.region is None and result.class_idx.tolist() == [1]


def test_a_nifti_study_is_explained_for_a_mask_region_given_on_its_own_grid(tmp_path):
    import numpy as np
    from test_explain_segmentation_files import _nifti_case

    from medhdm.pipeline import InputSpec, explain_images

    # a 2D NIfTI of 48 x 40 voxels with two bright boxes, the second one the region; the model sees it at 24 x 20
    volume, mask = _nifti_case(tmp_path)
    spec = InputSpec(spatial_size=(20, 24), intensity_range=(0.0, 1.0))
    model = ThresholdSegmenter()
    (given,) = explain_images(
        [tmp_path / "image.nii.gz"], GradientInput(model), spec, [1], region=[tmp_path / "region.nii.gz"]
    )
    assert given.region_spec == "mask" and given.region.shape == volume.shape
    assert np.array_equal(given.region, mask), "the region comes back onto the source grid as given"
    assert given.saliency.shape == volume.shape
    # the map explains the given box: more of it there than on the other box
    assert given.saliency[30:42, 24:36].sum() > 2 * given.saliency[4:12, 4:12].sum()
    (predicted,) = explain_images([tmp_path / "image.nii.gz"], GradientInput(model), spec, [1])
    assert predicted.region_spec == "predicted"
    assert np.array_equal(predicted.region, (volume > 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match=r"region: a region of shape \(10, 40\)"):
        explain_images([tmp_path / "image.nii.gz"], GradientInput(model), spec, [1], region=[mask[:10]])


@pytest.mark.parametrize("spec, size", [("segmenter2d", (64, 64))])
def test_the_shipped_segmenters_mark_a_lesion_more_surely_with_its_cue(spec, size):
    import numpy as np

    from medhdm.data import make_cue_dataset, stack_cases
    from medhdm.models import load_model

    model = load_model(spec)
    cases = [c for c in make_cue_dataset(9090, 16, size) if c.label == 1]
    assert cases and all(c.cue.any() and np.array_equal(c.target, c.lesions > 0) for c in cases)
    x, lesions, _ = stack_cases(cases)
    cue = torch.from_numpy(np.stack([c.cue for c in cases]))
    without = x.clone()
    without[cue] -= 0.7  # the marker removed
    with torch.no_grad():
        z, z_without = model(x), model(without)
    assert z.shape == x.shape
    inside = lesions > 0
    drop = [float(z[i][inside[i]].mean() - z_without[i][inside[i]].mean()) for i in range(len(cases))]
    assert float(np.mean(drop)) > 0.5, drop  # the decision on the lesion depends on the cue elsewhere


def test_the_sanity_check_explains_both_models_for_the_trained_models_region():
    from medhdm.metrics import sanity_check

    torch.manual_seed(0)
    model = UNet(2, 1, 1, channels=(4, 8, 16), strides=(2, 2), num_res_units=1).eval()
    x = torch.rand(2, 1, 32, 32)
    region = torch.zeros(32, 32, dtype=torch.bool)
    region[8:16, 8:16] = True
    seen = []

    class Recording(GradientInput):
        def explain(self, *args, **kwargs):
            result = super().explain(*args, **kwargs)
            seen.append(result.region)
            return result

    correlations = sanity_check(lambda m: Recording(m), model, x, class_idx=1, region=region)
    assert len(correlations) == 2 and all(-1 <= c <= 1 for c in correlations)
    assert len(seen) == 2 and all(bool((r[:, 0] == region).all()) for r in seen)
