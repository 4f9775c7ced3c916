"""The explainer contract: shapes, ranges, batching, seeds, model state, networks, bad input."""

from __future__ import annotations

import pytest
import torch
from monai.networks import nets
from torch import nn

from medhdm import HDM, MDM, RISE, GradCAM, GradCAMpp, GradientInput, MaskObjective, NeuroMask, Occlusion
from medhdm.explain import make_explainer
from medhdm.testing import BlobDetector, plant

QUICK = MaskObjective(steps=8)


def quick_methods(model, occlusion: bool = True):
    return [
        HDM(model, benchmark_objective=QUICK, auxiliary_objective=QUICK, max_stages=2),
        MDM(model, objective=QUICK),
        NeuroMask(model, objective=QUICK),
        GradientInput(model),
        RISE(model, n_masks=40, batch_size=20),
        *([Occlusion(model, mask_size=7, overlap=0.3)] if occlusion else []),
        GradCAM(model),
        GradCAMpp(model),
    ]


def tiny_densenet(spatial_dims=2, out_channels=2):
    torch.manual_seed(0)
    return nets.DenseNet(
        spatial_dims=spatial_dims,
        in_channels=1,
        out_channels=out_channels,
        init_features=8,
        growth_rate=4,
        block_config=(2, 2),
    )


@pytest.mark.parametrize(
    "name, make, shape, occlusion",
    [
        ("densenet121", lambda: nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), (1, 1, 32, 32), False),
        ("resnet18", lambda: nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=3), (2, 1, 32, 32), True),
        (
            "efficientnet",
            lambda: nets.EfficientNetBN(
                "efficientnet-b0", spatial_dims=2, in_channels=1, num_classes=2, pretrained=False
            ),
            (1, 1, 32, 32),
            False,
        ),
        ("seresnet50", lambda: nets.SEResNet50(spatial_dims=2, in_channels=1, num_classes=1), (1, 1, 32, 32), False),
        ("densenet3d", lambda: tiny_densenet(3, out_channels=1), (2, 1, 8, 16, 16), True),
    ],
)
def test_every_method_on_monai_networks(name, make, shape, occlusion):
    """Every method on MONAI's classifiers (occlusion, hundreds of passes, only on the small ones)."""
    torch.manual_seed(0)
    model = make()
    x = torch.rand(shape)
    for explainer in quick_methods(model, occlusion=occlusion):
        result = explainer.explain(x)
        s = result.saliency
        assert s.shape == (shape[0], 1, *shape[2:]), (name, explainer.name)
        assert s.dtype == torch.float32 and s.device == x.device
        assert bool(torch.isfinite(s).all()) and float(s.min()) >= 0 and float(s.max()) <= 1, (name, explainer.name)
        assert result.class_idx.shape == (shape[0],)
        assert result.forward_passes >= 1


def test_vit_works_with_mask_methods_and_is_refused_by_gradcam():
    pytest.importorskip("einops")
    vit = nets.ViT(
        in_channels=1,
        img_size=(32, 32),
        patch_size=(8, 8),
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
        classification=True,
        num_classes=2,
        spatial_dims=2,
    )
    x = torch.rand(2, 1, 32, 32)
    # MONAI's ViT returns (logits, hidden states): the logits are taken.
    assert HDM(vit, benchmark_objective=QUICK, auxiliary_objective=QUICK)(x).shape == (2, 1, 32, 32)
    assert GradientInput(vit)(x).shape == (2, 1, 32, 32)
    with pytest.raises(ValueError, match="target_layer: found no late layer of ViT"):
        GradCAM(vit)(x)


def test_batch_equals_one_at_a_time():
    model = tiny_densenet()
    x = torch.rand(3, 1, 32, 32)
    for explainer in (
        HDM(model, benchmark_objective=QUICK, auxiliary_objective=QUICK),
        MDM(model, objective=QUICK),
        GradientInput(model),
        GradCAM(model),
        GradCAMpp(model),
    ):
        batch = explainer.explain(x, class_idx=[0, 1, 1])
        singles = torch.cat([explainer(x[i : i + 1], class_idx=c) for i, c in enumerate([0, 1, 1])])
        # CPU kernels differ with the batch size at float precision, and Adam's normalised
        # steps carry such differences a little further: equal within 1e-3.
        assert torch.allclose(batch.saliency, singles, atol=1e-3), explainer.name


