"""Baselines on a model with known evidence, and their specific behaviour."""

from __future__ import annotations

import pytest
import torch
from monai.networks import nets
from torch import nn

from medhdm import RISE, GradCAM, GradCAMpp, GradientInput, Occlusion
from medhdm.explain.baselines import find_target_layer
from medhdm.metrics import pointing_game
from medhdm.testing import BlobDetector, plant


class ConvBlobNet(nn.Module):
    """A convolutional version of the blob detector, so Grad-CAM has a feature map:
    features = smooth-ReLU(conv(x) - 0.5) (4 identical channels, 32x32), mean-pooled, linear."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(1, 4, 3, padding=1, bias=False)
        with torch.no_grad():
            self.features.weight.fill_(1 / 9)
        self.act = nn.Softplus(beta=20)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.head.weight.copy_(torch.tensor([[0.0] * 4, [100.0] * 4]))
            self.head.bias.copy_(torch.tensor([0.0, -3.5]))  # the planted box scores about +3.5

    def forward(self, x):
        return self.head(self.pool(self.act(self.features(x) - 0.5)).flatten(1))


@pytest.fixture
def planted():
    return plant((32, 32), [(slice(8, 14), slice(18, 24))])


@pytest.mark.parametrize(
    "make",
    [
        # reference 0.1 = the background level: a blurred 6-voxel box would still fire the detector
        lambda m: GradientInput(m, reference=0.1),
        lambda m: GradientInput(m, n_samples=8, noise_level=0.05, reference=0.1),
        lambda m: RISE(m, n_masks=400, cells=6, reference=0.1),
        lambda m: Occlusion(m, mask_size=5, overlap=0.5),
        lambda m: GradCAM(m),
        lambda m: GradCAMpp(m),
    ],
    ids=["gradient_x_input", "smoothgrad", "rise", "occlusion", "gradcam", "gradcam++"],
)
def test_baseline_points_at_planted_blob(make, planted):
    x, labels = planted
    model = ConvBlobNet()
    saliency = make(model)(x, class_idx=1)
    assert saliency.shape == (1, 1, 32, 32)
    assert pointing_game(saliency[0], labels[0], spacing=(1, 1), tolerance_mm=1.0) == 1.0
    inside = saliency[0, 0][labels[0, 0] > 0].mean()
    outside = saliency[0, 0][labels[0, 0] == 0].mean()
    assert inside > 3 * outside


def test_target_layer_found_for_monai_networks():
    x = torch.rand(1, 1, 64, 64)
    assert find_target_layer(nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), x) == "class_layers.relu"
    # at 32 x 32 DenseNet121's last map is 1 x 1: still the last activation, never the pooling layer
    assert (
        find_target_layer(nets.DenseNet121(spatial_dims=2, in_channels=1, out_channels=2), x[..., :32, :32])
        == "class_layers.relu"
    )
    assert find_target_layer(nets.resnet18(spatial_dims=2, n_input_channels=1, num_classes=2), x) == "layer4"
    assert find_target_layer(ConvBlobNet(), x[..., :32, :32]) == "act"
    # EfficientNet calls one activation module in many places: not hookable, the BatchNorm before it is
    effnet = nets.EfficientNetBN("efficientnet-b0", spatial_dims=2, in_channels=1, num_classes=2, pretrained=False)
    assert find_target_layer(effnet, x) == "_bn1"
    # an anisotropic volume whose short axis is pooled to 1 (24 x 48 x 48 -> 1 x 3 x 3, as the shipped
    # 3D model): the factor is read on the long axes, the last activation is still found
    densenet3d = nets.DenseNet(3, 1, 2, init_features=8, growth_rate=8, block_config=(2, 2, 2))
    assert find_target_layer(densenet3d, torch.rand(1, 1, 24, 48, 48)) == "class_layers.relu"


def test_gradcam_explicit_layer_and_rise_3d():
    x, labels = plant((32, 32), [(slice(8, 14), slice(18, 24))])
    assert GradCAM(ConvBlobNet(), target_layer="features")(x, 1).shape == (1, 1, 32, 32)
    x3, labels3 = plant((12, 16, 16), [(slice(3, 7), slice(4, 8), slice(9, 13))])
    model = BlobDetector(3).calibrate(x3)
    saliency = RISE(model, n_masks=300, cells=4, reference=0.1)(x3)
    assert pointing_game(saliency[0], labels3[0], tolerance_mm=1.5) == 1.0


def test_rise_masks_are_smooth_shifted_and_in_range():
    rise = RISE(ConvBlobNet(), n_masks=64, cells=4)
    torch.manual_seed(0)
    masks = rise._random_masks(64, (20, 28), torch.device("cpu"))
    assert masks.shape == (64, 1, 20, 28)
    assert float(masks.min()) >= 0 and float(masks.max()) <= 1
    assert 0.3 < float(masks.mean()) < 0.7  # p_keep = 0.5
    assert not torch.equal(masks[0], masks[1])