def test_hdm_batch_with_different_stage_counts_equals_one_at_a_time():
    """One image stops after stage 1, the other needs two: batching must not mix them."""
    one, _ = plant((32, 32), [(slice(4, 10), slice(4, 10))])
    two, _ = plant((32, 32), [(slice(4, 10), slice(4, 10)), (slice(20, 26), slice(20, 26))], seed=1)
    two[0, 0, 20:26, 20:26] = 0.95  # not a tie: with equal lesions stage 1 may flip between both
    x = torch.cat([one, two])
    model = BlobDetector(2, pool="max", kernel=5).calibrate(one)
    hdm = HDM(
        model,
        reference=0.1,
        benchmark_grids=(8, 4),
        auxiliary_grids=(4, 2),
        threshold=0.3,
        benchmark_objective=MaskObjective(steps=40, lambda_area=2, lambda_del=0),
        auxiliary_objective=MaskObjective(steps=40, lambda_area=2, lambda_del=0),
    )
    batch = hdm.explain(x)
    assert batch.stages[1].active.tolist() == [False, True]
    for i in range(2):
        single = hdm.explain(x[i : i + 1])
        assert torch.allclose(batch.saliency[i], single.saliency[0], atol=1e-3)
        assert len(single.stages) == (1 if i == 0 else 2)


def test_hdm_uses_the_volume_objective_for_3d_inputs_only():
    bench2d, bench3d, aux = MaskObjective(steps=5), MaskObjective(steps=2), MaskObjective(steps=3)
    # backward passes: benchmark + auxiliary steps + the pixel refinement's sensitivity pass
    for dims, shape, passes in ((2, (1, 1, 32, 32), 5 + 3 + 1), (3, (1, 1, 8, 16, 16), 2 + 3 + 1)):
        hdm = HDM(
            tiny_densenet(dims),
            benchmark_objective=bench2d,
            volume_benchmark_objective=bench3d,
            auxiliary_objective=aux,
            max_stages=1,
        )
        assert hdm.explain(torch.rand(shape)).backward_passes == passes
    # a benchmark objective given alone serves both; the defaults differ by dimension
    assert HDM(tiny_densenet(), benchmark_objective=bench2d).volume_benchmark_objective is bench2d
    default = HDM(tiny_densenet())
    assert default.benchmark_objective.area == 0.02 and default.volume_benchmark_objective.area == 0.05
    # make_explainer's steps reach every phase, the volume one included
    hdm3d = make_explainer("hdm", tiny_densenet(3), steps=4, max_stages=1)
    assert hdm3d.explain(torch.rand(1, 1, 8, 16, 16)).backward_passes == 4 + 4 + 1


def test_seed_makes_random_methods_reproducible_and_leaves_global_rng():
    model = tiny_densenet()
    x = torch.rand(2, 1, 32, 32)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = RISE(model, n_masks=30, seed=7)(x)
    assert torch.equal(torch.get_rng_state(), state), "the caller's RNG state changed"
    b = RISE(model, n_masks=30, seed=7)(x)
    c = RISE(model, n_masks=30, seed=8)(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    h1 = HDM(model, benchmark_objective=QUICK, auxiliary_objective=QUICK)(x)
    h2 = HDM(model, benchmark_objective=QUICK, auxiliary_objective=QUICK)(x)
    assert torch.equal(h1, h2)


def test_model_state_is_left_exactly_as_it_was():
    model = tiny_densenet()
    model.train()
    model.features.denseblock1.eval()  # a mixed train/eval state
    for p in model.class_layers.parameters():
        p.requires_grad_(False)
    training = {n: m.training for n, m in model.named_modules()}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    params = {n: p.detach().clone() for n, p in model.state_dict().items()}
    hooks = {n: (len(m._forward_hooks), len(m._backward_hooks)) for n, m in model.named_modules()}
    inplace = {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")}
    x = torch.rand(2, 1, 32, 32)
    for explainer in quick_methods(model):
        explainer(x)
        assert {n: m.training for n, m in model.named_modules()} == training, explainer.name
        assert {n: p.requires_grad for n, p in model.named_parameters()} == grads, explainer.name
        for n, p in model.state_dict().items():
            assert torch.equal(p, params[n]), (explainer.name, n)  # BatchNorm statistics included
        assert {n: (len(m._forward_hooks), len(m._backward_hooks)) for n, m in model.named_modules()} == hooks
        assert {n: m.inplace for n, m in model.named_modules() if hasattr(m, "inplace")} == inplace
        assert all(p.grad is None for p in model.parameters()), explainer.name


def test_state_restored_when_explaining_fails():
    model = tiny_densenet()
    model.train()
    with pytest.raises(ValueError):
        HDM(model)(torch.rand(1, 1, 32, 32), class_idx=5)
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_single_logit_and_class_choice():
    x, _ = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    model = BlobDetector(2, single_logit=True).calibrate(x)
    result = HDM(model, reference=0.1, benchmark_objective=QUICK, auxiliary_objective=QUICK).explain(x)
    assert result.class_idx.tolist() == [1]  # sigmoid(z) > 0.5: "positive"
    assert float(result.score[0]) == pytest.approx(float(torch.sigmoid(model(x))[0, 0]), rel=1e-5)
    neg = GradientInput(model).explain(x, class_idx=0)
    assert float(neg.score[0]) == pytest.approx(1 - float(torch.sigmoid(model(x))[0, 0]), rel=1e-4)
    assert GradCAM(
        nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    )(x, class_idx=0).shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    "x, class_idx, error, message",
    [
        (torch.rand(1, 32, 32), None, ValueError, r"x: expected 4 dimensions .* got 3 dimensions"),
        (torch.rand(1, 1, 2, 2, 32, 32), None, ValueError, "x: expected 4 dimensions"),
        (
            torch.randint(0, 5, (1, 1, 32, 32)),
            None,
            TypeError,
            "x: expected a floating-point tensor, got dtype torch.int64",
        ),
        (torch.full((1, 1, 32, 32), float("nan")), None, ValueError, r"x: expected finite values, found 1024 NaN"),
        (
            torch.rand(1, 3, 32, 32),
            None,
            ValueError,
            r"x: the model rejected input of shape \(1, 3, 32, 32\) \(3 channel",
        ),
        (torch.rand(2, 1, 32, 32), 2, ValueError, r"class_idx: expected indices in \[0, 1\] .* got \[2, 2\]"),
        (torch.rand(2, 1, 32, 32), -1, ValueError, r"class_idx: expected indices in \[0, 1\]"),
        (
            torch.rand(2, 1, 32, 32),
            [0, 1, 1],
            ValueError,
            r"class_idx: expected one class index per image \(2\), got 3",
        ),
        (torch.rand(2, 1, 32, 32), 0.5, TypeError, "class_idx: expected None, an int or one int per image, got float"),
        (torch.rand(2, 1, 32, 32), torch.tensor([0.0, 1.0]), TypeError, "class_idx: expected integer class indices"),
        ([[0.0]], None, TypeError, "x: expected a torch.Tensor"),
    ],
)
def test_bad_input_is_named(x, class_idx, error, message):
    model = tiny_densenet()
    with pytest.raises(error, match=message):
        HDM(model, benchmark_objective=QUICK, auxiliary_objective=QUICK)(x, class_idx=class_idx)


def test_bad_model_output_and_settings_are_named():
    x = torch.rand(1, 1, 16, 16)
    # a map on another grid than the input's is neither a classifier's output nor a segmenter's
    with pytest.raises(
        ValueError,
        match=r"model: expected an output of shape \(B, K\) = \(1, K\) \(a classifier\) or \(B, K, \*S\) = "
        r"\(1, K, 16, 16\) \(a segmenter on the input's grid\), got \(1, 1, 8, 8\)",
    ):
        HDM(nn.Conv2d(1, 1, 3, padding=1, stride=2))(x)
    with pytest.raises(TypeError, match="model: expected the forward pass to return a tensor"):
        GradientInput(_DictModel())(x)
    with pytest.raises(TypeError, match="model: expected a torch.nn.Module"):
        HDM(lambda t: t)
    with pytest.raises(ValueError, match="fusion: expected one of"):
        HDM(tiny_densenet(), fusion="magic")
    with pytest.raises(ValueError, match="steps: expected a positive int"):
        MaskObjective(steps=0)
    with pytest.raises(ValueError, match="area: expected None or a fraction strictly between 0 and 1, got 1.5"):
        MaskObjective(area=1.5)
    with pytest.raises(ValueError, match="reference: expected 'blur', 'min', 'mean'"):
        HDM(tiny_densenet(), reference="black")(x)
    with pytest.raises(ValueError, match=r"reference: a tensor reference must broadcast"):
        GradientInput(tiny_densenet(), reference=torch.zeros(3, 3))(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="target_layer: 'nope' is not a module"):
        GradCAM(tiny_densenet(), target_layer="nope")


class _DictModel(nn.Module):
    def forward(self, x):
        return {"logits": x.mean((2, 3))}
